"""Streaming statistics (RunningMoments, reference_statistics) and the --precision switch."""

import numpy as np
import pytest

from cxrbench.config import EvalConfig
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.evaluate import evaluate, images_source
from cxrbench.engine.extraction import extract_features, reference_statistics
from cxrbench.errors import UsageError
from cxrbench.features.cache import FeatureCache
from cxrbench.metrics.fid import gaussian_stats
from cxrbench.metrics.moments import RunningMoments


def _close(a, b, tol=1e-10):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


def test_running_moments_equal_gaussian_stats_with_uneven_batches_and_merge():
    rng = np.random.default_rng(0)
    # a large common offset: the naive sum-of-squares formula would lose ~8 digits here
    x = (rng.standard_normal((1000, 40)) @ rng.standard_normal((40, 40)) + 1e3).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    a, b = RunningMoments(40), RunningMoments(40)
    cuts = [0, 7, 8, 300, 301, 640, 1000]
    for i, (s, t) in enumerate(zip(cuts[:-1], cuts[1:])):
        (a if i % 2 == 0 else b).update(x[s:t])
    a.merge(b)  # different shifts: the merge re-centres b's sums
    assert a.n == 1000
    m2, s2 = a.stats()
    _close(m2, mu)
    _close(s2, sigma)
    one = RunningMoments(40).update(x)
    _close(one.stats()[1], sigma)


def test_reference_statistics_stream_matches_full_features_and_npz_round_trips(tmp_path):
    src = images_source(synthetic_cxr(40, size=32, seed=3), name="ref")
    cfg = EvalConfig(extractors=("random-conv",), weights="random", device="cpu", batch_size=8, chunk_size=16,
                     num_workers=0, progress=False, use_cache=False)
    acc = reference_statistics(src, config=cfg)
    from cxrbench.engine.extraction import build_extractors

    ex = build_extractors(cfg.extractors, cfg, "cpu")
    feats, bad = extract_features(src, ex, cfg, FeatureCache(enabled=False), "cpu", desc="x")
    assert not bad and acc["random-conv"].n == 40
    mu, sigma = gaussian_stats(feats["random-conv"])
    m2, s2 = acc["random-conv"].stats()
    _close(m2, mu)
    _close(s2, sigma)
    acc["random-conv"].save(tmp_path / "ref_stats.npz")
    mu3, s3, n3 = RunningMoments.load_stats(tmp_path / "ref_stats.npz")
    assert n3 == 40
    np.testing.assert_array_equal(mu3, m2.numpy())
    np.testing.assert_array_equal(s3, s2.numpy())


def _cfg(tmp_path, precision):
    return EvalConfig(extractors=("random-conv",), metrics=("fid",), weights="random", device="cpu", batch_size=16,
                      num_workers=0, n_bootstrap=0, progress=False, cache_dir=str(tmp_path / "cache"),
                      precision=precision)


def test_bf16_is_recorded_not_comparable_cached_apart_and_close_to_fp32(tmp_path):
    gen = images_source(synthetic_cxr(48, size=32, shift=0.5, seed=1), name="gen")
    ref = images_source(synthetic_cxr(48, size=32, shift=0.0, seed=2), name="ref")
    r32 = evaluate(gen, ref, config=_cfg(tmp_path, "fp32"))
    r16 = evaluate(gen, ref, config=_cfg(tmp_path, "bf16"))
    assert r32["config"]["precision"] == "fp32" and r16["config"]["precision"] == "bf16"
    assert any("precision bf16" in why for why in r16["not_comparable_because"])
    assert not any("precision" in why for why in r32["not_comparable_because"])
    assert r16["extractors"]["random-conv"]["precision"] == "bf16" and "precision" not in r32["extractors"]["random-conv"]
    assert r16["cache"]["hits"] == 0  # bf16 features never come from fp32 cache entries (or the reverse)
    f32, f16 = r32["metrics"]["fid_random-conv"]["value"], r16["metrics"]["fid_random-conv"]["value"]
    assert f16 != f32 and abs(f16 - f32) < 0.1 * f32  # reduced precision: different, but the same distance


def test_unknown_precision_is_a_usage_error(tmp_path):
    src = images_source(synthetic_cxr(4, size=32, seed=1))
    with pytest.raises(UsageError, match="precision"):
        evaluate(src, src, config=_cfg(tmp_path, "fp16"))
