"""Metrics as plain functions of two ``(N, D)`` feature arrays, for users with their own embeddings.

    from cxrbench.metrics import functional as F
    r = F.fid(real=real_features, fake=generated_features)           # point estimate, ~ms
    r = F.fid(real=real_features, fake=generated_features, ci=True)  # + 95% interval (N_BOOTSTRAP replicates)
    r.value, r.ci, r.valid, r.reason, r.value_bias_corrected

The two sets are keyword-only, ``real=`` (the reference) and ``fake=`` (the generated set), in every function:
PRDC's precision and recall swap when the sets do, and the ``prdc`` package takes them positionally as
``compute_prdc(real_features, fake_features)`` while torchmetrics updates with ``real=True/False``; keywords
make a port from either explicit, and a positional call fails (``TypeError``) instead of silently swapping.
``F.prdc(real=x, fake=y)`` equals ``prdc.compute_prdc(x, y)`` (tested). FID, KID, FD_inf and KS take the same
keywords though their values are symmetric, so there is one convention to remember.

Intervals are on request: by default each function returns the point estimate alone (no bootstrap, ``ci``
None). ``ci=True`` runs ``N_BOOTSTRAP`` replicates (``EvalConfig.n_bootstrap``'s default, the count the
coverage benchmark measured; FD_inf: ``MetricSettings.fd_inf_n_bootstrap``), ``n_bootstrap=N`` runs N. The
cost grows linearly with the replicates: every FID replicate is an eigendecomposition of a D x D matrix,
every KID replicate re-weights its kernel blocks (README "Functional API" for measured times).

Each function returns a ``MetricValue`` (``prdc`` a dict of four) or raises ``DataError`` for inputs it
refuses (not 2-d, different D, NaN/inf, too few rows). The registered metrics (``cxrbench evaluate``) call
these same functions. Intervals resample both sets (the reference is a sample too) with the method the
coverage benchmark (``tests/benchmarks/coverage.py``) found to reach nominal coverage for that metric:
basic bootstrap for the biased distances (FID, label distances); for KID a normal interval with the
U-statistic variance (no replicates); a scaled distinct-row interval for FD_inf; centred percentile for
precision, recall, density, coverage (replicates recompute the kNN radii of both resampled sets) and KS
(whose replicates are pulled down by the resamples' duplicated rows, not by estimator bias). The coverage
on real features at the default protocol's sizes is measured by ``tests/benchmarks/interval_coverage.py``;
an interval outside 95 +/- 3% there carries ``ci_coverage`` in results (``coverage_table``). Where the benchmark found no method that covers (FID and FD_inf with too
few samples per feature dimension), the result has ``valid = False``, a ``reason`` and no interval.
"""

from __future__ import annotations

import numpy as np

from .base import MetricValue
from .bootstrap import Interval, two_sample_bootstrap
from .common import MetricSettings, check_pair, fd_validity, one_thread, replicates, with_interval
from .fd_inf import fd_inf_two_sample
from .fid import FD_MIN_ROWS_PER_DIM, fid
from .kid import KID_ANALYTIC_MAX_ROWS, kid
from .ks import WeightedKS, benjamini_hochberg, ks_battery, ks_pvalues_fast, ks_statistics
from .prdc import DENSITY_INFLATE, prdc

# fid, kid and prdc live with their estimators (one metric, one file) and are re-exported here
__all__ = [
    "DENSITY_INFLATE",
    "FD_INF_MIN_ROWS_PER_DIM",
    "FD_INF_N_BOOTSTRAP",
    "FD_MIN_ROWS_PER_DIM",
    "KID_ANALYTIC_MAX_ROWS",
    "N_BOOTSTRAP",
    "check_pair",
    "fd_inf",
    "fid",
    "kid",
    "ks_features",
    "prdc",
    "replicates",
]

#: replicates of ``ci=True``: ``EvalConfig.n_bootstrap``'s default (read through ``MetricSettings``, which
#: takes it from there), so the CLI, the harness and this API share one default. The coverage benchmark
#: reached nominal coverage with 200; more replicates narrow the Monte Carlo error of the 2.5% quantiles,
#: not their bias
N_BOOTSTRAP = MetricSettings.n_bootstrap
#: replicates of ``fd_inf(..., ci=True)`` (each costs ``points`` eigendecompositions)
FD_INF_N_BOOTSTRAP = MetricSettings.fd_inf_n_bootstrap
#: FD_inf's 1/N model needs its smallest subsets well above D (Chong & Forsyth fit 5k-50k at D = 2048)
FD_INF_MIN_ROWS_PER_DIM = 1.0


@one_thread
def fd_inf(*, real, fake, points: int = 15, min_fraction: float = 0.2, ci: bool = False,
           n_bootstrap: int | None = None, seed: int = 0, alpha: float = 0.05, device: str = "cpu") -> MetricValue:
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


@one_thread
def ks_features(*, real, fake, names: list[str] | None = None, q: float = 0.05, ci: bool = False,
                n_bootstrap: int | None = None, seed: int = 0, alpha: float = 0.05, device: str = "cpu",
                ci_method: str = "centred") -> MetricValue:
    """Fraction of dimensions a per-dimension KS test rejects (Benjamini-Hochberg at ``q``); on request a
    centred interval over both sets."""
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, what="ks_features")
    res = ks_battery(g, r, names, q=q)
    mv = MetricValue(res.fraction, False, None, len(g), len(r), extra=res.extra(q))
    if n_bootstrap <= 0:
        return mv

    if g.shape[1] * (len(g) + len(r)) <= 2**26:  # position tables of 2 x 512 MB at most
        wks = WeightedKS(g, r, device=device)

        def stat(ig, ir):
            d = wks(np.bincount(ig, minlength=len(g)), np.bincount(ir, minlength=len(r)))
            return float(benjamini_hochberg(ks_pvalues_fast(d, len(ig), len(ir)), q).mean())
    else:
        def stat(ig, ir):
            d = ks_statistics(g[ig], r[ir], device=device)
            return float(benjamini_hochberg(ks_pvalues_fast(d, len(ig), len(ir)), q).mean())

    iv = two_sample_bootstrap(stat, len(g), len(r), res.fraction, n_boot=n_bootstrap, seed=seed, alpha=alpha,
                              method=ci_method)
    return with_interval(mv, iv, bias_corrected=False, lower=0.0, upper=1.0)
