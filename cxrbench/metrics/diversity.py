"""MS-SSIM diversity (mode collapse): how alike random pairs of generated images are, next to real pairs.

``ms_ssim`` is the mean MS-SSIM (Wang et al. 2003, pytorch_msssim, 5 scales, standard weights, data
range 1) over ``pairs`` random pairs of distinct generated images (seeded); ``real_vs_real`` and
``extra["reference"]`` are the same over random pairs of reference images. Lower means more diverse; a
collapsed generator approaches 1. A value well above the reference's signals mode collapse, one well below
it unstructured noise, so read it next to the reference value (``extra["gap"]`` = samples - reference).

Size: 5-scale MS-SSIM with an 11-pixel window needs a side above 160 px. Every image is brought to
``size`` x ``size`` (``ms_ssim_size``, 192) before comparison: short side resized (bilinear,
antialiased) to ``size``, then a centre crop. Smaller images are therefore *upsampled* (rather than
compared at fewer scales: the standard scales and weights stay comparable across inputs), and images of
different native sizes can be paired. The CI resamples the generated pairs.

One file: the pair sampler and ``pair_ms_ssim``, the functional entry ``ms_ssim_diversity(real=, fake=)`` on
image arrays (``functional.ms_ssim``) and the registered metric ``ms_ssim``, both through ``ms_ssim_sets``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

from ..config import MetricSettings
from ..errors import DataError
from ..seeding import numpy_rng
from .base import EvalContext, FeatureSet, Metric, MetricValue
from .common import bootstrap_interval, gray_image_4d, image_set, one_thread, replicates

#: pairs decoded at a time (bounds memory when images are full-resolution radiographs)
PAIR_CHUNK = 32


def random_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """``(n_pairs, 2)`` index pairs of distinct items, uniformly drawn with a seeded generator."""
    if n < 2:
        raise ValueError(f"need at least 2 images for pairs, got {n}")
    rng = numpy_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = rng.integers(0, n - 1, n_pairs)
    return np.stack([i, j + (j >= i)], 1)


def to_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, H, W)`` -> ``(N, 1, size, size)``: short side to ``size`` (antialiased bilinear), centre crop."""
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


def _load(fs: FeatureSet, idx: list[int], size: int, device) -> torch.Tensor:
    imgs = fs.load_images(idx)
    if isinstance(imgs, torch.Tensor):
        imgs = list(imgs)
    out = []
    for im in imgs:
        out.append(to_square(gray_image_4d(im, fs).to(device), size))
    return torch.cat(out)


def pair_ms_ssim(fs: FeatureSet, pairs: np.ndarray, *, size: int = 192, device="cpu") -> np.ndarray:
    """MS-SSIM of every pair of ``fs``'s images (decoded ``PAIR_CHUNK`` pairs at a time)."""
    if size <= 160:
        raise ValueError(f"5-scale MS-SSIM needs a side above 160 px, got size={size}")
    vals = []
    for c in range(0, len(pairs), PAIR_CHUNK):
        p = pairs[c : c + PAIR_CHUNK]
        x = _load(fs, [int(i) for i in p.reshape(-1)], size, device).view(len(p), 2, 1, size, size)
        vals.append(ms_ssim(x[:, 0], x[:, 1], data_range=1.0, size_average=False).double().cpu().numpy())
    return np.concatenate(vals)


def ms_ssim_sets(gen: FeatureSet, ref: FeatureSet, st: MetricSettings, device="cpu") -> MetricValue:
    """The registered metric's value (and its CI when ``st.n_bootstrap`` > 0) for two sets of images."""
    gen_pairs = random_pairs(len(gen), st.ms_ssim_pairs, st.seed)
    ref_pairs = random_pairs(len(ref), st.ms_ssim_pairs, st.seed + 1)
    g = pair_ms_ssim(gen, gen_pairs, size=st.ms_ssim_size, device=device)
    r = pair_ms_ssim(ref, ref_pairs, size=st.ms_ssim_size, device=device)
    ci = bootstrap_interval(lambda idx: float(g[idx].mean()), len(g), float(g.mean()), st)
    extra = {"reference": float(r.mean()), "gap": float(g.mean() - r.mean()), "pairs": len(g), "size": st.ms_ssim_size}
    return MetricValue(float(g.mean()), False, ci, len(gen), len(ref), float(r.mean()), extra)


# the functional entry (``functional.ms_ssim``)


@one_thread
def ms_ssim_diversity(*, real, fake, pairs: int = MetricSettings.ms_ssim_pairs,
                      size: int = MetricSettings.ms_ssim_size, ci: bool = False, n_bootstrap: int | None = None,
                      seed: int = MetricSettings.seed, alpha: float = MetricSettings.alpha,
                      device: str = "cpu") -> MetricValue:
    """Mean MS-SSIM of ``pairs`` random pairs of ``fake`` images; ``real_vs_real`` the same of ``real`` images.

    Images, not features: ``(N, H, W)`` or ``(N, 1, H, W)`` grey arrays or tensors in [0, 1], any size (each is
    brought to ``size`` px as the registered ``ms_ssim`` does). On request a percentile-bootstrap interval over
    the generated pairs. ``functional.ms_ssim`` re-exports it.
    """
    st = MetricSettings(seed=seed, n_bootstrap=replicates(n_bootstrap, ci), alpha=alpha, ms_ssim_pairs=pairs,
                        ms_ssim_size=size)
    gen, ref = image_set(fake, "fake"), image_set(real, "real")
    for fs in (gen, ref):
        if len(fs) < 2:
            raise DataError(f"ms_ssim: {fs.name} needs at least 2 images, got {len(fs)}")
    return ms_ssim_sets(gen, ref, st, device)


# the registered metric (``cxrbench evaluate``)


class MSSSIM(Metric):
    name = "ms_ssim"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ms_ssim": False}

    def skip_reason(self, ctx: EvalContext) -> str | None:
        for fs in (ctx.gen, ctx.ref):
            if fs.load_images is None:
                return f"{fs.name}: images are not available to decode (features only)"
            if len(fs) < 2:
                return f"{fs.name}: needs at least 2 images, got {len(fs)}"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        return {"ms_ssim": ms_ssim_sets(ctx.gen, ctx.ref, MetricSettings.from_config(ctx.config), ctx.device)}
