"""FD_inf: removes the 1/N bias of FD on Gaussians with a known answer."""

import numpy as np
import pytest
import torch

from cxrbench.engine.metric_runner import run_metric
from cxrbench.metrics.fd_inf import FDInf, fd_inf_fixed_ref, nested_stats
from cxrbench.metrics.fid import frechet_distance, gaussian_stats

from ..metric_helpers import context, feature_set


def test_nested_statistics_equal_gaussian_stats_of_each_prefix():
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(90, 6)) * 3 + 50)  # offset: cancellation-prone
    for (mu, cov), s in zip(nested_stats(x, [10, 37, 90]), [10, 37, 90]):
        mu_ref, cov_ref = gaussian_stats(x[:s])
        torch.testing.assert_close(mu, mu_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(cov, cov_ref, rtol=1e-10, atol=1e-10)


def test_extrapolation_removes_most_of_the_sample_size_bias():
    d, n = 24, 400
    mu = np.full(d, 0.1)
    truth = float(mu @ mu)  # equal (identity) covariances: FD is the squared mean difference
    ref_stats = (torch.as_tensor(mu), torch.eye(d, dtype=torch.float64))  # exact reference statistics
    errs_n, errs_inf = [], []
    for seed in range(3):
        gen = np.random.default_rng(seed).normal(size=(n, d))
        fd_n = frechet_distance(*ref_stats, *gaussian_stats(gen))
        value, details = fd_inf_fixed_ref(gen, ref_stats, seed=seed)
        assert details["slope"] > 0 and details["sizes"][-1] == n
        assert details["fd"][-1] == pytest.approx(fd_n, rel=1e-9)  # the largest subset is the whole set
        errs_n.append(fd_n - truth)
        errs_inf.append(abs(value - truth))
    assert min(errs_n) > 0  # FD at finite N is biased upwards
    assert np.mean(errs_inf) < 0.35 * np.mean(errs_n)


def test_metric_on_identical_distributions_is_near_zero_and_ci_brackets_value():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 8)).astype(np.float32)
    same = rng.normal(size=(200, 8)).astype(np.float32)
    shifted = same + 0.5

    def ctx(g):
        return context(feature_set("samples", {"e": g}), feature_set("reference", {"e": ref}))

    v_same = run_metric(FDInf(), ctx(same))["fd_inf_e"]
    v_shift = run_metric(FDInf(), ctx(shifted))["fd_inf_e"]
    assert abs(v_same.value) < 0.1 * v_shift.value
    assert v_shift.ci[0] <= v_shift.value <= v_shift.ci[1]
    assert abs(v_shift.real_vs_real) < 0.1 * v_shift.value
