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
    from cxrbench.harness import EvalConfig, evaluate
    from cxrbench.synthetic import synthetic_cxr

    gen = write_pngs(tmp_path / "one", synthetic_cxr(1, 32, 0.0, seed=5).repeat(40, 1, 1, 1))
    ref = write_pngs(tmp_path / "ref", synthetic_cxr(200, 32, 0.0, seed=6))
    cfg = EvalConfig(extractors=("random-conv",), metrics=("fid", "kid", "prdc", "ks_features"), weights="random",
                     n_bootstrap=20, cache_dir=str(tmp_path / "cache"), progress=False, num_workers=0)
    m = evaluate(gen, ref, config=cfg)["metrics"]
    assert m["fid_random-conv"]["value"] > 3 * m["fid_random-conv"]["real_vs_real"]
    assert m["recall_random-conv"]["value"] < 0.05 < m["recall_random-conv"]["real_vs_real"]
    assert m["ks_features_random-conv"]["value"] == 1.0
