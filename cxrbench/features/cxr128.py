"""The ``cxr128`` feature network: a CXR ResNet that cxrbench trains itself and ships, pinned by sha256.

The embedded protocol ``cxr128`` (``cxrbench.protocols.cxr128``) carries its own network: trained with
``cxrbench train cxr128-net`` (``baselines/cxr128net.py``) on public radiographs, never on the protocol's
reference or held-out NIH images (nor any image of their patients), stored as a ``weights_only`` state dict
inside the package and refused when its bytes differ from the pinned hash.

It replaces ``cxr64``, whose 64-d features were effectively three axes of sharpness and noise and so ranked
blob images with no anatomy above chests. The objective here was chosen by how well FID in the embedding
orders image sets as a person would (real < degraded < anatomy violated), not by probe AUROC: self-supervised
features agree with human judgment where medically supervised ones do not (Stein et al., "Exposing flaws of
generative model evaluation metrics and their unfair treatment of diffusion models", NeurIPS 2023; Woodland
et al., "Feature extraction for generative medical imaging evaluation: new evidence against an evolving
trend", MICCAI 2024).

The shipped network: contrastive (InfoNCE between two X-ray views: crop, small rotation and shift,
brightness/contrast, a little blur and noise) plus a light orientation pretext (upright vs turned 90/180/270
degrees, flipped upside down, mirrored left to right, or two images joined along a line of any direction),
100 steps of batch 128; its label head is a linear probe on the embedding
fitted on the protocol's NIH training split. Of the candidates measured, its FID ordered the validity sets
most like a person (``tests/benchmarks/cxr128_candidates.py``, ``cxrbench validate --extractor cxr128``).

- ``cxr128``: the 128-d embedding whitened by the protocol's training split (FID, KID, PRDC, memorization, KS
  over features run in it): ``x -> (x - mean) W`` with ``W = Sigma^-1/2``, Sigma the Ledoit-Wolf covariance of
  the 686 training-split embeddings (``cxr128-whiten.npz``, pinned). The raw embedding's variance sits in about
  four directions (participation ratio 3.9), so FD in it is a distance along those few axes: a mode-collapsed
  set pays about tr(Sigma_real) whatever it shows, while images that depart along directions real chests never
  vary in (blobs) pay little. Whitened, every direction counts in units of the real images' own spread; the
  validity suite's blob set moved from 11th to last of 15 generator sets (``leaderboard/validity/README.md``).
  Version 1 was the raw embedding; version 3 adds the mirror and seam classes to the pretext (its FID orders
  the validity suite's sets and the eye panel's generator pairs more like people: 7 violations of 217, not 13);
  version 4 appends the layout network's logits (below).
- the layout network (``cxr128-layout.pt``, ``baselines/cxr128layout.py``; since version 4): the same
  architecture reading a 64 px thumbnail, a classifier of upright / turned / upside down / mirrored / two chests
  joined along a line or at the midline, trained on views degraded at random after their class was applied, so
  that quality tells it nothing. Its 8 logits follow the embedding, whitened on their own and weighted by
  ``LAYOUT_GAIN`` (136 features). The embedding alone (version 3) put a mirrored chest at 1.6x and a spliced one
  at 1.9x the real row's FID, below moderate noise; with the layout block they score 9x and 36x
  (``leaderboard/validity/README.md``, version 4). A candidate folder holding its own ``cxr128-layout.pt`` beside
  ``cxr128-net.pt`` gets that one; a folder without gets the embedding alone (128 features).
- ``cxr128-classifier``: the network's label head, Platt-calibrated, for the labels it tells apart on both
  held-out NIH splits (derived from the ``cxr128`` features, so the network runs once; the head reads the raw
  embedding, recovered exactly from the whitened one).

Preprocessing (the only place size and range change): centre crop to a square (torchxrayvision's offset,
``w // 2 - s // 2``), bilinear resize with antialiasing to 128 px when the input is another size, then
``[0, 1] -> [-1, 1]``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.io import sha256_file
from ..data.synthetic import synthetic_cxr
from ..errors import WeightsError
from .base import FeatureExtractor, bn_recalibrate, is_random_weights
from .cxr64 import _Block
from .resize import center_crop_xrv

IMAGE_SIZE = 128
EMBED_DIM = 128
WIDTHS = (16, 32, 64, 128)
#: the last 4 x 4 map is pooled to 2 x 2 and flattened, not averaged to 1 x 1: a chest has a fixed layout
#: (apices up, heart left of centre), and a global average would discard where things are
POOL = 2
#: what the shipped networks' training showed them (``baselines/cxr128net.py``, the chosen configuration, and the
#: layout network, ``baselines/cxr128layout.py``): the seam pretext class includes the validity suite's left/right
#: splice as one of its lines; the layout network's views are degraded at random (low resolution among them)
TRAINING_CORRUPTIONS = ("blur", "noise", "contrast", "lowres", "vflip", "rot90", "splice")
WEIGHTS_FILE = "cxr128-net.pt"
HEAD_FILE = "cxr128-labels.json"
#: sha256 of the shipped weights file; a file with other bytes is refused
WEIGHTS_SHA256 = "075d1832b8dd3149050815ec775549a79087bfbf17a82a34b0f2abcbe5d81216"
#: sha256 of the shipped label-head calibration (labels kept, Platt parameters, operating points)
HEAD_SHA256 = "41b11925e336afbb9c2ec0429084437f7cb064671ee8658fc7c433af4244813f"
WHITEN_FILE = "cxr128-whiten.npz"
#: sha256 of the shipped whitening (``python -m baselines.cxr128net whiten``)
WHITEN_SHA256 = "1a2677ef40007de151bea38e059deba031925ce5fdf4ae12545804295ef4a574"
#: a layout network (``baselines/cxr128layout.py``): one logit per class, read from a 64 px thumbnail
LAYOUT_FILE = "cxr128-layout.pt"
#: sha256 of the shipped layout network (since version 4: versions 1-3 were the embedding alone)
LAYOUT_SHA256 = "55f4a613230ed436ed2b550fb92b12b01a66b3c76f32011bb75645b04ea9bfc1"
LAYOUT_CLASSES = ("upright", "rot90", "rot180", "rot270", "vflip", "hflip", "seam", "splice")
LAYOUT_SIZE = 64
#: the layout block's weight after whitening: FD counts each of its directions LAYOUT_GAIN^2 times one of the
#: embedding's (unweighted, a mirrored set moves few directions and scores 4x the real row); of 1, 2 and 3, 2 gave
#: the fewest validity-suite violations over two trained draws (``leaderboard/validity/README.md``, version 4)
LAYOUT_GAIN = 2.0


def to_cxr128(x: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Image contract ``(N, 1, H, W)`` in [0, 1] -> ``(N, 1, size, size)`` in [0, 1]: centre crop, then resize."""
    x = center_crop_xrv(x)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class CXR128Net(nn.Module):
    """128 px, 1 channel -> 128-d embedding (``embed``) and 15 label logits (``head``, NIH-14 + No Finding).

    A stride-2 stem and four stride-2 stages (64 to 4 px), 16 to 128 channels (~0.77M parameters, ~36M
    multiply-adds an image: trainable on a CPU in minutes).
    """

    def __init__(self, widths=WIDTHS, embed_dim: int = EMBED_DIM, num_labels: int = 15):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for w in widths:
            blocks += [_Block(cin, w, 2), _Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.embed = nn.Linear(widths[-1] * POOL * POOL, embed_dim)
        self.head = nn.Linear(embed_dim, num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 128, 128)`` in [-1, 1] -> ``(N, embed_dim)``."""
        return self.embed(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), POOL).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shipped_path(name: str) -> Path:
    """A file shipped with the ``cxr128`` protocol (package data)."""
    return Path(str(resources.files("cxrbench.protocols") / "cxr128_data" / name))


def _checked(path: Path, expected: str, what: str, missing_fix: str, altered_fix: str) -> str:
    """The sha256 of a shipped (or given) file, refused in one line when it is missing or, unless ``expected`` is
    "any", not the pinned one."""
    if not path.is_file():
        raise WeightsError(f"{path}: the cxr128 {what} {'are' if what.endswith('s') else 'is'} missing; {missing_fix}")
    digest = sha256_file(path)
    if expected != "any" and digest != expected:
        raise WeightsError(f"{path}: sha256 {digest[:16]}... is not the pinned cxr128 {what} ({expected[:16]}...); "
                           f"{altered_fix}")
    return digest


def _load_state(path: Path, num_labels: int, what: str) -> CXR128Net:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = CXR128Net(num_labels=num_labels)
        net.load_state_dict(state.get("state_dict", state))
    except Exception as e:  # noqa: BLE001 - any wrong file that happens to be named like ours
        raise WeightsError(f"{path}: not a {what} state dict ({e.__class__.__name__}: {str(e)[:120]})") from None
    return net.eval()


def load_network(path: Path | None = None, *, expected_sha256: str | None = None) -> tuple[CXR128Net, str]:
    """The shipped (or given) network and the sha256 of its file; a file that is not the pinned one is refused."""
    path = Path(path) if path is not None else shipped_path(WEIGHTS_FILE)
    digest = _checked(path, WEIGHTS_SHA256 if expected_sha256 is None else expected_sha256, "network weights",
                      "reinstall cxrbench (pip install --force-reinstall cxrbench) or restore the file from the repository",
                      "the file was altered or truncated: reinstall cxrbench or restore the file from git")
    return _load_state(path, 15, "cxr128"), digest


def load_layout(path: Path | None = None, *, expected_sha256: str | None = None) -> tuple[CXR128Net, str]:
    """The shipped (or given) layout network and the sha256 of its file, refused as ``load_network`` refuses."""
    path = Path(path) if path is not None else shipped_path(LAYOUT_FILE)
    digest = _checked(path, LAYOUT_SHA256 if expected_sha256 is None else expected_sha256, "layout network",
                      "reinstall cxrbench (pip install --force-reinstall cxrbench) or restore the file from the repository",
                      "the file was altered or truncated: reinstall cxrbench or restore the file from git")
    return _load_state(path, len(LAYOUT_CLASSES), "cxr128 layout"), digest


def layout_thumbnail(x: torch.Tensor) -> torch.Tensor:
    """The network's 128 px input in [-1, 1] -> the layout network's 64 px input (area average)."""
    return F.interpolate(x, size=(LAYOUT_SIZE, LAYOUT_SIZE), mode="area")


class CXR128Extractor(FeatureExtractor):
    name = "cxr128"
    version = "4"
    kind = "embedding"
    num_features = EMBED_DIM + (len(LAYOUT_CLASSES) if LAYOUT_SHA256 else 0)  # shipped; an instance sets its own
    input_size = IMAGE_SIZE
    resize_filter = "centre crop (xrv offset) + bilinear-antialias (torch) to 128 px"
    published_sha256 = (WEIGHTS_SHA256,)  # the shipped file: results with it are comparable
    #: corruption families (``cxrbench.data.corruptions`` names) the shipped networks saw while training: mild
    #: blur and noise and brightness/contrast as view augmentations, 90-degree turns, vertical flips, mirrors and
    #: two images joined along a line in the orientation pretext and as layout classes, low resolution among the
    #: layout network's degradations; the validity suite's order must also hold on the families they never saw
    training_corruptions = TRAINING_CORRUPTIONS

    def __init__(self, *, weights: str | None = "auto", seed: int = 0, device: str | torch.device = "cpu",
                 network: CXR128Net | None = None, whiten: bool = True) -> None:
        """``weights``: "auto" (the shipped, pinned file; also for a folder without ``cxr128-net.pt``, unless it
        holds a layout network or a whitening, which is refused), "random"
        (seeded init with BatchNorm statistics from synthetic radiographs: tests and smoke runs), or a path to a
        ``cxr128-net.pt`` file or a folder holding one (accepted whatever its hash: for retraining and for
        validating a candidate network; such results are not comparable). The whitening: the shipped one with
        the shipped network, a ``cxr128-whiten.npz`` beside a custom weights file, else the identity (random
        weights, a candidate without one; ``spec()["whitening"]`` says which); ``whiten=False``: the raw
        embedding (for fitting the head and the whitening)."""
        super().__init__()
        whitening: tuple | None = None
        self.layout, self.layout_id = None, None
        if network is not None:
            self.net, self.weights_id = network, "memory"
        elif weights is not None and is_random_weights(weights):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = CXR128Net()
                if LAYOUT_SHA256:  # shaped as the shipped extractor is
                    self.layout = CXR128Net(num_labels=len(LAYOUT_CLASSES))
            x = to_cxr128(synthetic_cxr(32, IMAGE_SIZE, seed=seed)) * 2 - 1
            bn_recalibrate(self.net, x)
            if self.layout is not None:
                bn_recalibrate(self.layout, layout_thumbnail(x))
            self.weights_id = f"random:{seed}"
            self.layout_id = self.weights_id if self.layout is not None else None
        else:
            path = Path(str(weights)).expanduser() if weights not in (None, "", "auto") else None
            if path is not None and not path.exists():  # a mistyped candidate path must not measure the shipped net
                raise WeightsError(f"--weights {weights}: no such folder or file (give a folder holding "
                                   f"{WEIGHTS_FILE}, or leave --weights out for the shipped network)")
            if path is not None and path.is_dir():
                stray = [f for f in (LAYOUT_FILE, WHITEN_FILE) if (path / f).is_file()]
                if stray and not (path / WEIGHTS_FILE).is_file():  # else the shipped files would silently replace them
                    raise WeightsError(f"--weights {weights}: holds {' and '.join(stray)} but no {WEIGHTS_FILE}; put "
                                       f"the embedding network beside them (the shipped one is "
                                       f"{shipped_path(WEIGHTS_FILE)})")
                path = path / WEIGHTS_FILE
            custom = path is not None and path.is_file()
            self.net, self.weights_id = load_network(path if custom else None,
                                                     expected_sha256="any" if custom else None)
            if not custom:
                whitening = load_whitening()
                if LAYOUT_SHA256:
                    self.layout, self.layout_id = load_layout()
            else:  # a candidate: its folder's layout network and whitening where it has them
                if (path.parent / LAYOUT_FILE).is_file():
                    self.layout, self.layout_id = load_layout(path.parent / LAYOUT_FILE, expected_sha256="any")
                if (path.parent / WHITEN_FILE).is_file():
                    whitening = load_whitening(path.parent / WHITEN_FILE, expected_sha256="any")
        self.num_features = EMBED_DIM + (len(LAYOUT_CLASSES) if self.layout is not None else 0)
        d = self.num_features
        if not whiten:
            whitening = (np.zeros(d), np.eye(d), "none (raw embedding)")
        if whitening is not None and whitening[0].shape != (d,):
            raise WeightsError(f"whitening {whitening[2][:16]}...: fitted on {whitening[0].shape[0]} features, but the "
                               f"network gives {d} (the embedding{' and the layout logits' if self.layout else ''}); "
                               "refit it beside the weights (python -m baselines.cxr128net whiten --out DIR)")
        mean, w, self.whitening_id = whitening or (np.zeros(d), np.eye(d), "identity")
        # float64 on the CPU: the whitening multiplies the embedding's smallest directions by up to ~300, where
        # float32 round-off would show; (N, 136) rows cost nothing to move
        self.whiten_mean, self.whiten_w = torch.from_numpy(mean), torch.from_numpy(w)
        self.net.eval()
        if self.layout is not None:
            self.layout.eval()
        self.to(device)

    def spec(self) -> dict:
        spec = {**super().spec(), "whitening": self.whitening_id}
        if self.layout_id is not None:  # only then: an embedding-only candidate's spec has no layout key
            spec["layout"] = self.layout_id
        return spec

    def unpublished_weights(self) -> str | None:
        # the shipped embedding network with another layout network or whitening gives other numbers: all three
        # files must be the pinned ones for a comparable result
        why = super().unpublished_weights()
        if why is None:  # the published embedding network
            if self.layout_id != (LAYOUT_SHA256 or None):
                return (f"cxr128: layout network {str(self.layout_id)[:16]}... is not the published one "
                        f"({LAYOUT_SHA256[:16] or 'none'}...)")
            if self.whitening_id != WHITEN_SHA256:
                return f"cxr128: whitening {self.whitening_id[:16]}... is not the published one ({WHITEN_SHA256[:16]}...)"
        return why

    def whitened(self, f: torch.Tensor) -> torch.Tensor:
        """Raw embedding rows -> whitened rows (same device and dtype)."""
        return ((f.detach().cpu().double() - self.whiten_mean) @ self.whiten_w).to(device=f.device, dtype=f.dtype)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return to_cxr128(x) * 2 - 1

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images -> the embedding, then the layout logits where the extractor has a layout network."""
        f = self.net.features(x)
        return f if self.layout is None else torch.cat([f, self.layout(layout_thumbnail(x))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.whitened(self.raw(x))


class _FromCXR128(FeatureExtractor):
    """What the extractors computed from ``cxr128`` features share: the network's input and provenance (the
    harness runs the network once and hands them its features through ``from_features``)."""

    derived_from = "cxr128"
    input_size = IMAGE_SIZE
    resize_filter = CXR128Extractor.resize_filter
    published_sha256 = (WEIGHTS_SHA256,)
    training_corruptions = TRAINING_CORRUPTIONS

    def preprocess(self, x):  # pragma: no cover - derived: the harness feeds cxr128 features
        raise RuntimeError(f"{self.name} is computed from cxr128 features; add cxr128 to the extractors")

    forward = preprocess


class CXR128ClassifierExtractor(_FromCXR128):
    """Calibrated probabilities of the labels the ``cxr128`` head tells apart, from ``cxr128`` features.

    Calibration (Platt: ``sigmoid(a * logit + b)`` per label, then the operating point mapped to 0.5 as
    torchxrayvision's ``op_norm`` does) and the label list are shipped beside the weights in
    ``cxr128-labels.json`` with the held-out AUROC that chose them.
    """

    name = "cxr128-classifier"
    version = "4"
    kind = "probabilities"

    def __init__(self, *, weights: str | None = "auto", seed: int = 0, device: str | torch.device = "cpu") -> None:
        super().__init__()
        base = CXR128Extractor(weights=weights, seed=seed, device="cpu")
        head_path = shipped_path(HEAD_FILE)
        if is_random_weights(weights) or not head_path.is_file():
            if not is_random_weights(weights):
                raise WeightsError(f"{head_path}: the cxr128 label calibration is missing; reinstall cxrbench")
            calib = {"labels": ["Effusion", "No Finding"], "index": [2, 14], "a": [1.0, 1.0], "b": [0.0, 0.0]}
        else:
            digest = sha256_file(head_path)
            if digest != HEAD_SHA256:
                raise WeightsError(f"{head_path}: sha256 {digest[:16]}... is not the pinned cxr128 label head "
                                   f"({HEAD_SHA256[:16]}...); the file was altered: reinstall cxrbench or restore it")
            calib = json.loads(head_path.read_text())
        if not calib["labels"]:
            raise WeightsError(f"{head_path}: the cxr128 label head keeps no label; rebuild it "
                               "(python -m baselines.cxr128net build) from a trained network")
        self.feature_names = list(calib["labels"])
        self.num_features = len(self.feature_names)
        w, b = base.net.head.weight.detach().double(), base.net.head.bias.detach().double()
        w = F.pad(w, (0, base.num_features - EMBED_DIM))  # the head reads the embedding, not the layout logits
        idx = torch.tensor(calib["index"], dtype=torch.long)
        # the head reads the raw embedding x = f W^-1 + mean of the whitened features f: folded into the head,
        # logits = f (W^-1 head^T) + (mean head^T + b), in float64 (W^-1 undoes a gain of up to ~300)
        w_inv = torch.linalg.inv(base.whiten_w)
        self.register_buffer("w", (w[idx] @ w_inv.T).float())
        self.register_buffer("b", (b[idx] + w[idx] @ base.whiten_mean).float())
        self.whitening_id = base.whitening_id
        self.register_buffer("a_cal", torch.tensor(calib["a"], dtype=torch.float32))
        self.register_buffer("b_cal", torch.tensor(calib["b"], dtype=torch.float32))
        self.register_buffer("op", torch.tensor(calib.get("op", [0.5] * len(calib["labels"])), dtype=torch.float32))
        self.weights_id = base.weights_id
        self.calibration = calib
        self.eval()
        self.to(device)

    def spec(self) -> dict:
        return {**super().spec(), "derived_from": self.derived_from, "whitening": self.whitening_id,
                "labels": list(self.feature_names),
                "calibration": "platt+op_norm" if not self.weights_id.startswith("random") else "none (random weights)"}

    @torch.no_grad()
    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        logits = (f.double().cpu() @ self.w.double().cpu().T + self.b.double().cpu()).to(device=f.device,
                                                                                          dtype=torch.float32)
        p = torch.sigmoid(self.a_cal * logits + self.b_cal)
        # the operating point to 0.5, piecewise linearly (torchxrayvision's op_norm): "present" = p > 0.5
        return torch.where(p < self.op, p / (2 * self.op), 1 - (1 - p) / (2 * (1 - self.op)))


def load_whitening(path: Path | None = None, *, expected_sha256: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(mean, W, sha256)`` of the shipped (or given) whitening file; a file that is not the pinned one is refused."""
    path = Path(path) if path is not None else shipped_path(WHITEN_FILE)
    digest = _checked(path, WHITEN_SHA256 if expected_sha256 is None else expected_sha256, "whitening",
                      "rebuild it (python -m baselines.cxr128net whiten) or restore the file from the repository",
                      "the file was altered: restore it from git or rebuild it")
    with np.load(path, allow_pickle=False) as d:
        mean, w = d["mean"].astype(np.float64), d["whiten"].astype(np.float64)
    if mean.ndim != 1 or w.shape != (len(mean), len(mean)) or len(mean) < EMBED_DIM or not np.isfinite(w).all():
        raise WeightsError(f"{path}: not a cxr128 whitening (mean {mean.shape}, whiten {w.shape})")
    return mean, w, digest
