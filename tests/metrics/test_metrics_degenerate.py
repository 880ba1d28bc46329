"""Degenerate feature sets (mode collapse, constant features, N < D, N = 2) give numbers, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.metrics.fid import fid_from_features
from tests.conftest import write_pngs


def _direct_fid_constant_gen(g, r):
    # a constant generated set has zero covariance: FD = |mu_g - mu_r|^2 + Tr(S_r)
    return float(((g.mean(0) - r.mean(0)) ** 2).sum() + np.trace(np.cov(r.T)))


@pytest.mark.parametrize("n_gen,d", [(40, 64), (40, 16), (2, 8)])
def test_fid_of_a_mode_collapsed_set_is_the_direct_formula(n_gen, d):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(100, d))
    g = np.full((n_gen, d), 0.5)  # exactly representable: centring gives an all-zero D x N factor
    assert fid_from_features(g, r) == pytest.approx(_direct_fid_constant_gen(g, r), rel=1e-10)
    assert fid_from_features(r, g) == pytest.approx(_direct_fid_constant_gen(g, r), rel=1e-10)


def test_evaluate_on_copies_of_one_image_gives_numbers(tmp_path):
    """The commonest GAN failure: 40 copies of one image against 200 real ones (used to crash in dtrmm)."""
    from cxrbench.config import EvalConfig
    from cxrbench.data.synthetic import synthetic_cxr
    from cxrbench.engine.evaluate import evaluate

    gen = write_pngs(tmp_path / "one", synthetic_cxr(1, 32, 0.0, seed=5).repeat(40, 1, 1, 1))
    ref = write_pngs(tmp_path / "ref", synthetic_cxr(200, 32, 0.0, seed=6))
    cfg = EvalConfig(extractors=("random-conv",), metrics=("fid", "kid", "prdc", "ks_features"), weights="random",
                     n_bootstrap=20, cache_dir=str(tmp_path / "cache"), progress=False, num_workers=0)
    m = evaluate(gen, ref, config=cfg)["metrics"]
    assert m["fid_random-conv"]["value"] > 3 * m["fid_random-conv"]["real_vs_real"]
    assert m["recall_random-conv"]["value"] < 0.05 < m["recall_random-conv"]["real_vs_real"]
    assert m["ks_features_random-conv"]["value"] == 1.0


# --- property tests over the functional API ---------------------------------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrbench.errors import DataError
from cxrbench.metrics import functional as F


def _direct_fid(a, b):
    """The textbook formula through a symmetric square root (numpy eigh), independent of fid.py's routes."""
    s1, s2 = np.atleast_2d(np.cov(a.T)), np.atleast_2d(np.cov(b.T))
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


@st.composite
def feature_pairs(draw):
    """Degenerate and adversarial pairs: duplicated rows, zero variance, rank 1, N < D, huge and tiny scales."""
    d = draw(st.integers(1, 12))
    n_g, n_r = draw(st.integers(2, 30)), draw(st.integers(2, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["normal", "duplicates", "constant", "rank1", "constant_dim"]))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    g, r = rng.normal(size=(n_g, d)), rng.normal(size=(n_r, d)) + 0.3
    if kind == "duplicates":
        g = g[rng.integers(0, max(1, n_g // 3), n_g)]
    elif kind == "constant":
        g = np.full((n_g, d), 0.25)
    elif kind == "rank1":
        g = rng.normal(size=(n_g, 1)) * rng.normal(size=(1, d))
    elif kind == "constant_dim":
        g[:, 0] = r[:, 0] = 1.0
    return g * scale, r * scale


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_pairs())
def test_fid_is_finite_symmetric_and_agrees_with_the_direct_formula(pair):
    g, r = pair
    a, b = F.fid(fake=g, real=r, n_bootstrap=20), F.fid(fake=r, real=g, n_bootstrap=0)
    # round-off scale: the summed squared magnitudes (FD is a difference of such terms)
    mag = float((g**2).sum(1).mean() + (r**2).sum(1).mean()) + 1e-300
    assert np.isfinite(a.value) and a.value >= -1e-9 * mag
    assert abs(a.value - b.value) <= 1e-7 * mag
    assert abs(a.value - _direct_fid(g, r)) <= 1e-7 * mag
    assert abs(F.fid(fake=g, real=g, n_bootstrap=0).value) <= 1e-7 * mag
    assert a.ci is None or (np.isfinite(a.ci).all() and a.ci[0] <= a.ci[1])
    assert a.valid == (min(len(g), len(r)) >= F.FD_MIN_ROWS_PER_DIM * g.shape[1]) and (a.valid or a.reason)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_pairs())
def test_kid_prdc_ks_give_finite_values_or_clear_refusals(pair):
    g, r = pair
    k = F.kid(fake=g, real=r, n_bootstrap=20, n_subsets=5)
    assert np.isfinite(k.value) and k.ci is None or np.isfinite(k.ci).all()
    m = min(len(g), len(r))  # subsets of the whole of both sets: the U-statistic is symmetric in the sets
    ab = F.kid(fake=g[:m], real=r[:m], n_subsets=1)
    ba = F.kid(fake=r[:m], real=g[:m], n_subsets=1)
    assert ab.value == pytest.approx(ba.value, rel=1e-9, abs=1e-12)
    ks = F.ks_features(fake=g, real=r, n_bootstrap=20)
    assert 0.0 <= ks.value <= 1.0 and F.ks_features(fake=r, real=r, n_bootstrap=0).value == 0.0
    if min(len(g), len(r)) <= 5:
        with pytest.raises(DataError, match="prdc: needs at least 6"):
            F.prdc(fake=g, real=r)
    else:
        out = F.prdc(fake=g, real=r, n_bootstrap=20)
        assert all(0.0 <= out[key].value <= 1.0 for key in ("precision", "recall", "coverage"))
        assert all(np.isfinite(v.value) and v.ci[0] <= v.ci[1] for v in out.values())


@pytest.mark.parametrize("bad,match", [
    (np.zeros((5, 3, 1)), "2-d"),
    (np.zeros((1, 3)), "at least 2"),
    (np.full((5, 3), np.nan), "NaN or inf"),
    (np.zeros((5, 4)), "dimensions differ"),
])
def test_refusals_name_the_problem(bad, match):
    good = np.random.default_rng(0).normal(size=(5, 3))
    for fn in (F.fid, F.kid, F.ks_features):
        with pytest.raises(DataError, match=match):
            fn(fake=bad, real=good)


def test_fd_inf_is_refused_or_flagged_when_subsets_are_too_small():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="at least 10"):
        F.fd_inf(fake=rng.normal(size=(8, 4)), real=rng.normal(size=(50, 4)))
    small = F.fd_inf(fake=rng.normal(size=(40, 16)) + 0.1, real=rng.normal(size=(40, 16)), n_bootstrap=10)
    assert not small.valid and "rows for 16-d" in small.reason and small.ci is None and small.value >= 0
    big = F.fd_inf(fake=rng.normal(size=(400, 4)) + 0.3, real=rng.normal(size=(400, 4)), n_bootstrap=10)
    assert big.valid and big.reason is None and big.ci[0] <= big.value <= big.ci[1]


def test_fid_interval_covers_the_population_value_in_simulation():
    """Simulated coverage (a small version of tests/benchmarks/coverage.py): Gaussians with a known FD."""
    d, n, hits = 3, 150, 0
    delta, scale = np.array([0.3, 0.0, 0.0]), 1.5
    truth = float(delta @ delta) + d * (1 + scale - 2 * scale**0.5)
    for rep in range(40):
        rng = np.random.default_rng(rep)
        g = rng.normal(size=(n, d)) * scale**0.5 + delta
        res = F.fid(fake=g, real=rng.normal(size=(n, d)), n_bootstrap=100, seed=rep)
        hits += res.ci[0] <= truth <= res.ci[1]
    assert hits >= 34  # nominal 38/40; a binomial(40, 0.95) is below 34 with probability < 0.5%
