"""The engine's fan-out of a ``TwoSampleMetric`` (``engine/metric_runner.py``): one value per embedding extractor,
keys suffixed, direction from ``outputs``, the real-vs-real floor from ``point`` on the reference's halves; a new
metric is one class plus a registration."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from cxrbench.data.splits import real_vs_real_split
from cxrbench.engine.metric_runner import run_metric
from cxrbench.metrics.base import MetricValue, TwoSampleMetric
from cxrbench.registry import METRICS

from ..metric_helpers import context, feature_set


class MeanDistance(TwoSampleMetric):
    """The README's example metric (distance between the two sets' feature means), but for its direction."""

    name = "mean_dist"
    outputs: ClassVar[dict[str, bool]] = {"mean_dist": False}

    def point(self, x, y, pair):
        return float(np.linalg.norm(x.mean(0) - y.mean(0)))

    def estimate(self, pair):
        # the direction is the engine's to set (from `outputs`): give the wrong one to see it overwritten
        return MetricValue(self.point(pair.gen, pair.ref, pair), True, n_gen=len(pair.gen), n_ref=len(pair.ref))


def mean_dist(x, y) -> float:
    return float(np.linalg.norm(x.astype(np.float64).mean(0) - y.astype(np.float64).mean(0)))


def test_two_sample_metric_runs_once_per_embedding_extractor_with_its_floor():
    rng = np.random.default_rng(0)
    gen = {"a": rng.normal(1.0, 1, (60, 3)), "b": rng.normal(0, 1, (60, 5)), "pixels": rng.normal(0, 1, (60, 2))}
    ref = {"a": rng.normal(0, 1, (80, 3)), "b": rng.normal(0, 1, (80, 5)), "pixels": rng.normal(0, 1, (80, 2))}
    ctx = context(feature_set("samples", gen), feature_set("reference", ref))
    out = run_metric(MeanDistance(), ctx)
    assert set(out) == {"mean_dist_a", "mean_dist_b"}  # pixels is not an embedding
    st = ctx.config
    for e in ("a", "b"):
        g, r = ctx.gen.features[e], ctx.ref.features[e]
        v = out[f"mean_dist_{e}"]
        assert v.higher_is_better is False and v.value == pytest.approx(mean_dist(g, r), rel=1e-6)
        # 60 samples >= half the reference: the floor is the point estimate on the two halves, at their sizes
        a, b = real_vs_real_split(len(r), st.seed, None)
        assert v.extra["real_vs_real_n"] == [len(a), len(b)]
        assert v.real_vs_real == pytest.approx(mean_dist(r[a], r[b]), rel=1e-6)
        assert v.extra["value_at_real_vs_real_n"] is not None
    assert out["mean_dist_a"].value > 3 * out["mean_dist_a"].real_vs_real  # the shifted extractor


def test_compute_of_a_two_sample_metric_points_to_the_engine():
    ctx = context(feature_set("samples", {"a": np.zeros((4, 2))}), feature_set("reference", {"a": np.zeros((4, 2))}))
    with pytest.raises(TypeError, match="run_metric"):
        MeanDistance().compute(ctx)


def test_a_registered_two_sample_metric_runs_in_evaluate(synthetic_folders, fast_config, monkeypatch):
    from cxrbench.engine.evaluate import evaluate

    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))  # the registration ends with the test
    METRICS.register("mean_dist")(MeanDistance)
    cfg = fast_config.resolved(metrics=("mean_dist", "fid"))
    same = evaluate(synthetic_folders["real_a"], synthetic_folders["real_b"], config=cfg)
    shifted = evaluate(synthetic_folders["shifted"], synthetic_folders["real_b"], config=cfg)
    for r in (same, shifted):
        m = r.metrics["mean_dist_random-conv"]
        assert m["higher_is_better"] is False and m["real_vs_real"] is not None
        assert r["metric_versions"]["mean_dist"] == "1"
    # a shift moves it the way it moves FID
    assert shifted.value("mean_dist_random-conv") > same.value("mean_dist_random-conv")
    assert shifted.value("fid_random-conv") > same.value("fid_random-conv")
