"""The result schema ``cxrbench.result/1``: build, save (atomically), load and validate.

Top-level keys (all documented in README "Result file"):
``schema, cxrbench_version, git_hash, created, protocol{name, version}, samples{path, n, sha256},
reference{name, split, n, sha256}, train_reference (or null), extractors{name: spec}, metrics{key: {value,
ci, higher_is_better, n_gen, n_ref, real_vs_real, ...}}, metric_versions{name: version}, config, timings,
device, seeds, versions, comparable, warnings, skipped``; conditional samples (manifest label columns) add
``per_condition{min_samples, min_reference, metric_names, conditions{label: {n_samples, n_reference,
metrics{...} or skipped}}}`` (``engine/per_condition.py``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, UsageError
from .fileio import write_output

SCHEMA = "cxrbench.result/1"
REQUIRED = (
    "schema", "cxrbench_version", "protocol", "samples", "reference", "extractors", "metrics", "config",
    "comparable",
)
METRIC_REQUIRED = ("value", "ci", "higher_is_better", "n_gen", "n_ref", "real_vs_real")


def _g(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def ci_text(m: dict) -> str:
    """A metric's interval as every table shows it: ``[lo, hi]``, ``not valid`` (flagged, no interval) or ``-``;
    with the measured coverage where it misses 95 +/- 3% (``ci_coverage``: ``[lo, hi] covers 88.5% (measured),
    not 95%``)."""
    if m.get("valid") is False:
        return "not valid"
    ci = m.get("ci")
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    cov = m.get("ci_coverage")
    # an interval whose measured coverage misses 95 +/- 3% is shown with that coverage, not as a 95% interval
    span = cov and cov.get("range")
    measured = "" if not cov else (f"{span[0]:.1%}-{span[1]:.1%}" if span and span[0] != span[1]
                                   else f"{cov['measured']:.1%}")
    level = "" if not cov else f" covers {measured} (measured), not 95%"
    return f"[{_g(ci[0])}, {_g(ci[1])}]{level}"


def floor_text(m: dict) -> str:
    """The real-vs-real floor at the sizes it was computed at, beside the samples' value at those same sizes.

    ``0.12 @100/100 (samples 0.45)``: the floor compares two halves of the reference, so it is held against
    the samples' own value at the halves' sizes, never against the full-N value. Every table (CLI, report,
    leaderboard) shows it this way.
    """
    rvr = m.get("real_vs_real")
    if rvr is None:
        return "-"
    n, matched = m.get("real_vs_real_n"), m.get("value_at_real_vs_real_n")
    return _g(rvr) + (f" @{n[0]}/{n[1]}" if n else "") + ("" if matched is None else f" (samples {_g(matched)})")


class Result(dict):
    """A result is a plain JSON dict with helpers; ``Result(json.load(f))`` round-trips exactly."""

    @property
    def metrics(self) -> dict[str, dict]:
        return self["metrics"]

    def value(self, key: str) -> float | None:
        return self["metrics"][key]["value"]

    def to_json(self) -> str:
        return json.dumps(self, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        validate(self)
        return write_output(path, self.to_json().encode())


def _json_default(o: Any):
    try:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_header(d, schema: str, required, source: str, hint: str = "") -> None:
    """An untrusted JSON document is an object of the expected schema with every required key (one clear
    message each, not a KeyError); ``hint`` is appended to the missing-keys message."""
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a JSON object")
    if d.get("schema") != schema:
        raise DataError(f"{source}: schema is {d.get('schema')!r}, expected {schema!r}")
    missing = [k for k in required if k not in d]
    if missing:
        raise DataError(f"{source}: missing keys {missing}{hint}")


def validate(d: dict, source: str = "result") -> None:
    """Refuse anything that is not a complete ``cxrbench.result/1`` (a clear message, not a KeyError)."""
    check_header(d, SCHEMA, REQUIRED, source)
    _validate_metrics(d["metrics"], source)
    if "per_condition" in d:
        _validate_per_condition(d["per_condition"], source)


def _validate_metrics(metrics, source: str) -> None:
    if not isinstance(metrics, dict):
        raise DataError(f"{source}: 'metrics' must be an object")
    for key, m in metrics.items():
        if not isinstance(m, dict):
            raise DataError(f"{source}: metric {key!r} must be an object")
        gone = [k for k in METRIC_REQUIRED if k not in m]
        if gone:
            raise DataError(f"{source}: metric {key!r} lacks {gone}")
        v = m["value"]
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
            raise DataError(f"{source}: metric {key!r} has a non-numeric value {v!r}")
        if not isinstance(m["higher_is_better"], bool):
            raise DataError(f"{source}: metric {key!r}: higher_is_better must be true or false")


def _validate_per_condition(block, source: str) -> None:
    """``per_condition``: ``{min_samples, min_reference, metric_names, conditions: {label: {n_samples, n_reference,
    metrics{...} | skipped "reason"}}}``; each condition's metrics have the shape of the top-level ones."""
    if not isinstance(block, dict) or not isinstance(block.get("conditions"), dict):
        raise DataError(f"{source}: 'per_condition' must be an object with a 'conditions' object")
    for lab, c in block["conditions"].items():
        where = f"{source}: per_condition {lab!r}"
        if not isinstance(c, dict):
            raise DataError(f"{where} must be an object")
        for k in ("n_samples", "n_reference"):
            if not isinstance(c.get(k), int) or isinstance(c.get(k), bool):
                raise DataError(f"{where}: {k} must be an integer")
        if ("metrics" in c) == ("skipped" in c):
            raise DataError(f"{where}: needs either 'metrics' or 'skipped' (the reason), not both or neither")
        if "skipped" in c and not isinstance(c["skipped"], str):
            raise DataError(f"{where}: skipped must be the reason, a string")
        if "metrics" in c:
            _validate_metrics(c["metrics"], where)


def load(path: str | os.PathLike) -> Result:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no such result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    validate(d, str(path))
    return Result(d)
