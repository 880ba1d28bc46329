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

import functools

import numpy as np
from scipy.stats import norm

from ..errors import DataError
from . import knn
from .base import MetricValue
from .bootstrap import Interval, interval_from_replicates, one_torch_thread, two_sample_bootstrap
from .common import MetricSettings, with_interval
from .fd_inf import fd_inf_two_sample
from .fid import BootstrapFD, TwoSampleFD, _as64, covariance_factor, frechet_distance, gaussian_stats
from .kid import kid as kid_subsets
from .kid import mmd2_u_variance
from .ks import WeightedKS, benjamini_hochberg, ks_battery, ks_pvalues_fast, ks_statistics
from .prdc import RECOMPUTE_MAX_ROWS, PRDCReplicates
from .prdc import prdc as prdc_result

#: replicates of ``ci=True``: ``EvalConfig.n_bootstrap``'s default (read through ``MetricSettings``, which
#: takes it from there), so the CLI, the harness and this API share one default. The coverage benchmark
#: reached nominal coverage with 200; more replicates narrow the Monte Carlo error of the 2.5% quantiles,
#: not their bias
N_BOOTSTRAP = MetricSettings.n_bootstrap
#: replicates of ``fd_inf(..., ci=True)`` (each costs ``points`` eigendecompositions)
FD_INF_N_BOOTSTRAP = MetricSettings.fd_inf_n_bootstrap
#: FID's and FD_inf's intervals cover only when each set has at least this many rows per feature dimension
#: (measured: tests/benchmarks/coverage.py; below it the bias of the rank-deficient covariance dominates)
FD_MIN_ROWS_PER_DIM = 2.0
#: PRDC density interval widening where the replicates keep the full-set kNN radii (sets above
#: ``prdc.RECOMPUTE_MAX_ROWS``; calibrated with tests/benchmarks/coverage.py)
DENSITY_INFLATE = 1.3
#: KID's interval from the U-statistic variance up to this many rows per set (three N x N float64 kernels:
#: 0.5 GB at 4096); above, the bootstrap
KID_ANALYTIC_MAX_ROWS = 4096
#: FD_inf's 1/N model needs its smallest subsets well above D (Chong & Forsyth fit 5k-50k at D = 2048)
FD_INF_MIN_ROWS_PER_DIM = 1.0


def _one_thread(fn):
    """Run a metric with torch on one CPU thread (``bootstrap.one_torch_thread``: replicate loops ~10x faster)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_torch_thread(kwargs.get("device", "cpu")):
            return fn(*args, **kwargs)

    return wrapper


def replicates(n_bootstrap: int | None, ci: bool, default: int = N_BOOTSTRAP) -> int:
    """Bootstrap replicates to run: ``n_bootstrap`` when given, else ``default`` with ``ci=True``, else 0."""
    if n_bootstrap is not None:
        if n_bootstrap < 0:
            raise DataError(f"n_bootstrap={n_bootstrap}: expected 0 (no interval) or more replicates")
        return int(n_bootstrap)
    return default if ci else 0


def check_pair(gen, ref, *, min_rows: int = 2, what: str = "metric") -> tuple[np.ndarray, np.ndarray]:
    """Both sets (generated, reference) as float64 ``(N, D)`` arrays with the same D, finite, at least
    ``min_rows`` rows each; messages name them by their keywords, ``fake`` and ``real``."""
    out = []
    for name, x in (("fake (generated)", gen), ("real (reference)", ref)):
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
        raise DataError(f"{what}: feature dimensions differ: {out[0].shape[1]} (fake) vs {out[1].shape[1]}"
                        " (real); use the same extractor for both sets")
    return out[0], out[1]


def _fd_validity(n: int, d: int, per_dim: float, what: str, why: str) -> tuple[bool, str | None]:
    if n < per_dim * d:
        return False, f"{what}: {n} rows for {d}-d features (below {per_dim:g} per dimension): {why}"
    return True, None


@_one_thread
def fid(*, real=None, fake, real_stats: dict | None = None, ci: bool = False, n_bootstrap: int | None = None,
        seed: int = 0, alpha: float = 0.05, device: str = "cpu") -> MetricValue:
    """FID; on request a basic-bootstrap interval over both sets, and the bias-corrected estimate beside it.

    ``real_stats`` (``{"mu", "sigma", "n"}``) stands in for ``real`` when the reference is only known by its
    statistics; the interval then resamples the generated set alone (``ci_method`` says so).
    """
    gen, ref, ref_stats = fake, real, real_stats
    n_bootstrap = replicates(n_bootstrap, ci)
    if (ref is None) == (ref_stats is None):
        raise DataError("fid: pass exactly one of real= (features) and real_stats= (mu, sigma, n)")

    if ref_stats is None:
        g, r = check_pair(gen, ref, what="fid")
        n_ref = len(r)
        mu_r, s_r = gaussian_stats(r, device=device)
        factor_r = covariance_factor(s_r, r)
    else:
        g, _ = check_pair(gen, gen, what="fid")
        mu_r, s_r = _as64(ref_stats["mu"], device), _as64(ref_stats["sigma"], device)
        if mu_r.shape[0] != g.shape[1]:
            raise DataError(f"fid: reference statistics are {mu_r.shape[0]}-d, generated features {g.shape[1]}-d")
        n_ref, factor_r = int(ref_stats["n"]), covariance_factor(s_r)
    mu_g, s_g = gaussian_stats(g, device=device)
    value = frechet_distance(mu_r, s_r, mu_g, s_g, factor1=factor_r)
    valid, reason = _fd_validity(min(len(g), n_ref), g.shape[1], FD_MIN_ROWS_PER_DIM, "fid",
                                 "the rank-deficiency bias dominates and no bootstrap interval reaches 95% "
                                 "coverage; compare only at equal N")
    mv = MetricValue(value, False, None, len(g), n_ref, valid=valid, reason=reason)
    if ref_stats is None:
        stat, n_r = TwoSampleFD(g, r, device=device), n_ref
    else:
        one = BootstrapFD(_as64(g, device), mu_r, s_r, factor_r)
        stat, n_r = (lambda ig, ir: one(ig)), None
    iv = two_sample_bootstrap(stat, len(g), n_r, value, n_boot=n_bootstrap, seed=seed, alpha=alpha,
                              method="basic" if valid else "centred")
    if not valid:
        # no interval for the population FID (none covers); the replicates' spread about the value still
        # measures the noise of FID at this N, which is what comparisons at equal N (`cxrbench check`) need
        if iv is not None:
            mv.extra["ci_equal_n"] = [max(iv.lo, 0.0), iv.hi]
        return mv
    return with_interval(mv, iv, bias_corrected=True, lower=0.0)


@_one_thread
def kid(*, real, fake, subset_size: int = 1000, n_subsets: int = 100, boot_subsets: int = 100,
        ci: bool = False, n_bootstrap: int | None = None, seed: int = 0, alpha: float = 0.05,
        device: str = "cpu") -> MetricValue:
    """KID (mean unbiased MMD^2 over subsets); on request an interval for the population MMD^2.

    Up to ``KID_ANALYTIC_MAX_ROWS`` rows per set the interval is normal with the U-statistic's variance
    (``kid.mmd2_u_variance``: no replicates, whatever ``n_bootstrap`` > 0 asks); the bootstrap of a nearly
    degenerate U-statistic (two close distributions) is not consistent, and its percentile intervals were
    1.3-1.7x too wide on real features there. Above, a percentile interval over distinct-pair replicates
    (both sets resampled when the whole kernels fit, N <= 8192; else the reference fixed).
    """
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, what="kid")
    analytic = max(len(g), len(r)) <= KID_ANALYTIC_MAX_ROWS
    # the kernel blocks are kept only for the replicates to reweight
    res = kid_subsets(g, r, subset_size=subset_size, n_subsets=n_subsets, seed=seed, device=device,
                      keep=boot_subsets if n_bootstrap > 0 and not analytic else 0)
    m = min(subset_size, len(g), len(r))
    mv = MetricValue(res.mean, False, None, len(g), len(r),
                     extra={"std": res.std, "subset_size": m, "subsets": n_subsets})
    if n_bootstrap <= 0:
        return mv
    if analytic:
        _, var = mmd2_u_variance(g, r, device=device)
        half = float(norm.ppf(1 - alpha / 2)) * var**0.5
        iv = Interval(res.mean - half, res.mean + half, "normal, U-statistic variance (both sets)", 0.0, 0)
        return with_interval(mv, iv, bias_corrected=False)
    if res.whole is None and not res.kept:
        return mv
    both = res.whole is not None

    def stat(ig, ir):
        cr = np.bincount(ir, minlength=len(r)) if both else None
        return res.reweighted(np.bincount(ig, minlength=len(g)), cr)

    stat.many = lambda igs, irs: res.reweighted_many(
        [np.bincount(i, minlength=len(g)) for i in igs],
        [np.bincount(i, minlength=len(r)) for i in irs] if both else None)

    iv = two_sample_bootstrap(stat, len(g), len(r) if both else None, res.mean, n_boot=n_bootstrap, seed=seed,
                              alpha=alpha, method="percentile")
    return with_interval(mv, iv, bias_corrected=False)


@_one_thread
def prdc(*, real, fake, k: int = 5, boot_candidates: int = 32, ci: bool = False, n_bootstrap: int | None = None,
         seed: int = 0, alpha: float = 0.05, device: str = "cpu", budget: int | None = None,
         ci_method: str | None = None) -> dict[str, MetricValue]:
    """Precision, recall, density, coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for
    Generative Models", 2020); on request intervals over both sets.

    Precision is the share of ``fake`` rows inside some ``real`` row's k-NN ball, recall the converse: the
    values of ``prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)``.

    Centred intervals: a resample holds ~63% distinct rows, which removes balls and pulls every replicate
    down without any bias in the estimator. Each replicate recomputes both sets' kNN radii with the
    resample's multiplicities (``prdc.PRDCReplicates``; sets above ``RECOMPUTE_MAX_ROWS`` keep the full-set
    radii). Measured coverage on real features: tests/benchmarks/interval_coverage.py (README
    "Reliability"). ``ci_method`` forces one method for all four.
    """
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, min_rows=k + 1, what="prdc")
    res = prdc_result(r, g, k=k, boot_candidates=boot_candidates, device=device,
                      budget=budget or knn.DEFAULT_BUDGET)
    vals = res.as_dict()
    out = {key: MetricValue(v, True, None, len(g), len(r), extra={"k": k}) for key, v in vals.items()}
    if n_bootstrap <= 0:
        return out
    # one pass of replicates serves all four values; every replicate recomputes the kNN radii of both
    # resampled sets (``PRDCReplicates``) where the dense distances fit, else keeps them fixed
    rng = np.random.default_rng(seed)
    dense = max(len(g), len(r)) <= RECOMPUTE_MAX_ROWS
    one = PRDCReplicates(r, g, k=k) if dense else (lambda ig, ir: res.resampled(ig, ir))
    reps = {key: [] for key in vals}
    for _ in range(n_bootstrap):
        for key, v in one(rng.integers(0, len(g), len(g)), rng.integers(0, len(r), len(r))).items():
            reps[key].append(v)
    for key, mv in out.items():
        method = ci_method or "centred"
        # fixed radii miss their own variance: density's interval is widened there (plain: 0.86-0.92 coverage)
        inflate = DENSITY_INFLATE if key == "density" and not dense and ci_method is None else 1.0
        iv = interval_from_replicates(reps[key], vals[key], alpha=alpha, method=method, inflate=inflate,
                                      what="both sets, kNN radii recomputed" if dense else "both sets, radii fixed")
        with_interval(mv, iv, bias_corrected=False, lower=0.0, upper=None if key == "density" else 1.0)
    return out


@_one_thread
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
    valid, reason = _fd_validity(smallest, g.shape[1], FD_INF_MIN_ROWS_PER_DIM, "fd_inf smallest fitted subset",
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


@_one_thread
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
