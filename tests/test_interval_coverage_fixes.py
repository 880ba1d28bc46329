"""Seeded coverage checks of the interval fixes that the real-feature benchmark
(``tests/benchmarks/interval_coverage.py``) motivated: each fails with the previous interval."""

import numpy as np

from cxrbench.metrics import functional as F
from cxrbench.metrics.kid import mmd2_u_variance


def _null_kid_draws(n_draws=60, n_gen=80, n_ref=160, d=8):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_draws):
        g, r = rng.standard_normal((n_gen, d)), rng.standard_normal((n_ref, d))
        out.append(F.kid(real=r, fake=g, subset_size=1000, n_subsets=20, ci=True, seed=i))
    return out


def test_kid_interval_has_the_width_of_its_sampling_spread_when_the_sets_agree():
    """Two samples of one distribution: the MMD^2 U-statistic is degenerate, and the bootstrap's percentile
    interval was 1.3-1.7x wider than the estimator's spread (on real features, at the protocol's sizes, too);
    the U-statistic variance gives the spread itself, and the interval still covers the population value 0."""
    res = _null_kid_draws()
    values = np.array([r.value for r in res])
    half = np.array([(r.ci[1] - r.ci[0]) / 2 for r in res])
    ratio = half.mean() / (1.959964 * values.std(ddof=1))
    assert 0.75 < ratio < 1.25, ratio
    cover = np.mean([r.ci[0] <= 0.0 <= r.ci[1] for r in res])
    assert cover >= 0.88, cover


def test_u_statistic_variance_matches_the_spread_under_a_shift():
    rng = np.random.default_rng(1)
    est, var = [], []
    for _ in range(60):
        g = rng.standard_normal((80, 8)) * 1.2 + 0.2
        u, v = mmd2_u_variance(g, rng.standard_normal((160, 8)))
        est.append(u)
        var.append(v)
    ratio = np.sqrt(np.mean(var)) / np.std(est, ddof=1)
    assert 0.8 < ratio < 1.3, ratio
