"""KS batteries: scipy agreement, Benjamini-Hochberg against the step-up rule written out, identities."""

import numpy as np
import pytest
from scipy import stats

from cxrbench.engine.metric_runner import run_metric
from cxrbench.features.pixels import FEATURE_NAMES
from cxrbench.metrics.ks import (
    KSFeatures,
    KSLabels,
    KSPixels,
    benjamini_hochberg,
    ks_battery,
    ks_pvalues_fast,
    ks_statistics,
    sorted_columns,
)

from ..metric_helpers import context, feature_set


def _step_up(p, q):
    """Benjamini & Hochberg's rule as the paper states it: reject the k smallest, k the largest i with
    p_(i) <= q i / m."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    below = np.nonzero(p[order] <= q * np.arange(1, m + 1) / m)[0]
    reject = np.zeros(m, dtype=bool)
    reject[order[: below.max() + 1 if below.size else 0]] = True
    return reject


def test_bh_matches_the_step_up_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=rng.integers(0, 15))])
        for q in (0.05, 0.2):
            np.testing.assert_array_equal(benjamini_hochberg(p, q), _step_up(p, q))
    assert benjamini_hochberg([], 0.05).shape == (0,)


def test_vectorised_statistic_and_asymptotic_p_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, size=(70, 5)).astype(float)  # heavy ties
    y = rng.integers(0, 7, size=(90, 5)).astype(float)
    x[:, 4] = rng.normal(size=70)
    d = ks_statistics(x, y, budget=200)  # several column chunks
    np.testing.assert_array_equal(ks_statistics(x, y_sorted=sorted_columns(y), budget=200), d)  # presorted reference
    for j in range(5):
        r = stats.ks_2samp(x[:, j], y[:, j], method="asymp")
        assert d[j] == pytest.approx(r.statistic, abs=1e-12)
        assert ks_pvalues_fast(d[j], 70, 90) == pytest.approx(r.pvalue, rel=0.1)
    for n1, n2 in [(150, 200), (2000, 1500)]:  # over the whole range of p that matters (1e-6 .. 1)
        en = n1 * n2 / (n1 + n2)
        ds = np.linspace(0.3, 5.0, 15) / np.sqrt(en)
        asymp = stats.kstwo.sf(ds, np.round(en))  # the distribution ks_2samp(method="asymp") evaluates
        ok = asymp > 1e-6  # below that BH rejects under either
        assert ok.sum() >= 7
        np.testing.assert_allclose(ks_pvalues_fast(ds, n1, n2)[ok], asymp[ok], rtol=0.1)
        assert (ks_pvalues_fast(ds, n1, n2)[~ok] < 1e-5).all()


def test_battery_is_scipy_per_column_and_names_the_worst_dimension():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(200, 6))
    gen = rng.normal(size=(150, 6))
    gen[:, 3] += 0.8
    names = [f"f{i}" for i in range(6)]
    res = ks_battery(gen, ref, names)
    for j in range(6):
        r = stats.ks_2samp(gen[:, j], ref[:, j])
        assert (res.d[j], res.p[j]) == pytest.approx((r.statistic, r.pvalue))
    extra = res.extra(0.05)
    assert extra["worst"] == "f3" and extra["max_d"] == res.d[3]
    assert res.rejected[3] and extra["dims"]["f3"]["rejected"]


def test_identical_sets_reject_nothing():
    x = np.random.default_rng(3).normal(size=(100, 12))
    res = ks_battery(x, x.copy())
    assert res.fraction == 0.0 and res.d.max() == 0.0


def test_the_three_batteries_as_metrics():
    rng = np.random.default_rng(4)
    emb_r, emb_g = rng.normal(size=(200, 20)), rng.normal(size=(150, 20)) + 0.4
    lab_r, lab_g = rng.uniform(size=(200, 18)), rng.uniform(size=(150, 18))
    lab_g[:, 7] = lab_g[:, 7] ** 3  # one pathology shifts
    pix_r, pix_g = rng.normal(size=(200, 10)), rng.normal(size=(150, 10))
    gen = feature_set("samples", {"e": emb_g, "xrv-classifier": lab_g, "pixels": pix_g})
    ref = feature_set("reference", {"e": emb_r, "xrv-classifier": lab_r, "pixels": pix_r})
    ctx = context(gen, ref)
    ctx.extractors["xrv-classifier"]["feature_names"] = [f"path{i}" for i in range(18)]
    ctx.extractors["pixels"]["feature_names"] = list(FEATURE_NAMES)  # as the engine records every extractor's names
    feats = run_metric(KSFeatures(), ctx)["ks_features_e"]
    labels = run_metric(KSLabels(), ctx)["ks_labels"]
    pixels = run_metric(KSPixels(), ctx)["ks_pixels"]
    assert feats.value > 0.8 and feats.real_vs_real < 0.1
    assert labels.extra["worst"] == "path7" and labels.extra["n_rejected"] >= 1
    assert pixels.extra["n_tests"] == 10 and set(pixels.extra["dims"]) == set(FEATURE_NAMES)
    assert pixels.value < feats.value
    for v in (feats, labels, pixels):
        assert v.ci[0] <= v.value <= v.ci[1] and not v.higher_is_better


def test_battery_skips_without_its_extractor():
    x = np.zeros((10, 4))
    ctx = context(feature_set("samples", {"e": x}), feature_set("reference", {"e": x}))
    assert "pixels" in KSPixels().skip_reason(ctx) and run_metric(KSPixels(), ctx) == {}


def test_weighted_ks_equals_the_statistic_of_the_resampled_rows():
    """The count-based replicate (no sorting) gives the KS statistic of the resampled sets, ties included."""
    from cxrbench.metrics.ks import WeightedKS, ks_statistics

    rng = np.random.default_rng(3)
    g, r = rng.normal(size=(120, 5)), rng.normal(size=(90, 5)) + 0.2
    g[:40, 0] = r[:10, 0] = 0.5  # ties within and across the sets
    r[:, 1] = np.round(r[:, 1])
    w = WeightedKS(g, r)
    blocked = WeightedKS(g, r, budget=420)  # two columns per block, the last block short
    assert blocked.cols == 2
    for _ in range(4):
        ig, ir = rng.integers(0, 120, 120), rng.integers(0, 90, 90)
        cg, cr = np.bincount(ig, minlength=120), np.bincount(ir, minlength=90)
        got = w(cg, cr)
        np.testing.assert_allclose(got, ks_statistics(g[ig], r[ir]), atol=1e-12)
        np.testing.assert_array_equal(blocked(cg, cr), got)
