"""Measured coverage of the default protocol's intervals on real features, read from the shipped table.

``interval_coverage.json`` (beside this module) is written by ``tests/benchmarks/interval_coverage.py``, never by
hand: for every interval the protocol reports, its coverage on finite populations of real cxr128 features at the
protocol's sample sizes, the worst over populations. Where that is outside ``nominal +/- tolerance`` (95 +/- 3%),
the interval is not a 95% interval, and ``flag`` returns what the result then carries as ``ci_coverage``: the
measured coverage, the population it was measured on and the benchmark, which every table prints instead of
"95%" (``results.ci_text``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

TABLE = Path(__file__).with_name("interval_coverage.json")


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """The shipped table (empty when the file is absent: nothing is flagged then)."""
    try:
        return json.loads(TABLE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def flag(protocol: str | None, key: str, n_gen: int, n_ref: int) -> dict | None:
    """``ci_coverage`` for the interval of output ``key`` (e.g. ``fid_cxr128``) under ``protocol`` at these sizes,
    or None where the benchmark found it within tolerance (or did not measure this protocol and these sizes)."""
    t = table()
    if not t or protocol != t.get("protocol") or (n_gen, n_ref) != (t.get("n_gen"), t.get("n_ref")):
        return None
    m = t.get("metrics", {}).get(key)
    if m is None or m.get("ok"):
        return None
    out = {"measured": m["worst_coverage"], "nominal": t["nominal"], "population": m["worst_population"],
           "repetitions": m["reps"], "benchmark": t["benchmark"]}
    if "coverage_min" in m:  # over every population measured: a reader sees whether it errs both ways
        out["range"] = [m["coverage_min"], m["coverage_max"]]
    return out
