"""torchxrayvision DenseNet121 features (1024-d) and its 18-pathology classifier head.

Preprocessing is torchxrayvision's: range ``[-1024, 1024]`` (``xrv.utils.normalize``), center crop to a square
(``XRayCenterCrop``), resize to 224 px, one channel. The resize is ``resize="xrv"`` (default): xrv's standard
``XRayResizer(224)`` (skimage: Gaussian pre-blur, bilinear, zero border), batched in torch (``resize.py``,
equal to skimage within 1e-3 on the [-1024, 1024] scale); or ``resize="torch-antialias"``: torch's bilinear
with antialiasing (cxrbench's filter before version 2). The choice is named in ``resize_filter`` (results,
cache key).
Features are ``DenseNet.features2``: ReLU, global average pool. The classifier extractor is *derived*: it
maps the cached 1024-d features through the head (sigmoid, then xrv's ``op_norm`` with the published
``op_threshs`` so that 0.5 is each pathology's operating point), so the network runs once for both.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UsageError, WeightsError
from .base import FeatureExtractor, bn_recalibrate
from .resize import center_crop_xrv, xrv_resize
from .weights import resolve_weights_file, weights_sha256

WEIGHTS_NAME = "densenet121-res224-all"


def _xrv():
    import torchxrayvision as xrv

    return xrv


def _weights_url() -> str:
    return _xrv().models.model_urls[WEIGHTS_NAME]["weights_url"]


RESIZES = {
    "xrv": "xrv XRayCenterCrop + XRayResizer(224) (skimage: gaussian pre-blur, bilinear, zero border; torch)",
    "torch-antialias": "xrv XRayCenterCrop + bilinear-antialias (torch)",
}


def _check_resize(resize: str) -> str:
    if resize not in RESIZES:
        raise UsageError(f"--xrv-resize {resize}: expected one of {', '.join(RESIZES)}")
    return resize


def preprocess_xrv(x: torch.Tensor, resize: str = "xrv") -> torch.Tensor:
    """Image contract -> the DenseNet's input: (N, 1, 224, 224) in [-1024, 1024]."""
    # xrv.utils.normalize(img, maxval=1) first, as xrv does: skimage's zero border is then mid-grey
    x = center_crop_xrv(x) * 2048.0 - 1024.0
    if x.shape[-1] == 224:
        return x
    if resize == "xrv":
        return xrv_resize(x, 224)
    return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)


def load_xrv_weights(net, path: Path) -> None:
    """Load a state dict or torchxrayvision's pickled DenseNet with the restricted (weights_only) unpickler.

    xrv publishes whole pickled modules; allowing exactly the module classes they contain keeps
    ``weights_only=True`` (no code runs from the file) while reading them.
    """
    import collections

    from torch import nn

    xrv = _xrv()
    allowed = [
        xrv.models.DenseNet, xrv.models._DenseBlock, xrv.models._DenseLayer, xrv.models._Transition,
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Sequential, nn.Linear, nn.Dropout,
        collections.OrderedDict, set,
    ]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not loadable as torchxrayvision DenseNet weights ({str(e).splitlines()[0]})") from None
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    state = {k: v for k, v in state.items() if k != "op_threshs"}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if [k for k in missing if k != "op_threshs"] or unexpected:
        raise WeightsError(f"{path}: state dict does not fit DenseNet121 (missing {missing[:3]}, unexpected {unexpected[:3]})")


def build_densenet(weights: str, seed: int):
    """(net, weights_id, op_threshs or None) for ``weights`` = "random", "auto" or a folder/file."""
    xrv = _xrv()
    torch.manual_seed(seed)
    net = xrv.models.DenseNet(weights=None)  # builds without download
    if weights == "random":
        from ..synthetic import synthetic_cxr

        x = F.interpolate(synthetic_cxr(16, 224, seed=seed), size=224) * 2048 - 1024
        bn_recalibrate(net.features, x)
        return net, f"random:{seed}", None
    url = _weights_url()
    filename = Path(url).name
    path = resolve_weights_file(
        "torchxrayvision DenseNet121 (densenet121-res224-all)", [filename], weights=weights,
        library_dirs=[Path(xrv.utils.get_cache_dir())],
        download=lambda: Path(xrv.models.get_weights(WEIGHTS_NAME)), url=url,
    )
    load_xrv_weights(net, path)
    op = torch.tensor(xrv.models.model_urls[WEIGHTS_NAME]["op_threshs"], dtype=torch.float32)
    return net, weights_sha256(path), op


class XRVDenseNetExtractor(FeatureExtractor):
    name = "xrv"
    version = "2"  # 2: xrv's XRayResizer by default, xrv's centre-crop offset
    kind = "embedding"
    num_features = 1024
    input_size = 224
    resize_filter = RESIZES["xrv"]  # the default; an instance names its own
    config_kwargs = {"resize": "xrv_resize"}  # constructor argument <- EvalConfig field

    def __init__(self, *, weights: str = "auto", seed: int = 0, device: str = "cpu", resize: str = "xrv") -> None:
        super().__init__()
        self.resize = _check_resize(resize)
        self.resize_filter = RESIZES[resize]
        self.net, self.weights_id, _ = build_densenet(weights, seed)
        self.net.requires_grad_(False)
        self.eval()
        self.to(device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess_xrv(x, self.resize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features2(x)


class XRVClassifierExtractor(FeatureExtractor):
    """18 pathology probabilities, op_threshs-calibrated (0.5 = operating point); derived from ``xrv``."""

    name = "xrv-classifier"
    version = "2"  # follows xrv's version 2 preprocessing
    kind = "probabilities"
    num_features = 18
    input_size = 224
    derived_from = "xrv"
    resize_filter = RESIZES["xrv"]
    config_kwargs = XRVDenseNetExtractor.config_kwargs

    def __init__(self, *, weights: str = "auto", seed: int = 0, device: str = "cpu", resize: str = "xrv") -> None:
        super().__init__()
        self.resize_filter = RESIZES[_check_resize(resize)]  # the base network's preprocessing made its input
        net, self.weights_id, op = build_densenet(weights, seed)
        self.head = net.classifier.requires_grad_(False)
        self.register_buffer("op_threshs", op if op is not None else torch.full((18,), float("nan")))
        self.feature_names = list(_xrv().datasets.default_pathologies)
        self.eval()
        self.to(device)

    def spec(self) -> dict:
        return {**super().spec(), "derived_from": self.derived_from, "calibration": "op_threshs" if
                bool(torch.isfinite(self.op_threshs).any()) else "none (random weights: plain sigmoid)"}

    # no @torch.no_grad: seed 004's latent optimisation (cxrbench sample --optimize-toward) differentiates
    # through it; the head's weights are frozen and extracted features carry no graph, so nothing changes here
    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.head(feats.to(self.op_threshs.device)))
        if torch.isfinite(self.op_threshs).any():
            p = _xrv().models.op_norm(p, self.op_threshs)
        return p.float()
