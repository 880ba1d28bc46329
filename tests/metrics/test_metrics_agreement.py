"""rank_agreement: orientation by higher_is_better, agreement with scipy, missing entries."""

import numpy as np
import pytest
from scipy import stats

from cxrbench.errors import DataError
from cxrbench.metrics.agreement import per_extractor_keys, rank_agreement


def entry(**metrics):
    return {"metrics": {k: {"value": v, "higher_is_better": k.startswith("precision")} for k, v in metrics.items()}}


def test_lower_and_higher_is_better_keys_agree_when_they_rank_alike():
    fid = [10.0, 20.0, 30.0, 40.0, 50.0]
    results = [entry(fid_inception=f, fid_xrv=f * 2 + 1, precision_xrv=1 / f) for f in fid]
    out = rank_agreement(results, ["fid_inception", "fid_xrv", "precision_xrv"])
    assert out["spearman"]["fid_inception"]["fid_xrv"] == pytest.approx(1.0)
    assert out["spearman"]["fid_inception"]["precision_xrv"] == pytest.approx(1.0)  # oriented, not raw
    assert out["kendall"]["fid_xrv"]["precision_xrv"] == pytest.approx(1.0)
    assert out["mean_spearman"] == pytest.approx(1.0)


def test_values_match_scipy_on_common_entries_only():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=8), rng.normal(size=8)
    results = [entry(fid_inception=x, fid_xrv=y) for x, y in zip(a, b)]
    results.append(entry(fid_inception=1.0))  # lacks fid_xrv: left out of the pair
    out = rank_agreement(results, ["fid_inception", "fid_xrv"])
    assert out["n_entries"]["fid_inception"]["fid_xrv"] == 8
    assert out["spearman"]["fid_inception"]["fid_xrv"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert out["kendall"]["fid_xrv"]["fid_inception"] == pytest.approx(stats.kendalltau(a, b).statistic)


def test_too_few_entries_give_none_and_keys_are_discovered():
    results = [entry(fid_inception=1.0, fid_xrv=2.0), entry(fid_inception=2.0, fid_xrv=1.0)]
    assert per_extractor_keys(results, "fid") == ["fid_inception", "fid_xrv"]
    assert rank_agreement(results, ["fid_inception", "fid_xrv"])["spearman"]["fid_inception"]["fid_xrv"] is None
    with pytest.raises(DataError):
        rank_agreement(results, ["fid_inception"])
