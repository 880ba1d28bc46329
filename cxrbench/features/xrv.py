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

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import synthetic_cxr
from ..errors import UsageError, WeightsError
from .base import FeatureExtractor, FeatureKind, bn_recalibrate, is_random_weights
from .legacy_pickle import LegacyPickleError, state_dict_from_file
from .resize import center_crop_xrv, xrv_resize
from .weights import resolve_weights_file, weights_sha256

WEIGHTS_NAME = "densenet121-res224-all"
# sha256 of nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt
# (28,382,008 bytes). torchxrayvision publishes no hash; this is the one several independent projects that
# pin the file record. A file with another hash still loads, but its results are not comparable.
PUBLISHED_SHA256 = ("56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899",)


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
    """Load a state dict or a pickled DenseNet (torchxrayvision's published format, any PyTorch era) into ``net``.

    The file is read by ``legacy_pickle``: tensors are rebuilt, every class it names becomes an inert record,
    nothing in it runs. Every tensor of the current architecture must be there (``num_batches_tracked``
    excepted: PyTorch < 0.4.1 had none, and eval-mode features never read it); extra tensors from submodules
    the current class lacks are ignored with a warning.
    """
    path = Path(path)
    try:
        state, kind = state_dict_from_file(path)
    except LegacyPickleError as e:
        raise WeightsError(f"{path}: not loadable as torchxrayvision DenseNet weights ({e})") from None
    own = {k: v for k, v in net.state_dict().items() if k != "op_threshs"}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise WeightsError(
            f"{path}: this {kind} does not fit torchxrayvision's DenseNet121 ("
            + (f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}" if missing else "")
            + ("; " if missing and wrong else "") + (f"wrong shape: {', '.join(wrong[:3])}" if wrong else "")
            + f"); use the published {Path(_weights_url()).name}"
        )
    net.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    extra = [k for k in state if k not in own and k != "op_threshs"]
    if extra:
        warnings.warn(f"{path.name}: ignored {len(extra)} tensor(s) the current DenseNet121 lacks "
                      f"(e.g. {', '.join(extra[:3])})", stacklevel=2)


def build_densenet(weights: str, seed: int):
    """(net, weights_id, op_threshs or None) for ``weights`` = "random", "auto" or a folder/file."""
    xrv = _xrv()
    torch.manual_seed(seed)
    net = xrv.models.DenseNet(weights=None)  # builds without download
    if is_random_weights(weights):
        x = F.interpolate(synthetic_cxr(16, 224, seed=seed), size=224) * 2048 - 1024
        bn_recalibrate(net.features, x)
        return net, f"random:{seed}", None
    url = _weights_url()
    filename = Path(url).name
    path = resolve_weights_file(
        "torchxrayvision DenseNet121 (densenet121-res224-all)", [filename], weights=weights,
        library_dirs=[Path(xrv.utils.get_cache_dir())],
        download=lambda: Path(xrv.models.get_weights(WEIGHTS_NAME)), url=url, sha256=PUBLISHED_SHA256[0],
    )
    load_xrv_weights(net, path)
    op = torch.tensor(xrv.models.model_urls[WEIGHTS_NAME]["op_threshs"], dtype=torch.float32)
    return net, weights_sha256(path), op


class XRVDenseNetExtractor(FeatureExtractor):
    name = "xrv"
    version = "2"  # 2: xrv's XRayResizer by default, xrv's centre-crop offset
    kind = FeatureKind.EMBEDDING
    num_features = 1024
    input_size = 224
    resize_filter = RESIZES["xrv"]  # the default; an instance names its own
    config_kwargs = {"resize": "xrv_resize"}  # constructor argument <- EvalConfig field
    published_sha256 = PUBLISHED_SHA256

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

    @torch.no_grad()
    def prepare_inference(self) -> XRVDenseNetExtractor:
        """BatchNorm folding and channels_last (the base rewrite), then every dense block writes its layers'
        outputs into one preallocated buffer instead of concatenating: xrv's ``_DenseLayer`` returns
        ``cat([x, new])``, so a block of L layers copies O(L^2) channels (14% of the forward on CPU)."""
        if self.inference_kernels is not None:
            return self
        super().prepare_inference()
        feats = self.net.features
        n = 0
        for name, block in list(feats.named_children()):
            if isinstance(block, _xrv().models._DenseBlock):
                setattr(feats, name, ConcatFreeDenseBlock(block))
                n += 1
        if n:
            self.inference_kernels += ",dense-concat-free"
        return self


class ConcatFreeDenseBlock(nn.Module):
    """A DenseNet block (same layers, same weights) whose layers read a channel slice of one buffer and write
    their ``growth`` new channels after it: the features equal the concatenating block's up to float round-off
    (BatchNorm reads a strided view), without its quadratic copies."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(block.children())
        self.growth = self.layers[0].conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        buf = torch.empty((n, c + self.growth * len(self.layers), h, w), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        buf[:, :c] = x
        for layer in self.layers:
            # the layer's own Sequential (norm1, relu1, conv1, norm2 or its fold, relu2, conv2) without its cat
            buf[:, c : c + self.growth] = nn.Sequential.forward(layer, buf[:, :c])
            c += self.growth
        return buf


class XRVClassifierExtractor(FeatureExtractor):
    """18 pathology probabilities, op_threshs-calibrated (0.5 = operating point); derived from ``xrv``."""

    name = "xrv-classifier"
    version = "2"  # follows xrv's version 2 preprocessing
    kind = FeatureKind.PROBABILITIES
    num_features = 18
    input_size = 224
    derived_from = "xrv"
    published_sha256 = PUBLISHED_SHA256
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

    # no @torch.no_grad: Segal et al. (2020)'s latent optimisation (cxrbench sample --optimize-toward) differentiates
    # through it; the head's weights are frozen and extracted features carry no graph, so nothing changes here
    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.head(feats.to(self.op_threshs.device)))
        if torch.isfinite(self.op_threshs).any():
            p = _xrv().models.op_norm(p, self.op_threshs)
        return p.float()
