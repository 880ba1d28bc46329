"""Seeded coverage checks of the interval fixes that the real-feature benchmark
(``tests/benchmarks/interval_coverage.py``) motivated: each fails with the previous interval."""

import numpy as np
import pytest
import torch

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


def _brute_prdc(real, gen, wr, wg, k):
    """PRDC of two multisets (rows with multiplicities), a row's copies not its own neighbours."""
    def radii(x, w):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        out = np.empty(len(x))
        for i in range(len(x)):
            others = [j for j in np.argsort(d[i]) if j != i]
            out[i] = d[i, others][np.cumsum(w[others]) >= k][0]
        return out

    r_r, r_g = radii(real, wr), radii(gen, wg)
    d = np.linalg.norm(gen[:, None] - real[None], axis=-1)
    inside = (d <= r_r[None]) & (wr > 0)[None]
    counts = (inside * wr[None]).sum(1)
    recall_hit = ((d <= r_g[:, None]) & (wg > 0)[:, None]).any(0)
    covered = ((d <= r_r[None]) & (wg > 0)[:, None]).any(0)  # real i's ball holds a drawn generated row
    return {"precision": (wg * (counts > 0)).sum() / wg.sum(), "density": (wg * counts).sum() / (k * wg.sum()),
            "recall": (wr * recall_hit).sum() / wr.sum(), "coverage": (wr * covered).sum() / wr.sum()}


def test_prdc_replicates_recompute_both_sets_radii_with_multiplicities():
    """A replicate is PRDC of the two resampled multisets with every kNN radius recomputed (the previous
    replicates kept the full-set radii, which missed their variance: precision's interval was too low on
    real features); unit weights give the headline values."""
    from cxrbench.metrics.prdc import PRDCReplicates, prdc_result

    rng = np.random.default_rng(3)
    real, gen = rng.standard_normal((40, 4)), rng.standard_normal((30, 4)) + 0.4
    rep = PRDCReplicates(real, gen, k=3)
    full = prdc_result(real, gen, k=3, dtype=torch.float64).as_dict()
    assert rep(np.arange(30), np.arange(40)) == pytest.approx(full, abs=1e-12)
    for s in range(3):
        ig, ir = rng.integers(0, 30, 30), rng.integers(0, 40, 40)
        got = rep(ig, ir)
        want = _brute_prdc(real, gen, np.bincount(ir, minlength=40).astype(float),
                           np.bincount(ig, minlength=30).astype(float), 3)
        assert got == pytest.approx(want, abs=1e-6), s
