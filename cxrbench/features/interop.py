"""A cxrbench extractor as the ``feature`` module of torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance``, so a Lightning loop gets XRV-FID in one line::

    fid = FrechetInceptionDistance(feature=cxrbench.features.torchmetrics_feature("xrv"), normalize=True)

torchmetrics hands a custom module the images exactly as given to ``update`` (its ``normalize`` flag only
converts for its own Inception), so the module takes either uint8 ``[0, 255]`` (torchmetrics' default) or float
``[0, 1]`` images, ``(N, 1, H, W)`` or ``(N, 3, H, W)`` (RGB becomes luminance, as cxrbench reads files; equal
channels are read as one), and runs the extractor's own ``preprocess`` and network: the same features as
``cxrbench evaluate`` (the same inference rewrite unless ``fast_kernels=False``). ``num_features`` is set, so
torchmetrics does not probe the module with a dummy image. Like torchmetrics' ``NoTrainInceptionV3`` it stays
in eval mode when the surrounding model is put in training mode.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import EXTRACTORS
from .base import FeatureExtractor

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as data/io.py converts RGB files


class TorchmetricsFeature(nn.Module):
    def __init__(self, extractor: FeatureExtractor, base: FeatureExtractor | None = None) -> None:
        super().__init__()
        self.extractor = extractor
        self.base = base  # for a derived extractor (xrv-classifier): the network whose features it maps
        self.num_features = int(extractor.num_features)

    def train(self, mode: bool = True) -> TorchmetricsFeature:
        return super().train(False)  # eval-only, silently: Lightning calls .train() on every submodule

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise ValueError(f"{self.extractor.name}: expected (N, 1 or 3, H, W) images, got {tuple(imgs.shape)}")
        x = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()
        if x.shape[1] == 3:
            same = bool((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
            x = x[:, :1] if same else sum(w * x[:, i : i + 1] for i, w in enumerate(_LUMA))
        if self.base is not None:
            return self.extractor.from_features(self.base.extract(x)).float()
        return self.extractor.extract(x)


def torchmetrics_feature(name: str, *, weights: str = "auto", seed: int = 0, device: str = "cpu",
                         fast_kernels: bool = True, **options) -> TorchmetricsFeature:
    """The registered extractor ``name`` (``inception``, ``xrv``, ``xrv-classifier``, ``random-conv``, ...)
    wrapped for torchmetrics; ``options`` go to its constructor (e.g. ``resize="torch-antialias"``)."""
    def build(n):
        e = EXTRACTORS.get(n)(weights=weights, seed=seed, device=device, **options)
        return e.prepare_inference() if fast_kernels else e

    ext = build(name)
    base_name = getattr(ext, "derived_from", None)
    base = build(base_name) if base_name else None
    if base is not None:
        ext.inference_kernels = base.inference_kernels
    return TorchmetricsFeature(ext, base)
