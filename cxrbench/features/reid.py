"""Patient verification networks for the re-identification privacy score (``cxrbench.metrics.reid``).

Two images in, the probability that they show the same patient out. The field's instrument is the Siamese
network of Packhaeuser et al., "Deep learning-based patient re-identification is able to exploit the biometric
nature of medical chest X-ray data" (Scientific Reports 2022), which CheXGenBench (Dutt et al., "CheXGenBench: a
unified benchmark for fidelity, privacy and utility of synthetic chest radiographs", 2025) uses as its privacy
metric. Its published architecture (kaipackhaeuser/CXR-Patient-ReID, ``PatientVerification/networks/
SiameseNetwork.py``; copied unchanged into CheXGenBench's ``metrics/privacy_metrics.py``):

- one branch: torchvision ResNet-50, ``fc`` replaced by ``Linear(2048, 128)``, then a sigmoid;
- the pair: ``|f(a) - f(b)|`` into ``fc_end = Linear(128, 1)``: a logit; ``sigmoid`` gives the probability,
  0.5 the decision threshold (the paper's ``apply_threshold(y_pred, 0.5)``).

The checkpoint CheXGenBench points to (``ResNet-50_epoch11_data_handling_RPN.pth`` on the Hugging Face hub,
trained on MIMIC-CXR) is a plain ``state_dict`` of that module (``model.*`` and ``fc_end.*`` keys);
Packhaeuser's own training checkpoints wrap it as ``{"state_dict": ...}``. ``load_siamese`` reads both.
Preprocessing differs between the two codes: Packhaeuser trains and tests at 256 x 256 with ImageNet
normalisation; CheXGenBench scores at 224 x 224 with ``ToTensor()`` only (RGB, no normalisation). Both are
offered (``PREPROCESSING``) and named in ``spec()``; the default is CheXGenBench's, whose numbers a user
would set theirs beside.

Offline, cxrbench ships its own verification network of the same form (``ReidNet``): the ``cxr128`` backbone
(128 px, 1 channel) with the published pair head (sigmoid features, absolute difference, one linear layer),
trained by cxrbench on NIH same-patient pairs (``baselines/reidnet.py``; held-out pair AUROC 0.836, far below the
published network's, so a weak instrument: it is the offline default, not a substitute). Both expose ``embed(x)`` (the
image contract in, one branch's sigmoid features out) and ``pair_logits(ea, eb)``, so a set of images is
embedded once and every sample-to-training pair costs only the head.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50

from ..data.io import check_pinned, sha256_file
from ..data.synthetic import synthetic_cxr
from ..errors import WeightsError
from .base import bn_recalibrate, is_random_weights
from .cxr128 import CXR128Net, shipped_path, to_cxr128

N_FEATURES = 128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: how the published network's inputs are made (size, normalised with ImageNet statistics or not)
PREPROCESSING = {
    # metrics/privacy_metrics.py: transforms.Resize((224, 224)), transforms.ToTensor()
    "chexgenbench": {"size": 224, "imagenet_norm": False},
    # PatientVerification config.json "image_size": 256, "transform": "image_net"
    "packhaeuser": {"size": 256, "imagenet_norm": True},
}
#: the in-house network's shipped weights (beside the cxr128 protocol's files) and its pin
REIDNET_FILE = "reid-net.pt"
REIDNET_SHA256 = "b88a378f37459e8706f2653e580ec1d4e44052aeeda51470f5f57ccf458a9acd"
#: the decision threshold of the published evaluation (probability of "same patient")
THRESHOLD = 0.5


class PairHead(nn.Module):
    """The published pair combination: ``fc_end(|a - b|)`` on sigmoid branch features, a logit."""

    def pair_logits(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` and ``(M, D)`` branch features -> ``(N, M)`` logits of every pair."""
        w, b = self.fc_end.weight[0], self.fc_end.bias[0]
        return (ea[:, None, :] - eb[None, :, :]).abs() @ w + b

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Two preprocessed batches -> ``(N, 1)`` logits of the aligned pairs (the published ``forward``)."""
        d = (self.forward_once(x1) - self.forward_once(x2)).abs()
        return self.fc_end(d)


class PackhaeuserSiamese(PairHead):
    """Packhaeuser et al.'s Siamese ResNet-50, module names as published so that its state dicts load."""

    def __init__(self, in_channels: int = 3, n_features: int = N_FEATURES, preprocessing: str = "chexgenbench"):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing {preprocessing!r}: expected one of {', '.join(PREPROCESSING)}")
        self.in_channels, self.n_features, self.preprocessing = in_channels, n_features, preprocessing
        self.model = resnet50(weights=None)
        if in_channels == 1:
            self.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.model.fc = nn.Linear(2048, n_features)
        self.fc_end = nn.Linear(n_features, 1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Image contract -> the network's input: a square resize (no crop, as both codes do; bilinear with
        antialiasing, PIL's ``Resize``), channels replicated, ImageNet normalisation where the recipe has it."""
        p = PREPROCESSING[self.preprocessing]
        x = F.interpolate(x, size=(p["size"], p["size"]), mode="bilinear", antialias=True, align_corners=False)
        if self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if p["imagenet_norm"]:
            k = self.in_channels
            mean = torch.tensor(IMAGENET_MEAN[:k] if k == 3 else IMAGENET_MEAN[:1], dtype=x.dtype, device=x.device)
            std = torch.tensor(IMAGENET_STD[:k] if k == 3 else IMAGENET_STD[:1], dtype=x.dtype, device=x.device)
            x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return x

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_once(self.preprocess(x))

    def describe(self) -> str:
        p = PREPROCESSING[self.preprocessing]
        return (f"Packhaeuser Siamese ResNet-50 ({self.in_channels} ch), {self.preprocessing} preprocessing: square "
                f"resize to {p['size']} px (bilinear-antialias){', ImageNet normalisation' * p['imagenet_norm']}")


class ReidNet(PairHead):
    """cxrbench's verification network: the ``cxr128`` backbone (its 128-d embedding as the branch's ``fc``)
    and the published pair head. 128 px, 1 channel, about 0.8M parameters."""

    image_size = 128

    def __init__(self) -> None:
        super().__init__()
        self.backbone = CXR128Net()
        self.backbone.head = nn.Identity()  # the label head is not part of a branch
        self.fc_end = nn.Linear(self.backbone.embed.out_features, 1)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return to_cxr128(x, self.image_size) * 2 - 1

    def forward_once(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.backbone.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_once(self.preprocess(x))

    def describe(self) -> str:
        return "cxrbench reid-net (cxr128 backbone, Siamese pair head): centre crop, bilinear-antialias to 128 px"


def _state_dict(obj) -> dict:
    """A state dict from what ``torch.load`` gave: bare, or wrapped as Packhaeuser's checkpoints are; a
    ``DataParallel`` ``module.`` prefix removed."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TypeError("not a state dict of tensors")
    return OrderedDict((k.removeprefix("module."), v) for k, v in obj.items())


def _differences(net: nn.Module, state: dict) -> list[str]:
    want = net.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(want[k].shape)})"
              for k in want if k in state and state[k].shape != want[k].shape]
    out = []
    if missing:
        out.append(f"missing {len(missing)} tensor(s) ({', '.join(missing[:3])}{', ...' * (len(missing) > 3)})")
    if extra:
        out.append(f"unexpected {len(extra)} tensor(s) ({', '.join(extra[:3])}{', ...' * (len(extra) > 3)})")
    if shapes:
        out.append("other shapes: " + "; ".join(shapes[:3]))
    return out


def load_siamese(path, *, preprocessing: str = "chexgenbench") -> tuple[nn.Module, str]:
    """A verification network from a state dict file and the file's sha256.

    The file is read with ``weights_only=True`` (nothing is unpickled). Its keys say what it is: ``model.*`` and
    ``fc_end.*`` is Packhaeuser's Siamese ResNet-50 (1 or 3 input channels, from ``model.conv1.weight``);
    ``backbone.*`` and ``fc_end.*`` is cxrbench's ``ReidNet``. Anything else is refused naming what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; pass the Siamese network's state dict (e.g. "
                           "ResNet-50_epoch11_data_handling_RPN.pth from CheXGenBench's README) or leave reid_weights "
                           "at 'cxrbench' for the shipped network")
    try:
        state = _state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any file that is not a readable state dict
        raise WeightsError(f"{path}: not a readable state dict ({e.__class__.__name__}: {str(e)[:120]}); "
                           "expected a torch.save'd state_dict of the Siamese network") from None
    if any(k.startswith("backbone.") for k in state):
        net = ReidNet()
    else:
        conv1 = state.get("model.conv1.weight")
        in_ch = int(conv1.shape[1]) if conv1 is not None and conv1.ndim == 4 else 3
        fc = state.get("model.fc.weight")
        n_feat = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else N_FEATURES
        net = PackhaeuserSiamese(in_channels=in_ch if in_ch in (1, 3) else 3, n_features=n_feat,
                                 preprocessing=preprocessing)
    diff = _differences(net, state)
    if diff:
        raise WeightsError(f"{path}: not a state dict of {type(net).__name__} (the published Siamese architecture: "
                           f"ResNet-50 'model.*' with fc 2048->128 and 'fc_end' 128->1): {'; '.join(diff)}")
    net.load_state_dict(state)
    return net.eval(), sha256_file(path)


def random_reidnet(seed: int = 0) -> ReidNet:
    """A seeded random ``ReidNet`` with BatchNorm statistics from synthetic radiographs (tests, smoke runs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ReidNet()
    bn_recalibrate(net.backbone, to_cxr128(synthetic_cxr(32, ReidNet.image_size, seed=seed)) * 2 - 1)
    return net.eval()


def load_reid_network(weights: str = "cxrbench", *, seed: int = 0,
                      preprocessing: str = "chexgenbench") -> tuple[nn.Module, str]:
    """The verification network a run asked for and its weights id: ``"cxrbench"`` (the shipped ``ReidNet``,
    pinned by sha256), ``"random"`` (seeded, ``random:<seed>``) or a state dict file (``load_siamese``)."""
    w = str(weights)
    if is_random_weights(w):
        return random_reidnet(seed), f"random:{seed}"
    if w in ("cxrbench", "auto", ""):
        path = shipped_path(REIDNET_FILE)
        digest = check_pinned(path, REIDNET_SHA256, "shipped re-identification network",
                              "reinstall cxrbench, or pass reid_weights=FILE (the published Siamese state dict)",
                              pinned_as="reid-net")
        net, _ = load_siamese(path)
        return net, digest
    return load_siamese(w, preprocessing=preprocessing)
