"""The ``cxr64`` feature network: a small CXR ResNet that cxrbench trains itself and ships, pinned by sha256.

Published CXR feature weights (torchxrayvision, Inception) cannot be fetched on every machine, so the
embedded protocol ``cxr64`` (``cxrbench.protocols.cxr64``) carries its own network: trained with
``cxrbench train cxr64-net`` on public radiographs (never on the protocol's reference images), stored as a
``weights_only`` state dict inside the package and refused when its bytes differ from the pinned hash.

- ``cxr64``: the 64-d embedding (FID, KID, PRDC, memorization, KS over features run in it).
- ``cxr64-classifier``: the network's label head, Platt-calibrated, for the labels it tells apart on
  held-out NIH images (derived from the ``cxr64`` features, so the network runs once).

Preprocessing (the only place size and range change): centre crop to a square (torchxrayvision's offset,
``w // 2 - s // 2``), bilinear resize with antialiasing to 64 px when the input is another size, then
``[0, 1] -> [-1, 1]``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.io import sha256_file
from ..data.synthetic import synthetic_cxr
from ..errors import WeightsError
from .base import FeatureExtractor, FeatureKind, bn_recalibrate, is_random_weights
from .resize import center_crop_xrv

IMAGE_SIZE = 64
EMBED_DIM = 64
WIDTHS = (16, 32, 64, 128)
WEIGHTS_FILE = "cxr64-net.pt"
HEAD_FILE = "cxr64-labels.json"
#: sha256 of the shipped weights file; a file with other bytes is refused
WEIGHTS_SHA256 = "e011d285e05438ef4794814e531becb2b5af3a12b1f0bec73102241172a26a92"
#: sha256 of the shipped label-head calibration (labels kept, Platt parameters, operating points)
HEAD_SHA256 = "0221bb8f25089a34478551995660765027bd55d9380a1614eb6d38585eeebca9"


def to_cxr64(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Image contract ``(N, 1, H, W)`` in [0, 1] -> ``(N, 1, size, size)`` in [0, 1]: centre crop, then resize."""
    x = center_crop_xrv(x)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class _Block(nn.Module):
    """ResNet basic block (two 3x3 convs, projection shortcut when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class CXR64Net(nn.Module):
    """64 px, 1 channel -> 64-d embedding (``embed``) and 15 label logits (``head``, NIH-14 + No Finding).

    A stride-2 stem and four stride-2 stages (16 to 2 px), 16 to 128 channels, keep training cheap on a CPU
    (~13M multiply-adds an image); ~0.7M parameters.
    """

    def __init__(self, widths=WIDTHS, embed_dim: int = EMBED_DIM, num_labels: int = 15):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [_Block(cin, w, 2), _Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.embed = nn.Linear(widths[-1], embed_dim)
        self.head = nn.Linear(embed_dim, num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 64, 64)`` in [-1, 1] -> ``(N, embed_dim)``."""
        return self.embed(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shipped_path(name: str) -> Path:
    """A file shipped with the ``cxr64`` protocol (package data)."""
    return Path(str(resources.files("cxrbench.protocols") / "cxr64_data" / name))


def load_network(path: Path | None = None, *, expected_sha256: str | None = None) -> tuple[CXR64Net, str]:
    """The shipped (or given) network and the sha256 of its file; a file that is not the pinned one is refused."""
    path = Path(path) if path is not None else shipped_path(WEIGHTS_FILE)
    expected = WEIGHTS_SHA256 if expected_sha256 is None else expected_sha256
    if not path.is_file():
        raise WeightsError(f"{path}: the cxr64 network weights are missing; reinstall cxrbench "
                           "(pip install --force-reinstall cxrbench) or restore the file from the repository")
    digest = sha256_file(path)
    if expected != "any" and digest != expected:
        raise WeightsError(f"{path}: sha256 {digest[:16]}... is not the pinned cxr64 weights ({expected[:16]}...); "
                           "the file was altered or truncated: reinstall cxrbench or restore the file from git")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = CXR64Net()
        net.load_state_dict(state["state_dict"] if "state_dict" in state else state)
    except Exception as e:  # a wrong file that happens to be named like ours
        raise WeightsError(f"{path}: not a cxr64 state dict ({e.__class__.__name__}: {str(e)[:120]})") from None
    return net.eval(), digest


class CXR64Extractor(FeatureExtractor):
    name = "cxr64"
    #: (probe training split, probe test splits) of the augmentation protocol on NIH labels: the probe trains on
    #: the generators' training split and is tested on the two splits that neither the generators nor these
    #: weights saw (the label head only calibrated and chose labels there)
    augmentation_splits = ("cxr64-train", "cxr64-heldout,cxr64-reference")
    version = "1"
    kind = FeatureKind.EMBEDDING
    num_features = EMBED_DIM
    input_size = IMAGE_SIZE
    resize_filter = "centre crop (xrv offset) + bilinear-antialias (torch) to 64 px"
    published_sha256 = (WEIGHTS_SHA256,)  # the shipped file: results with it are comparable

    def __init__(self, *, weights: str | None = "auto", seed: int = 0, device: str | torch.device = "cpu",
                 network: CXR64Net | None = None) -> None:
        """``weights``: "auto" (the shipped, pinned file; also for any other value but "random"), "random"
        (seeded init with BatchNorm statistics from synthetic radiographs: tests and smoke runs), or a path to a
        ``cxr64-net.pt`` file (accepted whatever its hash: for retraining; such results are not comparable)."""
        super().__init__()
        if network is not None:
            self.net, self.weights_id = network, "memory"
        elif weights is not None and is_random_weights(weights):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = CXR64Net()
            bn_recalibrate(self.net, to_cxr64(synthetic_cxr(32, IMAGE_SIZE, seed=seed)) * 2 - 1)
            self.weights_id = f"random:{seed}"
        else:
            custom = weights not in (None, "", "auto") and Path(str(weights)).is_file()
            self.net, self.weights_id = load_network(Path(str(weights)) if custom else None,
                                                     expected_sha256="any" if custom else None)
        self.net.eval()
        self.to(device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return to_cxr64(x) * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


class CXR64ClassifierExtractor(FeatureExtractor):
    """Calibrated probabilities of the labels the ``cxr64`` head tells apart, from ``cxr64`` features.

    Calibration (Platt: ``sigmoid(a * logit + b)`` per label, then the operating point mapped to 0.5 as
    torchxrayvision's ``op_norm`` does) and the label list are shipped beside the weights in
    ``cxr64-labels.json`` with the held-out AUROC that chose them.
    """

    name = "cxr64-classifier"
    version = "1"
    kind = FeatureKind.PROBABILITIES
    derived_from = "cxr64"
    input_size = IMAGE_SIZE
    resize_filter = CXR64Extractor.resize_filter
    published_sha256 = (WEIGHTS_SHA256,)

    def __init__(self, *, weights: str | None = "auto", seed: int = 0, device: str | torch.device = "cpu") -> None:
        super().__init__()
        base = CXR64Extractor(weights=weights, seed=seed, device="cpu")
        head_path = shipped_path(HEAD_FILE)
        if is_random_weights(weights) or not head_path.is_file():
            if not is_random_weights(weights):
                raise WeightsError(f"{head_path}: the cxr64 label calibration is missing; reinstall cxrbench")
            calib = {"labels": ["Effusion", "No Finding"], "index": [2, 14], "a": [1.0, 1.0], "b": [0.0, 0.0]}
        else:
            digest = sha256_file(head_path)
            if digest != HEAD_SHA256:
                raise WeightsError(f"{head_path}: sha256 {digest[:16]}... is not the pinned cxr64 label head "
                                   f"({HEAD_SHA256[:16]}...); the file was altered: reinstall cxrbench or restore it")
            calib = json.loads(head_path.read_text())
        if not calib["labels"]:
            raise WeightsError(f"{head_path}: the cxr64 label head keeps no label; rebuild it "
                               "(python -m baselines.cxr64net build) from a trained network")
        self.feature_names = list(calib["labels"])
        self.num_features = len(self.feature_names)
        w, b = base.net.head.weight.detach(), base.net.head.bias.detach()
        idx = torch.tensor(calib["index"], dtype=torch.long)
        self.register_buffer("w", w[idx].clone())
        self.register_buffer("b", b[idx].clone())
        self.register_buffer("a_cal", torch.tensor(calib["a"], dtype=torch.float32))
        self.register_buffer("b_cal", torch.tensor(calib["b"], dtype=torch.float32))
        self.register_buffer("op", torch.tensor(calib.get("op", [0.5] * len(calib["labels"])), dtype=torch.float32))
        self.weights_id = base.weights_id
        self.calibration = calib
        self.eval()
        self.to(device)

    def spec(self) -> dict:
        return {**super().spec(), "derived_from": self.derived_from, "labels": list(self.feature_names),
                "calibration": "platt+op_norm" if not is_random_weights(self.weights_id) else "none (random weights)"}

    @torch.no_grad()
    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        logits = f.to(self.w) @ self.w.T + self.b
        p = torch.sigmoid(self.a_cal * logits + self.b_cal)
        # the operating point to 0.5, piecewise linearly (torchxrayvision's op_norm): "present" = p > 0.5
        return torch.where(p < self.op, p / (2 * self.op), 1 - (1 - p) / (2 * (1 - self.op)))

    def preprocess(self, x):  # pragma: no cover - derived: the harness feeds cxr64 features
        raise RuntimeError("cxr64-classifier is computed from cxr64 features; add cxr64 to the extractors")

    forward = preprocess
