"""Label-distribution metrics: identities, direct definitions, adherence AUROC against Mann-Whitney U."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from cxrbench.data.labels import NIH14
from cxrbench.metrics.labels import (
    LabelAdherence,
    LabelDistribution,
    label_cooccurrence,
    label_js,
    label_mae,
    requested_labels,
)

from ..metric_helpers import context, feature_set

NAMES = [f"L{i}" for i in range(18)]


def probs_with_prevalence(n, prevalence, seed):
    """Calibrated-probability matrix whose columns are positive (> 0.5) at the given rates."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(size=(n, len(prevalence))) < prevalence
    return np.where(pos, rng.uniform(0.51, 1.0, pos.shape), rng.uniform(0.0, 0.49, pos.shape))


def ctx_for(gen, ref, **kw):
    ctx = context(feature_set("samples", {"xrv-classifier": gen}, **kw),
                  feature_set("reference", {"xrv-classifier": ref}))
    ctx.extractors["xrv-classifier"]["feature_names"] = NAMES
    return ctx


def test_definitions_on_a_hand_made_example():
    a = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)
    b = np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=bool)
    assert label_mae(a, b) == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    fa = np.array([3, 2, 1, 1]) / 7  # prevalences x4 plus the "no positive label" bin
    fb = np.array([1, 0, 2, 1]) / 4
    assert label_js(a, b) == pytest.approx(jensenshannon(fa, fb, base=2) ** 2)
    # pairwise co-occurrence P(i and j): (0,1): 2/4 vs 0, (0,2): 1/4 vs 0, (1,2): 1/4 vs 0
    assert label_cooccurrence(a, b) == pytest.approx(np.sqrt(0.25 + 0.0625 + 0.0625))


def test_identical_sets_are_zero_and_distance_grows_with_prevalence_shift():
    base = np.linspace(0.05, 0.4, 18)
    ref = probs_with_prevalence(2000, base, 0)
    v0 = LabelDistribution().compute(ctx_for(ref.copy(), ref))
    assert v0["label_js"].value == 0.0 and v0["label_mae"].value == 0.0 and v0["label_cooccurrence"].value == 0.0
    js, mae = [], []
    for shift in (0.0, 0.1, 0.2, 0.4):
        gen = probs_with_prevalence(1500, np.clip(base + shift * (np.arange(18) % 2), 0, 1), 1)
        out = LabelDistribution().compute(ctx_for(gen, ref))
        js.append(out["label_js"].value)
        mae.append(out["label_mae"].value)
        # basic bootstrap: the interval is about the bias-corrected value (JS is biased upward at finite N)
        lo, hi = out["label_js"].ci
        assert lo <= out["label_js"].value_bias_corrected <= hi and out["label_js"].value_bias_corrected <= js[-1]
    assert np.all(np.diff(js) > 0) and np.all(np.diff(mae) > 0)
    assert out["label_mae"].extra["worst"] in NAMES[1::2]
    assert out["label_mae"].real_vs_real < mae[1]  # the real halves agree better than a 0.1 shift


def test_functional_label_distances_equal_the_registered_metric_and_refuse_positional_sets():
    from cxrbench.config import MetricSettings
    from cxrbench.metrics import functional as F

    ref = probs_with_prevalence(400, np.linspace(0.05, 0.4, 18), 0)
    gen = probs_with_prevalence(300, np.linspace(0.4, 0.05, 18), 1)
    ctx = ctx_for(gen, ref)
    registered = LabelDistribution().compute(ctx)
    st = MetricSettings.from_config(ctx.config)
    fast = F.label_distances(real=ref, fake=gen)  # point estimates, no replicates
    full = F.label_distances(real=ref, fake=gen, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha)
    for key in ("label_mae", "label_js", "label_cooccurrence"):
        assert fast[key].value == registered[key].value and fast[key].ci is None
        assert full[key].ci == registered[key].ci and full[key].value_bias_corrected == registered[key].value_bias_corrected
    assert len(F.label_distances(real=ref, fake=gen, ci=True)["label_js"].ci) == 2  # ci=True: the default count
    # the sets swap roles in a prevalence table's bias correction: keywords only
    with pytest.raises(TypeError):
        F.label_distances(ref, gen)


def test_nan_heads_are_left_out():
    ref = probs_with_prevalence(300, np.full(18, 0.3), 0)
    gen = probs_with_prevalence(300, np.full(18, 0.3), 1)
    gen[:, 5] = ref[:, 5] = np.nan
    out = LabelDistribution().compute(ctx_for(gen, ref))
    assert "L5" not in out["label_mae"].extra["prevalence"] and len(out["label_mae"].extra["prevalence"]) == 17


def test_requested_labels_from_either_manifest_layout():
    wide = pd.DataFrame({"path": ["a", "b", "c"], "Effusion": [1, 0, 1], "pleural thickening": [0, 1, 0]})
    listed = pd.DataFrame({"path": ["a", "b", "c"], "labels": ["Effusion", "Pleural_Thickening", "effusion|"]})
    for m in (wide, listed):
        got = requested_labels(m)
        assert set(got) == {"Effusion", "Pleural_Thickening"}
        np.testing.assert_array_equal(got["Effusion"], [True, False, True])
    assert requested_labels(pd.DataFrame({"path": ["a"]})) == {}


def test_adherence_auroc_matches_mann_whitney_and_tracks_adherence():
    rng = np.random.default_rng(3)
    n = 400
    names = list(NIH14) + ["Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    req = rng.uniform(size=n) < 0.5
    manifest = pd.DataFrame({"labels": np.where(req, "Effusion", "No Finding")})
    ref = rng.uniform(size=(n, 18))
    col = names.index("Effusion")
    values = []
    for strength in (0.0, 1.0, 3.0):
        gen = rng.uniform(size=(n, 18))
        gen[:, col] = 1 / (1 + np.exp(-(strength * (req * 2 - 1) + rng.normal(size=n))))
        ctx = context(feature_set("samples", {"xrv-classifier": gen}, manifest=manifest),
                      feature_set("reference", {"xrv-classifier": ref}))
        ctx.extractors["xrv-classifier"]["feature_names"] = names
        assert LabelAdherence().skip_reason(ctx) is None
        v = LabelAdherence().compute(ctx)["label_adherence_auroc"]
        u = stats.mannwhitneyu(gen[req, col], gen[~req, col]).statistic
        assert v.value == pytest.approx(u / (req.sum() * (~req).sum()))
        assert v.extra["per_label"] == {"Effusion": v.value}  # "No Finding" has no classifier head
        values.append(v.value)
    assert abs(values[0] - 0.5) < 0.1 and values[0] < values[1] < values[2]


def test_adherence_skips_unconditional_samples():
    ref = probs_with_prevalence(50, np.full(18, 0.3), 0)
    ctx = ctx_for(ref, ref)
    assert "manifest" in LabelAdherence().skip_reason(ctx)
    assert LabelAdherence().compute(ctx) == {}
