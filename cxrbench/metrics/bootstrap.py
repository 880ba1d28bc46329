"""Bootstrap confidence intervals and the real-vs-real split, shared by every metric."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@contextmanager
def one_torch_thread(device: str = "cpu") -> Iterator[None]:
    """Torch on one CPU thread for a metric's replicate loop (restored after).

    The loops alternate small torch ops with numpy / LAPACK calls. With more torch threads, libgomp's workers
    spin between parallel regions and starve OpenBLAS: FID's 200 replicates at 300 x 128 vs 599 x 128 took
    9.2 s with 2 threads and 0.8 s with 1 on this project's 2-core machines (same values)."""
    if not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
    value: float | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI over resamples (with replacement) of ``range(n)``.

    For statistics that are means of per-row values (AUROC deltas, MS-SSIM, re-identification): their
    bootstrap distribution is centred on the estimate, and the percentile interval is the standard one.
    Set-level statistics of two samples go through ``two_sample_bootstrap``. ``value`` is accepted for
    backward compatibility and unused. Returns None when ``n_boot`` is 0 or ``n`` < 2.
    """
    if n_boot <= 0 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


#: replicates per call of a statistic's ``many(igs, irs)`` (when it has one): a batched statistic reads its
#: state once per batch rather than once per replicate
BATCH = 25

#: interval methods ``two_sample_bootstrap`` knows
CI_METHODS = ("basic", "percentile", "centred")


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    #: "basic" (2 value - upper/lower replicate quantile) or "percentile", and what was resampled
    method: str
    #: mean of the replicates minus the estimate: the bootstrap's estimate of the estimator's bias
    bias: float
    n_boot: int

    @property
    def ci(self) -> tuple[float, float]:
        return self.lo, self.hi


def two_sample_bootstrap(
    stat: Callable[[np.ndarray, np.ndarray | None], float],
    n_gen: int,
    n_ref: int | None,
    value: float,
    *,
    n_boot: int,
    seed: int = 0,
    alpha: float = 0.05,
    method: str = "basic",
) -> Interval | None:
    """Bootstrap both samples independently: ``stat(idx_gen, idx_ref)`` on ``n_boot`` pairs of resamples.

    The reference is a finite sample too, so its variability belongs in the interval (``n_ref`` None: the
    reference is fixed, e.g. given as statistics, and ``stat`` gets ``None`` for it). ``basic`` reflects the
    replicate quantiles about the estimate, ``[2 v - q(1 - a/2), 2 v - q(a/2)]``, which carries the
    bootstrap's first-order bias correction (FID, FD_inf, label distances are biased upward at finite N);
    ``percentile`` takes the quantiles as they are (unbiased statistics such as KID with distinct-pair
    replicates). ``centred`` shifts the percentile interval so the replicates' median sits on the estimate:
    for statistics that are unbiased for their own N-dependent target but whose replicates are pulled by
    the resample's duplicated rows rather than by any bias of the estimator (kNN balls: PRDC). The choice
    per metric comes from the coverage benchmark (tests/benchmarks/coverage.py). A ``stat`` with a
    ``many(igs, irs)`` attribute gets ``BATCH`` replicates per call (``irs`` all None for a fixed reference),
    the same draws in the same order.
    """
    if method not in CI_METHODS:
        raise ValueError(f"CI method {method!r}: expected one of {CI_METHODS}")
    if n_boot <= 0 or n_gen < 2 or (n_ref is not None and n_ref < 2) or not np.isfinite(value):
        return None
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    many = getattr(stat, "many", None)  # replicates in batches (same draws, same order): see kid.py
    step = BATCH if many is not None else 1
    for b0 in range(0, n_boot, step):
        draws = []
        for _ in range(min(step, n_boot - b0)):
            ig = rng.integers(0, n_gen, size=n_gen)
            draws.append((ig, None if n_ref is None else rng.integers(0, n_ref, size=n_ref)))
        if step > 1:
            vals[b0 : b0 + len(draws)] = many([ig for ig, _ in draws], [ir for _, ir in draws])
        else:
            vals[b0] = stat(*draws[0])
    what = "both sets" if n_ref is not None else "generated set; reference fixed"
    return interval_from_replicates(vals, value, alpha=alpha, method=method, what=what)


def interval_from_replicates(vals, value: float, *, alpha: float = 0.05, method: str = "basic",
                             what: str = "both sets", inflate: float = 1.0) -> Interval | None:
    """The ``method`` interval (see ``two_sample_bootstrap``) from replicate values; None if most are not finite.

    ``inflate`` (centred only) widens the interval about the value by that factor, for a statistic whose
    replicates miss a known source of variance (PRDC density: the reference's kNN radii stay fixed).
    """
    vals = np.asarray(vals, dtype=np.float64)
    n_boot = vals.size
    vals = vals[np.isfinite(vals)]
    if vals.size < max(2, n_boot // 2):
        return None
    q_lo, q_hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    if method == "basic":
        lo, hi = 2 * value - q_hi, 2 * value - q_lo
    elif method == "centred":
        med = float(np.median(vals))
        lo, hi = value + inflate * (q_lo - med), value + inflate * (q_hi - med)
    else:
        lo, hi = q_lo, q_hi
    if inflate != 1.0:
        method = f"{method} x{inflate:g}"
    return Interval(float(lo), float(hi), f"{method} bootstrap ({what})", float(vals.mean() - value), int(vals.size))
