"""The whole suite on one synthetic context: declared keys, JSON-ready values, monotone response to shift."""

import json

import numpy as np
import pytest

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.metric_runner import run_metric
from cxrbench.features.pixels import PixelStatsExtractor
from cxrbench.metrics.base import Metric
from cxrbench.registry import METRICS

from ..metric_helpers import context, feature_set, thumbnails

SUITE = ["kid", "fd_inf", "prdc", "memorization", "ks_features", "ks_labels", "ks_pixels", "labels",
         "label_adherence", "ms_ssim"]
PIXELS = PixelStatsExtractor()


def classifier(images):
    """A fixed weight-free stand-in for the XRV classifier: 18 'probabilities' from thumbnail contrasts."""
    t = thumbnails(images, 6).astype(np.float64)
    w = np.random.default_rng(0).normal(size=(t.shape[1], 18))
    z = (t - 0.45) @ w
    return 1 / (1 + np.exp(-z / z.std()))


def make_set(name, images, **kw):
    feats = {"thumb": thumbnails(images), "pixels": PIXELS.extract(images).numpy(),
             "xrv-classifier": classifier(images)}
    return feature_set(name, feats, images=images, **kw)


@pytest.fixture(scope="module")
def reference():
    return make_set("reference", synthetic_cxr(240, 32, seed=1))


@pytest.fixture(scope="module")
def train():
    return make_set("train", synthetic_cxr(200, 32, seed=2))


def test_every_metric_emits_exactly_its_declared_keys(reference, train):
    gen = make_set("samples", synthetic_cxr(150, 32, shift=0.3, seed=3))
    ctx = context(gen, reference, train, ms_ssim_pairs=6, ms_ssim_size=168, n_bootstrap=10)
    for name in SUITE:
        m = METRICS.get(name)()
        assert isinstance(m, Metric) and m.name == name
        out = run_metric(m, ctx)
        if m.skip_reason(ctx):
            assert out == {}
            continue
        assert set(out) == set(m.output_keys(ctx.embedding_extractors())), name
        for key, v in out.items():
            assert v.higher_is_better == m.outputs[key.removesuffix("_thumb")]
            if not v.valid:  # flagged: a reason and no interval that would not cover
                assert v.reason and v.ci is None, key
                continue
            # a basic-bootstrap interval is about the bias-corrected value, any other about the value
            centre = v.value_bias_corrected if v.value_bias_corrected is not None else v.value
            assert v.ci is not None and v.ci[0] <= centre <= v.ci[1], key
            json.dumps(v.to_dict(), allow_nan=False)
    assert METRICS.get("label_adherence")().skip_reason(ctx)  # unconditional samples


def test_requirements_are_declared():
    from cxrbench.metrics.base import EvalContext, FeatureSet
    from cxrbench.metrics.common import classifier_of

    assert METRICS.get("ks_pixels").requires_extractors == ("pixels",)
    # label metrics read whichever label classifier ran (xrv-classifier first, else cxr64-classifier)
    specs = {"xrv": {"kind": "embedding"}, "cxr64-classifier": {"kind": "probabilities"},
             "xrv-classifier": {"kind": "probabilities"}}
    gen = FeatureSet(name="samples", ids=[], hashes=[], features={k: np.zeros((0, 1)) for k in specs})
    ctx = EvalContext(gen=gen, ref=gen, train=None, extractors=specs, config=None)
    assert classifier_of(ctx) == "xrv-classifier"
    ctx.extractors = {k: v for k, v in specs.items() if k != "xrv-classifier"}
    assert classifier_of(ctx) == "cxr64-classifier"
    ctx.extractors = {"xrv": specs["xrv"]}
    for name in ("labels", "ks_labels", "label_adherence"):
        assert METRICS.get(name).requires_extractors == ()
        assert "label classifier" in METRICS.get(name)().skip_reason(ctx)


def test_distances_grow_and_fidelity_falls_with_distribution_shift(reference):
    keys = {"kid": "kid_thumb", "fd_inf": "fd_inf_thumb", "ks_features": "ks_features_thumb",
            "ks_pixels": "ks_pixels", "labels": "label_js", "prdc": "precision_thumb"}
    series = {k: [] for k in keys.values()}
    for shift in (0.0, 0.4, 0.8, 1.6):
        gen = make_set("samples", synthetic_cxr(150, 32, shift=shift, seed=4))
        ctx = context(gen, reference, n_bootstrap=0, kid_subsets=20)
        for name, key in keys.items():
            series[key].append(run_metric(METRICS.get(name)(), ctx)[key].value)
    for key, vals in series.items():
        d = np.diff(vals)
        if key == "precision_thumb":
            assert (d <= 0).all() and vals[-1] < 0.5 * vals[0], (key, vals)
        elif key.startswith("ks"):
            assert (d >= 0).all() and vals[-1] > vals[0], (key, vals)  # a fraction: may saturate at 1
        else:
            assert (d > 0).all(), (key, vals)
