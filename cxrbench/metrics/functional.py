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
basic bootstrap for the biased distances (FID, label distances; FID's centred on its half-sample bias
estimate); for KID a normal interval with the U-statistic variance (no replicates); a scaled distinct-row
interval for FD_inf; centred percentile for precision, recall, density, coverage (replicates recompute the
kNN radii of both resampled sets) and KS (whose replicates are pulled down by the resamples' duplicated rows,
not by estimator bias). The coverage on real features at the default protocol's sizes is measured by
``tests/benchmarks/interval_coverage.py``; an interval outside 95 +/- 3% there carries ``ci_coverage`` in results
(``coverage_table``). Where the benchmark found no method that covers (FID and FD_inf with too few samples per
feature dimension), the result has ``valid = False``, a ``reason`` and no interval.

Each function lives in its metric's module (``fid``, ``kid``, ``prdc``, ``fd_inf``, ``ks``,
``memorization``, ``labels``: ``label_distances`` of two label-probability arrays; ``rrs`` of two embedding
arrays; ``ms_ssim`` and ``reid`` of image arrays, ``(N, H, W)`` in [0, 1], since they read pixels) beside the
estimator and the registered class; this module only re-exports them.
(The registered memorization metric calls its estimator and the same interval directly, for the nearest
pairs and the floor it adds.)
"""

from __future__ import annotations

from ..config import MetricSettings
from .common import check_pair, replicates
from .diversity import ms_ssim_diversity as ms_ssim
from .fd_inf import FD_INF_MIN_ROWS_PER_DIM, FD_INF_N_BOOTSTRAP, fd_inf
from .fid import FD_MIN_ROWS_PER_DIM, fid
from .kid import KID_ANALYTIC_MAX_ROWS, kid
from .ks import ks_features
from .labels import label_distances
from .memorization import memorization
from .prdc import DENSITY_INFLATE, prdc
from .reid import reid
from .rrs import rrs

# every metric lives with its estimator (one metric, one file) and is re-exported here
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
    "label_distances",
    "memorization",
    "ms_ssim",
    "prdc",
    "reid",
    "replicates",
    "rrs",
]

#: replicates of ``ci=True``: ``EvalConfig.n_bootstrap``'s default (read through ``MetricSettings``, which
#: takes it from there), so the CLI, the harness and this API share one default. The coverage benchmark
#: reached nominal coverage with 200; more replicates narrow the Monte Carlo error of the 2.5% quantiles,
#: not their bias
N_BOOTSTRAP = MetricSettings.n_bootstrap
