"""Per-image intensity statistics (the ``pixels`` extractor, kind "statistics"; no weights).

Ten numbers per image, computed at the image's native size on the [0, 1] image contract:

- ``mean``, ``std`` (population standard deviation);
- ``p1 p5 p25 p50 p75 p95 p99``: intensity percentiles (linear interpolation, as ``numpy.percentile``);
- ``entropy_equalized``: Shannon entropy (bits) of the 256-bin grey-level histogram after histogram
  equalisation (the seed preprocessing). Equalisation removes contrast and brightness, so what remains is
  how many grey levels the image really uses: 8 bits for a rich radiograph, ``log2(L)`` for one
  posterised to L levels, near 0 for a flat or saturated one.

The KS battery ``ks_pixels`` compares these between samples and reference.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import FeatureExtractor, FeatureKind

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
FEATURE_NAMES = ["mean", "std", *(f"p{p}" for p in PERCENTILES), "entropy_equalized"]
LEVELS = 256


def percentiles(flat: torch.Tensor, qs) -> torch.Tensor:
    """Per-row percentiles ``qs`` (0-100) of ``(N, M)`` with numpy's linear interpolation."""
    s = flat.sort(dim=1).values
    pos = torch.tensor([q / 100 * (s.shape[1] - 1) for q in qs], dtype=torch.float64, device=s.device)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    w = (pos - lo).to(s.dtype)
    return s[:, lo] + (s[:, hi] - s[:, lo]) * w


def equalized_entropy(flat: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Entropy (bits) of each row's ``levels``-bin histogram after histogram equalisation."""
    n, m = flat.shape
    q = (flat * (levels - 1)).round().clamp(0, levels - 1).long()
    hist = torch.zeros(n, levels, dtype=torch.float64, device=flat.device).scatter_add_(
        1, q, torch.ones_like(q, dtype=torch.float64)
    )
    cdf = hist.cumsum(1) / m
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, 2.0)).amin(1, keepdim=True)
    span = (1 - cdf_min).clamp(min=1e-12)  # 0 for a constant image: everything maps to one level
    new_level = ((cdf - cdf_min) / span * (levels - 1)).round().clamp(0, levels - 1).long()
    eq = torch.zeros_like(hist).scatter_add_(1, new_level, hist) / m
    return -(eq * torch.log2(eq.clamp(min=1e-300))).sum(1)


class PixelStatsExtractor(FeatureExtractor):
    name = "pixels"
    version = "1"
    kind: ClassVar[FeatureKind] = FeatureKind.STATISTICS
    num_features = len(FEATURE_NAMES)
    input_size = 0  # native size
    resize_filter = "none"

    def __init__(self, *, weights: str | None = None, seed: int = 0, device: str = "cpu") -> None:
        # the harness builds every extractor with weights/seed/device; there is nothing to load or draw, and
        # with no parameters, extract() computes on the device the images arrive on
        super().__init__()
        self.weights_id = "none"
        self.feature_names = list(FEATURE_NAMES)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double()
        stats = [flat.mean(1, keepdim=True), flat.std(1, correction=0, keepdim=True),
                 percentiles(flat, PERCENTILES), equalized_entropy(flat)[:, None]]
        return torch.cat(stats, 1).float()
