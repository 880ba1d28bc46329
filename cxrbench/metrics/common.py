"""The small helpers every metric module shares.

``bootstrap_interval`` is ``bootstrap.bootstrap_ci`` (percentile, over the generated set) clipped to the
metric's range, for statistics that are means of per-sample values (MS-SSIM, re-identification). Set-level
statistics of two samples (FID, KID, PRDC, KS, label distances) resample both sets through
``bootstrap.two_sample_bootstrap``, with the method the coverage benchmark chose (``functional.py``).
``matched_floor`` gives every metric its real-vs-real floor and its own value at the floor's sizes.
``check_pair``, ``replicates``, ``one_thread`` and ``fd_validity`` are the functional entries' shared argument
handling.

The knobs themselves, ``MetricSettings``, live in ``cxrbench.config`` nested in ``EvalConfig``;
``MetricSettings.from_config(ctx.config)`` is what every metric reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from ..config import MetricSettings
from ..data.splits import real_vs_real_split
from ..errors import DataError
from ..features.base import FeatureKind
from .base import EvalContext, FeatureSet
from .bootstrap import bootstrap_ci, one_torch_thread


def bootstrap_interval(
    stat: Callable[[np.ndarray], float],
    n: int,
    value: float,
    st: MetricSettings,
    *,
    n_boot: int | None = None,
    lower: float | None = None,
    upper: float | None = None,
) -> tuple[float, float] | None:
    """Bootstrap CI of ``stat`` over ``n`` generated rows, centred on ``value``, clamped to the metric's range."""
    ci = bootstrap_ci(stat, n, n_boot=st.n_bootstrap if n_boot is None else n_boot, seed=st.seed, alpha=st.alpha,
                      value=value if np.isfinite(value) else None)
    if ci is None:
        return ci
    lo, hi = ci
    if lower is not None:
        lo, hi = max(lo, lower), max(hi, lower)
    if upper is not None:
        lo, hi = min(lo, upper), min(hi, upper)
    return float(lo), float(hi)


def matched_floor(fn: Callable, gen, ref, st: MetricSettings, patient_ids=None) -> tuple:
    """``(floor, value_at_floor_n, [n_a, n_b])``: the real-vs-real floor and this metric at the same sizes.

    The floor compares two disjoint halves of the reference (patient-wise when ids are known); it is
    computed at half the reference size, so a set-size-dependent metric (FID, FD_inf, label JS, coverage)
    must be held against it at those sizes: ``fn`` of ``n_a`` generated rows against the same half ``b``.
    The first half is cut to ``n_a = min(|a|, N_gen)`` so both numbers are at exactly ``(n_a, n_b)``.
    Either number is None where ``fn`` raises on the smaller sets.
    """
    a, b = real_vs_real_split(len(ref), st.seed, patient_ids)
    n_a = min(len(a), len(gen))
    rng = np.random.default_rng(st.seed)
    a = np.sort(rng.choice(a, size=n_a, replace=False)) if n_a < len(a) else a
    sub = np.sort(rng.choice(len(gen), size=n_a, replace=False))

    def safe(x, y):
        try:
            return fn(x, y)
        except (ValueError, DataError):
            return None

    return safe(ref[a], ref[b]), safe(gen[sub], ref[b]), [int(n_a), len(b)]


def with_floor(mv, floor, matched, sizes):
    """Set a MetricValue's floor fields: ``real_vs_real``, ``real_vs_real_n``, ``value_at_real_vs_real_n``."""
    mv.real_vs_real = floor
    mv.extra["real_vs_real_n"] = sizes
    mv.extra["value_at_real_vs_real_n"] = matched
    return mv


def with_interval(mv, iv, *, bias_corrected: bool, lower=None, upper=None):
    """Put a ``bootstrap.Interval`` on ``mv``, clipped to the metric's range, with the bias-corrected value."""
    if iv is None:
        return mv
    lo, hi = iv.ci
    if lower is not None:
        lo, hi = max(lo, lower), max(hi, lower)
    if upper is not None:
        lo, hi = min(lo, upper), min(hi, upper)
    mv.ci, mv.ci_method = (float(lo), float(hi)), iv.method
    if bias_corrected:
        bc = mv.value - iv.bias
        mv.value_bias_corrected = float(bc if lower is None else max(bc, lower))
    return mv


def float64_device(device) -> str:
    """The device for float64 work: MPS has no float64, so it falls back to the CPU."""
    return "cpu" if str(device).startswith("mps") else str(device)


def features_of(fs: FeatureSet, extractor: str) -> np.ndarray:
    """``(N, D)`` features of one set, or a DataError naming the set and the missing extractor."""
    try:
        x = fs.features[extractor]
    except KeyError:
        raise DataError(
            f"{fs.name}: no {extractor!r} features (have {sorted(fs.features)}); "
            f"run the evaluation with --extractors including {extractor}"
        ) from None
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{fs.name}: {extractor!r} features must be (N, D), got shape {x.shape}")
    return x


def dimension_names(ctx: EvalContext, extractor: str, d: int) -> list[str]:
    """Names of an extractor's output dimensions: the spec's ``feature_names`` (the engine records every
    extractor's ``feature_names``: pathologies, pixel statistics), else ``dim_<i>``."""
    names = (ctx.extractors.get(extractor) or {}).get("feature_names")
    if names and len(names) == d:
        return list(names)
    return [f"dim_{i}" for i in range(d)]


#: label classifiers in order of preference when several ran (the published one first)
CLASSIFIERS = ("xrv-classifier", "cxr128-classifier", "cxr64-classifier")


def classifier_of(ctx: EvalContext) -> str | None:
    """The label classifier (an extractor of kind "probabilities") whose outputs the label metrics read."""
    ran = [n for n, s in ctx.extractors.items() if s.get("kind") == FeatureKind.PROBABILITIES and n in ctx.gen.features]
    ran.sort(key=lambda n: CLASSIFIERS.index(n) if n in CLASSIFIERS else len(CLASSIFIERS))
    return ran[0] if ran else None


def missing_classifier(ctx: EvalContext, sets=("gen", "ref")) -> str | None:
    """A skip reason when no label classifier ran on every set in ``sets``."""
    c = classifier_of(ctx)
    if c is None:
        return f"needs a label classifier extractor ({' or '.join(CLASSIFIERS)}; add one to --extractors)"
    return missing_features(ctx, [c], sets=sets)


def missing_features(ctx: EvalContext, extractors, sets=("gen", "ref")) -> str | None:
    """A skip reason when some set lacks some extractor's features, else None."""
    for s in sets:
        fs = getattr(ctx, s)
        if fs is None:
            return f"no {s} set"
        for e in extractors:
            if e not in fs.features:
                return f"{fs.name} has no {e!r} features"
    return None


def gray_image_4d(im, fs: FeatureSet) -> torch.Tensor:
    """One image from ``fs.load_images`` as a float32 ``(1, 1, H, W)`` tensor; anything but one grey channel is
    a DataError naming the set (a metric that reads pixels, e.g. MS-SSIM or re-identification, needs them)."""
    im = torch.as_tensor(im, dtype=torch.float32)
    while im.ndim < 4:
        im = im.unsqueeze(0)
    if im.shape[:2] != (1, 1):
        raise DataError(f"{fs.name}: load_images must give (1, H, W) grayscale images, got {tuple(im.shape)}")
    return im


# the functional entries' shared argument handling (``functional.py`` and the metric modules)


def one_thread(fn):
    """Run a metric with torch on one CPU thread (``bootstrap.one_torch_thread``: replicate loops ~10x faster)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_torch_thread(kwargs.get("device", "cpu")):
            return fn(*args, **kwargs)

    return wrapper


def replicates(n_bootstrap: int | None, ci: bool, default: int = MetricSettings.n_bootstrap) -> int:
    """Bootstrap replicates to run: ``n_bootstrap`` when given, else ``default`` with ``ci=True``, else 0."""
    if n_bootstrap is not None:
        if n_bootstrap < 0:
            raise DataError(f"n_bootstrap={n_bootstrap}: expected 0 (no interval) or more replicates")
        return int(n_bootstrap)
    return default if ci else 0


def check_pair(gen, ref, *, min_rows: int = 2, what: str = "metric",
               names: tuple[str, str] = ("fake (generated)", "real (reference)")) -> tuple[np.ndarray, np.ndarray]:
    """Both sets (generated, reference) as float64 ``(N, D)`` arrays with the same D, finite, at least
    ``min_rows`` rows each; messages name them by their keywords (``names``: ``fake`` and ``real``)."""
    out = []
    for name, x in zip(names, (gen, ref)):
        x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
        if x.ndim != 2:
            raise DataError(f"{what}: {name} features must be a 2-d (N, D) array, got shape {x.shape}")
        if len(x) < min_rows:
            raise DataError(f"{what}: needs at least {min_rows} {name} rows, got {len(x)}")
        if not np.isfinite(x).all():
            raise DataError(f"{what}: {name} features contain NaN or inf (row {int(np.argmin(np.isfinite(x).all(1)))});"
                            " drop or fix those rows")
        out.append(x)
    if out[0].shape[1] != out[1].shape[1]:
        raise DataError(f"{what}: feature dimensions differ: {out[0].shape[1]} ({names[0].split()[0]}) vs "
                        f"{out[1].shape[1]} ({names[1].split()[0]}); use the same extractor for both sets")
    return out[0], out[1]


def image_set(images, name: str) -> FeatureSet:
    """A set of images given as an array or tensor (``(N, H, W)`` or ``(N, 1, H, W)``, grey, values in [0, 1])
    as the ``FeatureSet`` the pixel-reading metrics decode from: the functional entries of MS-SSIM and
    re-identification run the registered metric's own code on it."""
    x = torch.as_tensor(images.detach().cpu() if hasattr(images, "detach") else np.asarray(images), dtype=torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise DataError(f"{name}: images must be a (N, H, W) or (N, 1, H, W) grey array, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"{name}: no images")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(f"{name}: image values must be finite and in [0, 1] (divide 8-bit images by 255)")
    return FeatureSet(name, [f"{name}[{i}]" for i in range(len(x))], [""] * len(x), {},
                      load_images=lambda idx: [x[i] for i in idx])


def fd_validity(n: int, d: int, per_dim: float, what: str, why: str) -> tuple[bool, str | None]:
    if n < per_dim * d:
        return False, f"{what}: {n} rows for {d}-d features (below {per_dim:g} per dimension): {why}"
    return True, None
