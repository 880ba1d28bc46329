"""Frechet distance: independent implementations, identities, the bootstrap shortcut, monotonicity."""

import numpy as np
import pytest
import scipy.linalg
import torch

from cxrbench.data.splits import real_vs_real_split
from cxrbench.metrics.bootstrap import bootstrap_ci
from cxrbench.metrics.fid import (
    BootstrapFD,
    covariance_factor,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    sqrtm_psd,
)


def _scipy_fd(a, b):
    m1, s1 = a.mean(0), np.cov(a, rowvar=False)
    m2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d,n", [(8, 200), (64, 300), (256, 600)])
def test_agrees_with_scipy_sqrtm(d, n):
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    b = rng.normal(size=(n, d)) * 1.3 + 0.2
    ours, ref = fid_from_features(a, b), _scipy_fd(a, b)
    assert abs(ours - ref) / ref < 1e-6


@pytest.mark.parametrize("n_ref", [40, 400])  # rank-deficient S1 (square-root factor) and positive definite (Cholesky)
def test_both_covariance_factors_agree_with_scipy(n_ref):
    rng = np.random.default_rng(n_ref)
    d = 64
    a = rng.normal(size=(n_ref, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    b = rng.normal(size=(300, d)) * 1.3 + 0.2
    mu1, s1 = gaussian_stats(a)
    f = covariance_factor(s1)
    assert bool(torch.triu(f, 1).any()) == (n_ref <= d)  # Cholesky is lower triangular; the square root is not
    torch.testing.assert_close(f @ f.T, s1, atol=1e-10 * float(s1.abs().max()), rtol=0)
    mu2, s2 = gaussian_stats(b)
    ref = _scipy_fd(a, b)
    assert abs(frechet_distance(mu1, s1, mu2, s2, factor1=f) - ref) / ref < 1e-8
    # and reused for bootstrap replicates: the Y = X_g A shortcut equals refitting with either factor
    fd = BootstrapFD(b, mu1, s1, f)
    idx = np.random.default_rng(0).integers(0, 300, 300)
    # (a rank-deficient S1's square root carries sqrt(round-off) ~ 1e-8 in its null space)
    assert abs(fd(idx) - fid_from_features(a, b[idx])) < 1e-7 * fid_from_features(a, b[idx])


def test_agrees_with_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 32)), rng.normal(size=(300, 32)) + 0.5
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    ref = float(_compute_fid(mu1, s1, mu2, s2))
    assert abs(fid_from_features(a, b) - ref) / ref < 1e-6


def test_identity_and_symmetry():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16)) * 2
    assert abs(fid_from_features(a, a)) < 1e-8
    assert abs(fid_from_features(a, b) - fid_from_features(b, a)) < 1e-8 * fid_from_features(a, b)


def test_refuses_a_single_vector():
    from cxrbench.errors import DataError

    with pytest.raises(DataError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


@pytest.mark.parametrize("n,d", [(50, 64), (300, 32)])  # Gram path (distinct rows < D) and D x D path
def test_bootstrap_shortcut_equals_refitting(n, d):
    rng = np.random.default_rng(3)
    ref, gen = rng.normal(size=(400, d)), rng.normal(size=(n, d)) * 1.2 + 0.1
    mu_r, s_r = gaussian_stats(ref)
    fd = BootstrapFD(gen, mu_r, s_r, sqrtm_psd(s_r))
    for seed in range(3):
        idx = np.random.default_rng(seed).integers(0, n, n)
        assert abs(fd(idx) - fid_from_features(ref, gen[idx])) < 1e-6 * fid_from_features(ref, gen[idx])


def test_bootstrap_ci_brackets_the_statistic():
    x = np.random.default_rng(0).normal(size=500)
    lo, hi = bootstrap_ci(lambda idx: float(x[idx].mean()), len(x), n_boot=200, seed=0)
    assert lo < x.mean() < hi
    assert hi - lo < 0.3


def test_real_vs_real_split_is_patient_wise_and_deterministic():
    pids = [f"p{i // 3}" for i in range(60)]
    a, b = real_vs_real_split(60, seed=4, patient_ids=pids)
    assert not {pids[i] for i in a} & {pids[i] for i in b}
    assert len(a) + len(b) == 60 and abs(len(a) - len(b)) <= 3
    a2, _ = real_vs_real_split(60, seed=4, patient_ids=pids)
    np.testing.assert_array_equal(a, a2)


def test_fid_grows_with_distribution_shift_random_conv():
    from cxrbench.data.synthetic import synthetic_cxr
    from cxrbench.features.random_conv import RandomConvExtractor

    ext = RandomConvExtractor(seed=0)
    ref = ext.extract(synthetic_cxr(200, 32, 0.0, seed=10)).numpy()
    fids = [fid_from_features(ref, ext.extract(synthetic_cxr(200, 32, s, seed=11)).numpy())
            for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x < y for x, y in zip(fids, fids[1:])), fids


@pytest.mark.parametrize("n_gen,n_ref,d", [(300, 400, 8), (40, 60, 32)])  # D-space and cross-Gram routes
def test_two_sample_fd_replicate_equals_refitting_both_resampled_sets(n_gen, n_ref, d):
    from cxrbench.metrics.fid import TwoSampleFD

    rng = np.random.default_rng(7)
    gen, ref = rng.normal(size=(n_gen, d)) + 0.05, rng.normal(size=(n_ref, d)) * 1.3
    fd = TwoSampleFD(gen, ref)
    assert (fd.cross is None) == (n_gen > 10 * d)
    # N < D: round-off-level eigenvalues (~1e-16) add ~1e-8 through their square roots, in either route
    assert fd(np.arange(n_gen), np.arange(n_ref)) == pytest.approx(fid_from_features(gen, ref), rel=1e-6)
    for _ in range(3):
        ig, ir = rng.integers(0, n_gen, n_gen), rng.integers(0, n_ref, n_ref)
        assert fd(ig, ir) == pytest.approx(fid_from_features(gen[ig], ref[ir]), rel=1e-6)
    assert fd(ig, None) == pytest.approx(fid_from_features(gen[ig], ref), rel=1e-6)


def test_fewer_samples_than_dims_with_dead_leading_features_matches_scipy():
    """N < D with the first feature columns constant (dead ReLU units): the D x N factor's top rows are zero,
    which once passed for a triangular (Cholesky) factor and crashed BLAS."""
    rng = np.random.default_rng(3)
    f1, f2 = rng.normal(size=(6, 64)), rng.normal(size=(6, 64)) + 0.3
    f1[:, :8] = f2[:, :8] = 0.0
    want = _scipy_fd(f1, f2)
    assert abs(fid_from_features(f1, f2) - want) < 1e-6 * want


def test_a_result_is_a_float_and_prints_the_estimate_its_interval_belongs_to():
    """FID at 500 x 64-d rows overstates the population FD several times over; its basic-bootstrap interval is
    for the population FD. The value and the estimate the interval belongs to are both shown, each labelled."""
    from cxrbench.metrics import functional as F

    rng = np.random.default_rng(0)
    r = F.fid(fake=rng.standard_normal((500, 64)), real=rng.standard_normal((400, 64)) + 0.1, n_bootstrap=50)
    assert float(r) == r.value and isinstance(float(F.kid(fake=rng.standard_normal((60, 8)),
                                                           real=rng.standard_normal((60, 8)), n_bootstrap=10)), float)
    lo, hi = r.ci
    assert not lo <= r.value <= hi  # the case at hand: the value at N is outside the population interval
    assert r.estimate == r.value_bias_corrected and lo <= r.estimate <= hi
    text = str(r)
    assert f"{r.value:.4g} (at N = 500/400)" in text
    assert f"population estimate {r.estimate:.4g} (bias-corrected), 95% CI [{lo:.4g}, {hi:.4g}]" in text


def test_cli_table_shows_the_estimate_each_interval_belongs_to(tmp_path, capsys):
    import json
    import re

    from cxrbench.cli import main
    from cxrbench.data.synthetic import synthetic_cxr

    from ..conftest import write_pngs

    # 130 rows of 64-d random-conv features: FID valid (>= 2 rows per dimension), so it has an interval
    gen = write_pngs(tmp_path / "gen", synthetic_cxr(130, 16, 0.5, seed=1))
    ref = write_pngs(tmp_path / "ref", synthetic_cxr(130, 16, 0.0, seed=2))
    out = tmp_path / "r.json"
    assert main(["evaluate", "--samples", str(gen), "--reference", str(ref), "--weights", "random", "--extractors",
                 "random-conv", "--metrics", "fid,kid", "--n-bootstrap", "20", "--num-workers", "0", "--quiet",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    res = json.loads(out.read_text())["metrics"]
    assert "value @N" in table and "estimate [95% CI]" in table and "* bias-corrected" in table
    for key, m in res.items():
        row = next(line for line in table.splitlines() if line.startswith(key + " "))
        est = m.get("value_bias_corrected", m["value"])
        got = re.search(r"(\S+?)\*? \[([^,]+), ([^\]]+)\]", row)
        assert got and got.group(1) == f"{est:.4g}", row
        assert float(got.group(2)) <= float(got.group(1)) <= float(got.group(3)), row


def test_half_sample_bias_matches_the_bias_the_bootstrap_underestimates():
    """At the null (two samples of one distribution, population FD 0) the expected FD is all bias. With many
    dimensions (48, N = 200 / 400) and heavy tails (Student t, 5 df; real embeddings are heavier-tailed than
    Gaussian) the half-sample estimate is within 10% of the Monte Carlo bias, while the bootstrap's own
    estimate (replicate mean minus FD) falls further short (whitened cxr128 features: about 80%)."""
    from cxrbench.metrics.bootstrap import one_torch_thread, two_sample_bootstrap
    from cxrbench.metrics.fid import TwoSampleFD, half_sample_bias

    rng = np.random.default_rng(3)
    fd, half, boot = [], [], []
    with one_torch_thread("cpu"):  # as the metrics run: small replicate matrices are ~10x slower on 2 threads
        for i in range(12):
            g, r = rng.standard_t(5, size=(200, 48)), rng.standard_t(5, size=(400, 48))
            stat, v = TwoSampleFD(g, r), fid_from_features(g, r)
            fd.append(v)
            half.append(half_sample_bias(stat, 200, 400, v, seed=i, k=20))
            boot.append(two_sample_bootstrap(stat, 200, 400, v, n_boot=40, seed=i).bias)
    bias = np.mean(fd)  # the truth is 0, so E[FD] is the bias
    assert abs(np.mean(half) - bias) < 0.10 * bias
    assert np.mean(boot) < np.mean(half) - 0.05 * bias


def test_fid_interval_is_the_basic_interval_recentred_on_the_half_sample_estimate():
    from cxrbench.metrics.bootstrap import two_sample_bootstrap
    from cxrbench.metrics.fid import TwoSampleFD, fid, half_sample_bias

    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(150, 16)) + 0.5, rng.normal(size=(300, 16))
    m = fid(real=r, fake=g, ci=True, n_bootstrap=100, seed=7)
    stat = TwoSampleFD(g, r)
    basic = two_sample_bootstrap(stat, 150, 300, m.value, n_boot=100, seed=7)
    bias = half_sample_bias(stat, 150, 300, m.value, seed=7)
    assert m.value_bias_corrected == pytest.approx(m.value - bias)
    # same replicates, same width; shifted by the difference of the two bias estimates
    assert m.ci[1] - m.ci[0] == pytest.approx(basic.hi - basic.lo)
    assert m.ci[0] == pytest.approx(basic.lo + basic.bias - bias)
    assert "half-sample bias" in m.ci_method
