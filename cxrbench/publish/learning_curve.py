"""The ``learning_curve`` block of an entry: a metric measured at training checkpoints.

Written by whoever trained the model. A point may record its checkpoint's samples (``samples``: the folder,
relative to the entry's, and the set's sha256); ``cxrbench verify`` then re-hashes them and recomputes the
point (``publish.submission.verify_curve``). A point without them is the trainer's word. The final point of a
curve is the entry itself, which verify always recomputes::

    "learning_curve": {
      "checkpoints": [
        {"cpu_minutes": 5.0,  "n_samples": 100, "metric": "fid_cxr64", "value": 61.2, "ci": [55.0, 68.1],
         "steps": 205},
        {"cpu_minutes": 15.0, "n_samples": 100, "metric": "fid_cxr64", "value": 40.3, "ci": [36.2, 44.9],
         "samples": {"location": "../samples/curves/vae/cpu-15min", "sha256": "9f7b..."}}
      ]
    }

    cpu_minutes  training CPU time at the checkpoint (> 0); strictly increasing per metric
    n_samples    the samples the point was computed over (curve points may use fewer than the entry)
    metric       a metric key of the entry's result (its direction comes from there)
    value, ci    the metric and its 95% interval ([lo, hi] or null)
    steps, images_seen  optional: training steps / images seen at the checkpoint
    samples      optional: {location, sha256} of the checkpoint's samples (location relative to the entry's
                 folder, inside the tree that holds the entry; sha256 over the files' sorted sha256s)

The block is untrusted input like the rest of an entry: ``validate`` checks every field and names the
entry, the checkpoint and the field in its message.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import DataError

REQUIRED = ("cpu_minutes", "n_samples", "metric", "value", "ci")
OPTIONAL = ("steps", "images_seen")
SAMPLES = "samples"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_CHECKPOINTS = 1000
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _count(x: Any, lo: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x < 10**15


def validate(block: Any, metrics: dict, source: str) -> None:
    """Schema-check an entry's learning-curve block against the result's ``metrics``."""
    where = f"{source}: learning_curve"
    if not isinstance(block, dict) or set(block) != {"checkpoints"}:
        raise DataError(f"{where} must be {{\"checkpoints\": [...]}}, got {type(block).__name__}")
    points = block["checkpoints"]
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_CHECKPOINTS:
        raise DataError(f"{where}.checkpoints must be a list of 1 to {MAX_CHECKPOINTS} checkpoints")
    last: dict[str, float] = {}
    for i, p in enumerate(points):
        _check_point(p, metrics, f"{where}.checkpoints[{i}]")
        if p["cpu_minutes"] <= last.get(p["metric"], -math.inf):
            raise DataError(f"{where}.checkpoints[{i}]: cpu_minutes must increase from one {p['metric']} "
                            f"checkpoint to the next (got {p['cpu_minutes']!r} after {last[p['metric']]!r})")
        last[p["metric"]] = p["cpu_minutes"]


def _check_point(p: Any, metrics: dict, where: str) -> None:
    if not isinstance(p, dict):
        raise DataError(f"{where} must be an object with {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in p]
    unknown = sorted(set(p) - set(REQUIRED) - set(OPTIONAL) - {SAMPLES})
    if missing or unknown:
        raise DataError(f"{where}: missing {missing} / unknown {unknown}; a checkpoint has "
                        f"{', '.join(REQUIRED)} and optionally {', '.join((*OPTIONAL, SAMPLES))}")
    if not _finite(p["cpu_minutes"]) or p["cpu_minutes"] <= 0:
        raise DataError(f"{where}: cpu_minutes must be a positive number, got {p['cpu_minutes']!r}")
    if not _count(p["n_samples"], 1):
        raise DataError(f"{where}: n_samples must be a positive integer, got {p['n_samples']!r}")
    if not isinstance(p["metric"], str) or not _KEY.match(p["metric"]) or p["metric"] not in metrics:
        raise DataError(f"{where}: metric {p['metric']!r} is not a metric of the entry's result")
    if not _finite(p["value"]):
        raise DataError(f"{where}: value must be a finite number, got {p['value']!r}")
    ci = p["ci"]
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_finite, ci)) and ci[0] <= ci[1]):
        raise DataError(f"{where}: ci must be [lo, hi] with lo <= hi, or null; got {ci!r}")
    for k in OPTIONAL:
        if k in p and not _count(p[k], 0):
            raise DataError(f"{where}: {k} must be a non-negative integer, got {p[k]!r}")
    if SAMPLES in p:
        s = p[SAMPLES]
        loc = s.get("location") if isinstance(s, dict) else None
        if not (isinstance(s, dict) and set(s) == {"location", "sha256"} and isinstance(loc, str) and loc
                and "\\" not in loc and "\x00" not in loc and not loc.startswith("/")
                and isinstance(s["sha256"], str) and _SHA256.match(s["sha256"])):
            raise DataError(f"{where}: samples must be {{location: a relative POSIX path, sha256: 64 hex digits}}, "
                            f"got {s!r}")


def with_final_point(block: dict, result: dict, training: dict | None, n_samples: int) -> dict:
    """``block`` (the checkpoints measured before the entry) with the entry itself appended as the last point
    of each of its metrics, at the card's training CPU minutes: the curve ends at the number the board ranks."""
    if not training or not training.get("cpu_minutes"):
        raise DataError("a learning curve needs the card's [training] cpu_minutes for its final point (the entry)")
    points = list(block.get("checkpoints", []))
    for metric in dict.fromkeys(p["metric"] for p in points):
        m = result["metrics"].get(metric)
        if m is None:
            raise DataError(f"learning curve: metric {metric!r} is not in the entry's result")
        points.append({"cpu_minutes": float(training["cpu_minutes"]), "n_samples": int(n_samples), "metric": metric,
                       "value": m["value"], "ci": m.get("ci"),
                       **{k: int(training[k]) for k in OPTIONAL if training.get(k) is not None}})
    return {**block, "checkpoints": points}


def checkpoints(entry: dict, metric: str) -> list[dict]:
    """The entry's (validated) checkpoints of ``metric``, in training order; [] without a curve."""
    block = entry.get("learning_curve") or {}
    return sorted((p for p in block.get("checkpoints", []) if p["metric"] == metric), key=lambda p: p["cpu_minutes"])


def recorded(entry: dict) -> list[tuple[str, str, list[dict]]]:
    """``[(location, sha256, points)]``: the checkpoints whose samples the entry records, grouped by folder (a
    folder's points share one evaluation); a folder recorded with two different hashes is refused."""
    groups: dict[str, tuple[str, list[dict]]] = {}
    for p in (entry.get("learning_curve") or {}).get("checkpoints", []):
        if SAMPLES not in p:
            continue
        loc, sha = p[SAMPLES]["location"], p[SAMPLES]["sha256"]
        if loc in groups and groups[loc][0] != sha:
            raise DataError(f"entry {entry.get('slug')}: learning_curve records {loc} with two different sha256s")
        groups.setdefault(loc, (sha, []))[1].append(p)
    return [(loc, sha, pts) for loc, (sha, pts) in groups.items()]
