"""An interval whose coverage, measured on real features, misses 95 +/- 3% is flagged with that coverage.

The table is ``cxrbench/metrics/interval_coverage.json``, written by ``tests/benchmarks/interval_coverage.py``.
"""

import json

import pytest

from cxrbench.metrics import coverage_table
from cxrbench.metrics.base import MetricValue
from cxrbench.results import ci_text

TABLE = {"benchmark": "tests/benchmarks/interval_coverage.py", "protocol": "cxr128", "n_gen": 300, "n_ref": 599,
         "nominal": 0.95, "tolerance": 0.03,
         "metrics": {"fid_cxr128": {"worst_coverage": 0.885, "worst_population": "mixture", "reps": 200, "ok": False},
                     "kid_cxr128": {"worst_coverage": 0.94, "worst_population": "nih", "reps": 200, "ok": True}}}


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "interval_coverage.json"
    path.write_text(json.dumps(TABLE))
    monkeypatch.setattr(coverage_table, "TABLE", path)
    coverage_table.table.cache_clear()
    yield
    coverage_table.table.cache_clear()


def test_a_missed_interval_is_flagged_with_its_measured_coverage_and_printed_so(table):
    flag = coverage_table.flag("cxr128", "fid_cxr128", 300, 599)
    assert flag["measured"] == 0.885 and flag["population"] == "mixture" and "interval_coverage" in flag["benchmark"]
    assert coverage_table.flag("cxr128", "kid_cxr128", 300, 599) is None  # within 95 +/- 3%
    assert coverage_table.flag("cxr128", "fid_cxr128", 200, 599) is None  # not measured at these sizes
    assert coverage_table.flag("cxr64", "fid_cxr128", 300, 599) is None
    mv = MetricValue(40.0, False, (30.0, 50.0), 300, 599, ci_method="basic", ci_coverage=flag)
    d = mv.to_dict()
    assert d["ci_coverage"]["measured"] == 0.885
    assert "88.5%" in ci_text(d) and "not 95%" in ci_text(d)  # the CLI table, report.md and report.html use ci_text
    assert "88.5%" in str(mv) and "95% CI" not in str(mv)
    assert ci_text({**d, "ci_coverage": None}) == "[30, 50]"
    ranged = {**d, "ci_coverage": {**flag, "range": [0.885, 1.0]}}
    assert "covers 88.5%-100.0% (measured), not 95%" in ci_text(ranged)  # errs both ways across populations


def test_the_shipped_table_is_the_benchmarks_and_covers_the_protocols_interval_metrics():
    t = coverage_table.table()
    assert t["benchmark"] == "tests/benchmarks/interval_coverage.py" and t["protocol"] == "cxr128"
    assert (t["n_gen"], t["n_ref"]) == (300, 599)
    for key in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert f"{key}_cxr128" in t["metrics"], key
    for key, m in t["metrics"].items():
        assert m["ok"] == (abs(m["worst_coverage"] - t["nominal"]) <= t["tolerance"] + 1e-12), key


def test_an_evaluation_under_the_protocol_carries_the_flag_into_its_result_and_table(tmp_path, monkeypatch):
    """The engine reads the table: a flagged interval's result holds ``ci_coverage``, the CLI table prints it."""
    from pathlib import Path

    import cxrbench
    from cxrbench.commands.evaluate import format_table
    from cxrbench.config import EvalConfig

    table = {**TABLE, "metrics": {"kid_cxr128": {"worst_coverage": 0.91, "worst_population": "nih_pa", "reps": 200,
                                                 "ok": False}}}
    path = tmp_path / "interval_coverage.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(coverage_table, "TABLE", path)
    coverage_table.table.cache_clear()
    try:
        samples = Path(__file__).resolve().parents[2] / "examples" / "cxr128-samples"
        res = cxrbench.evaluate(samples, config=EvalConfig(metrics=("kid",), use_cache=False, progress=False))
    finally:
        coverage_table.table.cache_clear()
    m = res["metrics"]["kid_cxr128"]
    assert (m["n_gen"], m["n_ref"]) == (300, 599)
    assert m["ci_coverage"]["measured"] == 0.91 and m["ci_coverage"]["population"] == "nih_pa"
    assert "covers 91.0% (measured), not 95%" in format_table(res)
