"""PRDC: agreement with the prdc package, identities, and the exactness of the cheap bootstrap."""

import numpy as np
import pytest
import torch
from prdc import compute_prdc

from cxrbench.engine.metric_runner import run_metric
from cxrbench.metrics import knn
from cxrbench.metrics.prdc import PRDC, prdc_result

from ..metric_helpers import context, feature_set


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 16)).astype(np.float32)
    gen = (rng.normal(size=(250, 16)) * 1.2 + 0.3).astype(np.float32)
    return real, gen


def test_agrees_with_prdc_package(sets, capsys):
    real, gen = sets
    expected = compute_prdc(real, gen, nearest_k=5)
    capsys.readouterr()  # prdc prints its set sizes
    exact = prdc_result(real, gen, k=5, dtype=torch.float64).as_dict()
    fast = prdc_result(real, gen, k=5).as_dict()  # float32 blocks
    for key, v in expected.items():
        assert exact[key] == pytest.approx(float(v), abs=1e-12), key
        assert fast[key] == pytest.approx(float(v), abs=2 / len(real)), key  # at most a boundary tie apart


def test_identical_sets_are_perfect(sets):
    real = sets[0]
    res = prdc_result(real, real.copy(), k=5)
    assert res.precision == res.recall == res.coverage == 1.0
    assert res.density == pytest.approx(1.0, abs=0.25)


def test_disjoint_sets_score_zero(sets):
    real = sets[0]
    res = prdc_result(real, real + 100.0, k=5)
    assert res.precision == res.recall == res.density == res.coverage == 0.0


def test_bootstrap_replicates_are_exact(sets):
    real, gen = sets
    res = prdc_result(real, gen, k=5)
    assert res.resampled(np.arange(len(gen))) == pytest.approx(res.as_dict())
    idx = np.random.default_rng(1).integers(0, len(gen), len(gen))
    got = res.resampled(idx)
    # brute force on the resample, generated radii held at their full-set values (documented convention)
    sub = gen[idx]
    r_real = knn.kth_radii(real, 5)
    r_gen = knn.kth_radii(gen, 5)[idx]
    d = np.sqrt(((real[:, None, :].astype(np.float64) - sub[None]) ** 2).sum(-1))
    assert got["precision"] == pytest.approx((d <= r_real[:, None]).any(0).mean())
    assert got["density"] == pytest.approx((d <= r_real[:, None]).sum(0).mean() / 5)
    assert got["recall"] == pytest.approx((d <= r_gen[None, :]).any(1).mean())
    assert got["coverage"] == pytest.approx((d.min(1) <= r_real).mean())


def test_metric_reports_all_four_per_extractor(sets):
    real, gen = sets
    ctx = context(feature_set("samples", {"a": gen, "b": gen[:, :8]}),
                  feature_set("reference", {"a": real, "b": real[:, :8]}))
    out = run_metric(PRDC(), ctx)
    assert set(out) == set(PRDC().output_keys(["a", "b"]))
    for v in out.values():
        assert v.higher_is_better and v.n_gen == len(gen) and v.n_ref == len(real)
        assert 0.0 <= v.ci[0] <= v.value <= v.ci[1]
    assert out["precision_a"].real_vs_real > out["precision_a"].value  # real halves resemble each other more


def test_functional_prdc_keywords_map_to_the_prdc_package(sets, capsys):
    """F.prdc(real=, fake=) is prdc.compute_prdc(real_features, fake_features): ported code cannot swap them."""
    from cxrbench.metrics import functional as F

    real, gen = sets
    expected = compute_prdc(real_features=real, fake_features=gen, nearest_k=5)
    capsys.readouterr()
    # the sets differ in spread, so precision and recall differ: a swap would show
    assert abs(expected["precision"] - expected["recall"]) > 0.1
    got = F.prdc(real=real, fake=gen, k=5)
    for key, v in expected.items():
        assert got[key].value == pytest.approx(float(v), abs=2 / len(real)), key
    with pytest.raises(TypeError):
        F.prdc(real, gen)  # positional sets are refused rather than read in some order


def test_functional_api_is_keyword_only_for_every_two_set_function(sets):
    from cxrbench.metrics import functional as F

    real, gen = sets
    for fn in (F.fid, F.kid, F.prdc, F.fd_inf, F.ks_features):
        with pytest.raises(TypeError):
            fn(gen, real)
