"""FD_inf (Chong & Forsyth 2020, "Effectively unbiased FID"): the Frechet distance extrapolated to an
infinite generated set.

One file: the estimators ``fd_inf_fixed_ref`` and ``fd_inf_two_sample``, the functional entry
``fd_inf(real=, fake=)`` (re-exported by ``functional``) and the registered ``fd_inf`` metric (``FDInf``).

FD computed from ``n`` generated rows is biased upward by roughly ``b / n``. ``fd_inf_fixed_ref`` takes one seeded
permutation of the generated rows and computes the FD of its first ``n`` rows against the full reference
statistics for ``points`` sizes evenly spaced from ``min_fraction * N`` to ``N`` (nested subsets: the fit
is smooth, and running sums give every subset's statistics in one pass). It fits ``FD = FD_inf + b / n``
by least squares and reports the intercept. The reference-size bias is not removed (the reference is
fixed). ``fd_inf_two_sample`` (what the registered metric and the functional ``fd_inf`` use) shrinks both
sets by a common fraction, which removes the reference's 1/N bias too.

Bootstrap: a replicate computes FD_inf on the *distinct* rows of both resamples (about 63% of N). FD_inf
removes the dependence on the set size, while duplicated rows would bias the covariance; the price is a
CI wider than necessary by about 1/sqrt(0.632). Each replicate costs ``points`` eigen-decompositions, so
FD_inf gets ``fd_inf_n_bootstrap`` replicates rather than ``n_bootstrap``. The 1/N model needs subsets
well above the feature dimension: below ``FD_INF_MIN_ROWS_PER_DIM`` rows per dimension in the
smallest subset the result is flagged (``valid`` False, no interval), and a negative intercept is clipped
to 0 and flagged.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..config import MetricSettings
from ..seeding import numpy_rng
from .base import EvalContext, FeaturePair, FigureSpec, MetricValue, TwoSampleMetric
from .bootstrap import Interval
from .common import check_pair, fd_validity, float64_device, one_thread, replicates, with_interval
from .fid import BootstrapFD, TwoSampleFD, covariance_factor, frechet_distance

#: replicates of ``fd_inf(..., ci=True)`` (each costs ``points`` eigendecompositions)
FD_INF_N_BOOTSTRAP = MetricSettings.fd_inf_n_bootstrap
#: FD_inf's 1/N model needs its smallest subsets well above D (Chong & Forsyth fit 5k-50k at D = 2048)
FD_INF_MIN_ROWS_PER_DIM = 1.0


def nested_stats(x: torch.Tensor, sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mean and unbiased covariance of every prefix ``x[:s]`` (as ``gaussian_stats`` gives), in one pass.

    Running sums over the prefixes cost one ``N D^2`` pass instead of one per size. Rows are first
    centred on the full-set mean (covariance does not change; the sums' cancellation shrinks).
    """
    center = x.mean(0)
    out, s1, s2, start = [], torch.zeros_like(center), 0.0, 0
    for s in sizes:
        xc = x[start:s] - center
        s1 = s1 + xc.sum(0)
        s2 = s2 + xc.T @ xc
        start = s
        m = s1 / s
        out.append((m + center, (s2 - s * torch.outer(m, m)) / (s - 1)))
    return out


def fd_inf_fixed_ref(
    gen,
    ref_stats: tuple,
    *,
    points: int = 15,
    min_fraction: float = 0.2,
    seed: int = 0,
    factor_ref=None,
) -> tuple[float, dict]:
    """``(FD_inf, details)``; details hold the subset sizes, their FDs and the fitted slope ``b``.

    ``ref_stats`` is ``gaussian_stats(reference)``; ``factor_ref`` (``covariance_factor`` of its covariance,
    computed here when not given) is shared by every subset, so each FD costs one symmetric eigenvalue problem.
    """
    n = len(gen)
    sizes = np.unique(np.linspace(max(2, round(min_fraction * n)), n, points).astype(int))
    if len(sizes) < 3:
        raise ValueError(f"FD_inf needs at least 3 distinct subset sizes; {n} generated rows give {len(sizes)}")
    mu_r, sigma_r = (torch.as_tensor(v, dtype=torch.float64) for v in ref_stats)
    if factor_ref is None:
        factor_ref = covariance_factor(sigma_r)
    x = torch.as_tensor(np.asarray(gen) if not torch.is_tensor(gen) else gen, dtype=torch.float64, device=mu_r.device)
    perm = torch.as_tensor(numpy_rng(seed).permutation(n), device=x.device)
    if int(sizes[0]) < x.shape[1]:
        # subsets smaller than the feature dimension: BootstrapFD solves each as an s x s Gram eigenproblem
        # (same FD; D = 2048 and N = 500: ~15 small problems instead of 15 of size 2048)
        fd_of = BootstrapFD(x[perm], mu_r, sigma_r, factor_ref)
        fds = np.array([fd_of(np.arange(int(k))) for k in sizes])
    else:
        fds = np.array([frechet_distance(mu_r, sigma_r, mu, cov, factor1=factor_ref)
                        for mu, cov in nested_stats(x[perm], sizes)])
    slope, intercept = np.polyfit(1.0 / sizes, fds, 1)
    return float(intercept), {"sizes": sizes.tolist(), "fd": fds.tolist(), "slope": float(slope)}


def fd_inf_two_sample(gen, ref, *, points: int = MetricSettings.fd_inf_points,
           min_fraction: float = MetricSettings.fd_inf_min_fraction, seed: int = 0,
                      device=None) -> tuple[float, dict]:
    """FD_inf with both sets finite: FD of nested subsets holding the same fraction ``t`` of each set, fitted
    as ``FD_inf + b / t``. FD's bias is ``c_g / N_g + c_r / N_r`` to first order, so a common fraction
    removes both terms (the generated-only fit leaves the reference's). Each point is one ``TwoSampleFD``
    evaluation on index prefixes (a small Gram eigenproblem when N < D).
    """
    n_g, n_r = len(gen), len(ref)
    fractions = np.unique(np.linspace(min_fraction, 1.0, points))
    sizes = [(max(2, round(t * n_g)), max(2, round(t * n_r))) for t in fractions]
    if len({s for s, _ in sizes}) < 3:
        raise ValueError(f"FD_inf needs at least 3 distinct subset sizes; {n_g} generated rows give fewer")
    rng = numpy_rng(seed)
    pg, pr = rng.permutation(n_g), rng.permutation(n_r)
    fd_of = TwoSampleFD(np.asarray(gen)[pg], np.asarray(ref)[pr], device=device)
    fds = np.array([fd_of(np.arange(a), np.arange(b)) for a, b in sizes])
    t = np.array([a / n_g for a, _ in sizes])
    slope, intercept = np.polyfit(1.0 / t, fds, 1)
    # slope per 1/N_gen (FD = FD_inf + slope / n for n generated rows), as the generated-only fit reports it
    return float(intercept), {"sizes": [a for a, _ in sizes], "ref_sizes": [b for _, b in sizes],
                              "fd": fds.tolist(), "slope": float(slope) * n_g}


# the functional entry (``functional.fd_inf``)


@one_thread
def fd_inf(*, real, fake, points: int = MetricSettings.fd_inf_points,
           min_fraction: float = MetricSettings.fd_inf_min_fraction, ci: bool = False,
           n_bootstrap: int | None = None, seed: int = MetricSettings.seed, alpha: float = MetricSettings.alpha,
           device: str = "cpu") -> MetricValue:
    """FD_inf extrapolated in both set sizes; on request a scaled centred-bootstrap interval over both sets.

    Refused (``DataError``) with fewer than 10 rows per set. Flagged (``valid=False``) when the smallest
    fitted subset has fewer than ``FD_INF_MIN_ROWS_PER_DIM`` rows per dimension: the 1/N model does not hold
    there. A negative intercept is never reported as the estimate: the value is clipped at 0 and flagged.
    """
    n_bootstrap = replicates(n_bootstrap, ci, FD_INF_N_BOOTSTRAP)
    g, r = check_pair(fake, real, min_rows=10, what="fd_inf")
    kw = dict(points=points, min_fraction=min_fraction, seed=seed, device=device)
    raw, details = fd_inf_two_sample(g, r, **kw)
    smallest = min(details["sizes"][0], details["ref_sizes"][0])
    valid, reason = fd_validity(smallest, g.shape[1], FD_INF_MIN_ROWS_PER_DIM, "fd_inf smallest fitted subset",
                                 "the 1/N model of the extrapolation does not hold (measured: at N/D = 1 it "
                                 "overshoots the population FD ~9x)")
    if valid and raw < 0:
        valid, reason = False, "fd_inf: the 1/N fit extrapolated below 0 (noise exceeds the distance); clipped to 0"
    details["fit_intercept"] = raw
    mv = MetricValue(max(raw, 0.0), False, None, len(g), len(r), extra=details, valid=valid, reason=reason)
    if smallest < FD_INF_MIN_ROWS_PER_DIM * g.shape[1]:  # the model does not hold: no interval
        return mv

    if n_bootstrap <= 0:
        return mv
    # replicates on the distinct rows of both resamples (duplicated rows would bias the covariances the fit
    # extrapolates); ~63% of the rows make each replicate's spread 1/sqrt(0.632) too wide, so the
    # median-centred interval is scaled back by sqrt(0.632) (without it: coverage 1.00, width 4x the truth)
    rng = np.random.default_rng(seed)
    reps = np.array([fd_inf_two_sample(g[np.unique(rng.integers(0, len(g), len(g)))],
                                       r[np.unique(rng.integers(0, len(r), len(r)))], **kw)[0]
                     for _ in range(n_bootstrap)])
    q_lo, med, q_hi = np.quantile(reps, [alpha / 2, 0.5, 1 - alpha / 2])
    shrink = (1 - np.exp(-1.0)) ** 0.5
    iv = Interval(raw + shrink * (q_lo - med), raw + shrink * (q_hi - med),
                  "centred bootstrap on distinct rows, scaled by sqrt(0.632) (both sets)", 0.0, n_bootstrap)
    return with_interval(mv, iv, bias_corrected=False, lower=0.0)


# the registered metric (``cxrbench evaluate``)


class FDInf(TwoSampleMetric):
    name = "fd_inf"
    version = "2"  # 2: extrapolates both set sizes; clipped at 0; flagged below 1 row per dim
    outputs: ClassVar[dict[str, bool]] = {"fd_inf": False}

    def skip_reason(self, ctx: EvalContext) -> str | None:
        if len(ctx.gen) < 10 or len(ctx.ref) < 20:
            return f"FD_inf needs at least 10 generated and 20 reference images, got {len(ctx.gen)}, {len(ctx.ref)}"
        return None

    @staticmethod
    def _kw(pair: FeaturePair) -> dict:
        st = pair.settings
        return dict(points=st.fd_inf_points, min_fraction=st.fd_inf_min_fraction, seed=st.seed,
                    device=float64_device(pair.device))

    def estimate(self, pair: FeaturePair) -> MetricValue:
        return fd_inf(real=pair.ref, fake=pair.gen, n_bootstrap=pair.settings.fd_inf_n_bootstrap,
                      alpha=pair.settings.alpha, **self._kw(pair))

    def point(self, x, y, pair: FeaturePair) -> float:
        return max(0.0, fd_inf_two_sample(x, y, **self._kw(pair))[0])

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        sizes, fd = value.get("sizes"), value.get("fd")
        if not (sizes and fd and len(sizes) == len(fd)):
            return []
        return [FigureSpec("fd_against_1_over_n", key, f"fd_{key}", f"{key}: FD against 1/N",
                           "the intercept at 1/N = 0 is FD_inf", value)]
