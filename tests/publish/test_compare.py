"""Regression and verification rules on plain result dicts (no evaluation)."""

from __future__ import annotations

import copy
import math

import pytest

from cxrbench.errors import UsageError
from cxrbench.publish.compare import Tolerance, file_differences, regressions, verify_differences

from ..leaderboard_helpers import fake_entry


def metric(value, hib, ci=None):
    return {"value": value, "higher_is_better": hib, "ci": ci, "n_gen": 8, "n_ref": 8, "real_vs_real": None}


def test_worse_is_measured_in_each_metrics_own_direction():
    old = {"fid": metric(10.0, False, [9.0, 11.0]), "prec": metric(0.8, True, [0.7, 0.9])}
    better = {"fid": metric(8.0, False, [7.0, 9.0]), "prec": metric(0.9, True, [0.8, 1.0])}
    worse = {"fid": metric(13.0, False, [12.0, 14.0]), "prec": metric(0.6, True, [0.5, 0.7])}
    tol = Tolerance.parse("auto")
    assert not any(r.regressed for r in regressions(old, better, ["fid", "prec"], tol))
    rows = {r.key: r for r in regressions(old, worse, ["fid", "prec"], tol)}
    assert rows["fid"].worse_by == pytest.approx(3.0) and rows["prec"].worse_by == pytest.approx(0.2)
    # auto: the two runs' CI half-widths combined in quadrature
    assert rows["fid"].allowed == pytest.approx(math.hypot(1.0, 1.0))
    assert rows["prec"].allowed == pytest.approx(math.hypot(0.1, 0.1))
    assert rows["fid"].regressed and rows["prec"].regressed


def test_auto_tolerance_absorbs_changes_within_noise():
    old = {"fid": metric(10.0, False, [8.0, 12.0])}
    new = {"fid": metric(12.5, False, [10.5, 14.5])}  # worse by 2.5 < hypot(2, 2) = 2.83
    (row,) = regressions(old, new, ["fid"], Tolerance.parse("auto"))
    assert not row.regressed and row.worse_by == pytest.approx(2.5)
    (row,) = regressions(old, new, ["fid"], Tolerance.parse("2"))
    assert row.regressed and row.allowed == 2.0
    (row,) = regressions(old, new, ["fid"], Tolerance.parse("30%"))
    assert not row.regressed and row.allowed == pytest.approx(3.0)


def test_flagged_metrics_use_their_equal_n_spread_or_are_not_checked_under_auto():
    def flagged(value, spread=None):
        m = metric(value, False)
        m.update(valid=False, reason="fid: 40 rows for 64-d features")
        if spread:
            m["ci_equal_n"] = spread
        return m

    (row,) = regressions({"fid": flagged(10.0, [9.0, 11.0])}, {"fid": flagged(13.0, [12.0, 14.0])}, ["fid"],
                         Tolerance.parse("auto"))
    assert row.regressed and row.allowed == pytest.approx(math.hypot(1.0, 1.0))
    (row,) = regressions({"fid": flagged(10.0)}, {"fid": flagged(13.0)}, ["fid"], Tolerance.parse("auto"))
    assert not row.regressed and "not checked" in row.note and "64-d" in row.note
    (row,) = regressions({"fid": flagged(10.0)}, {"fid": flagged(13.0)}, ["fid"], Tolerance.parse("1"))
    assert row.regressed


def test_a_metric_lost_in_the_new_run_regresses_and_no_ci_means_no_slack():
    old = {"a": metric(1.0, True), "b": metric(1.0, True)}
    new = {"b": metric(1.0 - 1e-9, True)}
    rows = {r.key: r for r in regressions(old, new, ["a", "b"], Tolerance.parse("auto"))}
    assert rows["a"].regressed and "not computed" in rows["a"].note
    assert rows["b"].regressed and rows["b"].allowed is None
    (same,) = regressions(old, {"a": metric(1.0, True)}, ["a"], Tolerance.parse("auto"))
    assert not same.regressed


@pytest.mark.parametrize("bad", ["", "x", "-1", "nan", "inf", "5%%"])
def test_bad_tolerances_are_usage_errors(bad):
    with pytest.raises(UsageError):
        Tolerance.parse(bad)


def test_file_differences_name_each_path():
    stored = {"a.png": "1" * 64, "b.png": "2" * 64, "c.png": "3" * 64}
    found = {"a.png": "1" * 64, "b.png": "9" * 64, "d.png": "4" * 64}
    assert [(w, note) for w, _, _, note in file_differences(stored, found)] == [
        ("file b.png", "content changed"), ("file c.png", "removed"), ("file d.png", "added")
    ]


def test_verify_differences_threshold_is_relative():
    e = fake_entry("A", {"fid_x": (10.0, False)})
    files = {f["path"]: f["sha256"] for f in e["samples"]["files"]}
    result = copy.deepcopy(e["result"])
    assert verify_differences(e, result, files, e["weights"]) == []
    result["metrics"]["fid_x"]["value"] = 10.0 * (1 + 5e-7)  # within rtol 1e-6
    assert verify_differences(e, result, files, e["weights"]) == []
    result["metrics"]["fid_x"]["value"] = 10.0 * (1 + 5e-6)
    (row,) = verify_differences(e, result, files, e["weights"])
    assert row[0] == "fid_x.value"
    assert verify_differences(e, result, files, e["weights"], rtol=1e-5) == []
    result = copy.deepcopy(e["result"])
    result["metrics"]["fid_x"]["ci"][1] += 1.0
    assert [r[0] for r in verify_differences(e, result, files, e["weights"])] == ["fid_x.ci_hi"]
    assert [r[0] for r in verify_differences(e, e["result"], files, {"random-conv": "0" * 64})] == [
        "weights random-conv"
    ]
