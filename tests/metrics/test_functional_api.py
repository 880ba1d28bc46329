"""The functional API's defaults: a point estimate unless an interval is asked for, with one default count."""

import numpy as np
import pytest

from cxrbench.config import EvalConfig, MetricSettings
from cxrbench.metrics import functional as F


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 4)), rng.normal(size=(100, 4)) * 1.1 + 0.2


def test_default_call_is_a_point_estimate_and_intervals_come_on_request(feats):
    real, fake = feats
    for name, fn, kw in (("fid", F.fid, {}), ("kid", F.kid, {"n_subsets": 5}), ("ks_features", F.ks_features, {})):
        plain = fn(real=real, fake=fake, **kw)
        assert plain.ci is None and plain.ci_method is None, name
        asked = fn(real=real, fake=fake, ci=True, **kw)
        assert asked.ci is not None and asked.ci[0] <= asked.ci[1], name
        assert asked.value == plain.value, name  # the interval changes nothing about the estimate
        # ci=True runs the default count: the same interval as asking for that count by name
        assert fn(real=real, fake=fake, n_bootstrap=F.N_BOOTSTRAP, **kw).ci == asked.ci, name
        assert fn(real=real, fake=fake, ci=True, n_bootstrap=0, **kw).ci is None, name  # an explicit count wins
    out = F.prdc(real=real, fake=fake)
    assert all(v.ci is None for v in out.values())
    assert all(v.ci is not None for v in F.prdc(real=real, fake=fake, n_bootstrap=20).values())
    fd = F.fd_inf(real=np.tile(real, (3, 1)), fake=np.tile(fake, (3, 1)) + 0.5)
    assert fd.ci is None


def test_default_count_lives_in_evalconfig():
    assert F.N_BOOTSTRAP == EvalConfig().n_bootstrap == MetricSettings().n_bootstrap
    assert F.FD_INF_N_BOOTSTRAP == MetricSettings().fd_inf_n_bootstrap


#: functional keyword -> the MetricSettings field it mirrors (per entry where the name differs)
FUNCTIONAL_SETTINGS = {
    "fd_inf": {"points": "fd_inf_points", "min_fraction": "fd_inf_min_fraction"},
    "kid": {"subset_size": "kid_subset_size", "n_subsets": "kid_subsets", "boot_subsets": "kid_boot_subsets"},
    "ks_features": {"q": "ks_q"},
    "memorization": {"percentile": "memorization_percentile"},
    "ms_ssim": {"pairs": "ms_ssim_pairs", "size": "ms_ssim_size"},
    "prdc": {"k": "prdc_k", "boot_candidates": "prdc_boot_candidates"},
    "reid": {"weights": "reid_weights", "preprocessing": "reid_preprocessing", "threshold": "reid_threshold"},
}


@pytest.mark.parametrize("name", ["fid", "kid", "prdc", "fd_inf", "ks_features", "memorization", "label_distances",
                                  "rrs", "ms_ssim", "reid"])
def test_functional_defaults_are_the_metric_settings(name):
    # one source of defaults: every keyword that mirrors a setting defaults to MetricSettings' value, so the
    # functional API and `cxrbench evaluate` compute the same thing when given nothing
    import inspect

    params = inspect.signature(getattr(F, name)).parameters
    mirrored = {"seed": "seed", "alpha": "alpha", **FUNCTIONAL_SETTINGS.get(name, {})}
    assert set(mirrored) <= set(params), name
    defaults = MetricSettings()
    for kw, field in mirrored.items():
        assert params[kw].default == getattr(defaults, field), (name, kw)
