"""Comparing a stored entry with a fresh evaluation: exact re-verification and regression checks.

``verify_differences`` backs ``cxrbench verify``: every hash must match exactly and every number (the
per-condition ones too) within numerical noise, ``|a - b| <= rtol * max(|a|, |b|) + atol`` (rtol 1e-6 by
default: same code, same weights and same device give identical numbers; the slack absorbs BLAS summation
order across machines).

``regressions`` backs ``cxrbench check``: a metric regresses when it is worse than the entry, in its own
direction, by more than the allowed amount: with ``tolerance="auto"`` the noise of the two runs,
``sqrt(h_entry^2 + h_new^2)`` where ``h`` is the half-width of each run's bootstrap 95% CI; with a number,
that absolute amount; with ``"X%"``, X percent of the entry's value. A metric flagged ``valid: false``
uses its ``ci_equal_n`` (FID below 2 rows per dimension: the bootstrap spread at that N) or, without one,
is not checked under ``auto``. Measured with ``tests/benchmarks/check_rates.py``: false-alarm rate 0.017
of the whole check on repeated same-distribution draws, detection 0.55 of a 0.15 sd mean shift with 1.1x
variance (D = 8, N = 200).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

RTOL = 1e-6
ATOL = 1e-12


def _close(a, b, rtol: float, atol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + atol


def _finite(v) -> float:
    """A stated tolerance as a number: 0 when absent or not a finite non-negative number."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else 0.0


def file_differences(stored: dict[str, str], found: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(what, stored, found, note) for every sample file removed, added or changed, named by path."""
    rows = []
    for p in sorted(set(stored) | set(found)):
        a, b = stored.get(p), found.get(p)
        if a == b:
            continue
        note = "removed" if b is None else "added" if a is None else "content changed"
        rows.append((f"file {p}", (a or "-")[:16], (b or "-")[:16], note))
    return rows


def verify_differences(
    entry: dict,
    result: dict,
    files: dict[str, str],
    weights: dict[str, str],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> list[tuple[str, str, str, str]]:
    """Everything in which a recomputation disagrees with an entry: (what, entry, recomputed, note)."""
    rows = file_differences({f["path"]: f["sha256"] for f in entry["samples"]["files"]}, files)
    if entry["samples"]["sha256"] != result["samples"]["sha256"]:
        rows.append(("samples sha256", entry["samples"]["sha256"][:16], result["samples"]["sha256"][:16], "hash"))
    er, rr = entry["result"]["reference"], result["reference"]
    if er.get("sha256") != rr.get("sha256"):
        rows.append(("reference sha256", str(er.get("sha256"))[:16], str(rr.get("sha256"))[:16], "hash"))
    ep, rp = entry["protocol"], result["protocol"]
    if (ep["name"], ep["version"]) != (rp["name"], rp["version"]):
        rows.append(("protocol", f"{ep['name']} v{ep['version']}", f"{rp['name']} v{rp['version']}", "protocol"))
    for name in sorted(set(entry["weights"]) | set(weights)):
        a, b = entry["weights"].get(name), weights.get(name)
        if a != b:
            rows.append((f"weights {name}", str(a)[:16], str(b)[:16], "hash"))
    if entry["comparable"] != result["comparable"]:
        rows.append(("comparable", str(entry["comparable"]), str(result["comparable"]), "weights kind"))
    rows += metric_differences(entry["result"]["metrics"], result["metrics"], rtol, atol)
    rows += _condition_differences(entry["result"].get("per_condition"), result.get("per_condition"), rtol, atol)
    return rows


def metric_differences(em: dict, rm: dict, rtol: float, atol: float, *, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(what, stored, recomputed, note) for every metric key missing on one side or differing beyond noise."""
    rows = []
    for key in sorted(set(em) | set(rm)):
        if key not in rm or key not in em:
            rows.append((prefix + key, "present" if key in em else "-", "present" if key in rm else "-",
                         "metric missing"))
            continue
        a, b = em[key], rm[key]
        # a rank statistic (AUROC, accuracy) moves in steps of one test pair or image; its tolerance comes from
        # the recomputation (never from the entry, which could claim any), and the entry must state the same one
        key_atol = max(atol, _finite(b.get("verify_atol")))
        if _finite(a.get("verify_atol")) != _finite(b.get("verify_atol")):
            rows.append((f"{prefix}{key}.verify_atol", _g(a.get("verify_atol")), _g(b.get("verify_atol")), "differs"))
        for field in ("value", "real_vs_real"):
            if not _close(a.get(field), b.get(field), rtol, key_atol):
                rows.append((f"{prefix}{key}.{field}", _g(a.get(field)), _g(b.get(field)),
                             _rel(a.get(field), b.get(field))))
        ca, cb = a.get("ci") or [None, None], b.get("ci") or [None, None]
        for i, side in enumerate(("lo", "hi")):
            if not _close(ca[i], cb[i], rtol, key_atol):
                rows.append((f"{prefix}{key}.ci_{side}", _g(ca[i]), _g(cb[i]), _rel(ca[i], cb[i])))
        for field in ("n_gen", "n_ref", "higher_is_better"):
            if a.get(field) != b.get(field):
                rows.append((f"{prefix}{key}.{field}", str(a.get(field)), str(b.get(field)), "differs"))
    return rows


def _condition_differences(ec: dict | None, rc: dict | None, rtol: float, atol: float) -> list[tuple[str, str, str, str]]:
    """The ``per_condition`` blocks: the same conditions, counts and skip reasons, and every number as above."""
    ec, rc = (ec or {}).get("conditions", {}), (rc or {}).get("conditions", {})
    rows = []
    for lab in sorted(set(ec) | set(rc)):
        name = f"per_condition[{lab}]"
        if lab not in ec or lab not in rc:
            rows.append((name, "present" if lab in ec else "-", "present" if lab in rc else "-", "condition missing"))
            continue
        a, b = ec[lab], rc[lab]
        for field in ("n_samples", "n_reference", "skipped"):
            if a.get(field) != b.get(field):
                rows.append((f"{name}.{field}", str(a.get(field)), str(b.get(field)), "differs"))
        rows += metric_differences(a.get("metrics") or {}, b.get("metrics") or {}, rtol, atol, prefix=f"{name}.")
    return rows


def _g(v) -> str:
    return "-" if v is None else f"{v:.10g}"


def _rel(a, b) -> str:
    if a is None or b is None:
        return "missing"
    return f"rel diff {abs(a - b) / max(abs(a), abs(b), 1e-300):.2e}"


@dataclass(frozen=True)
class Tolerance:
    """``auto`` (combined bootstrap CI half-widths), an absolute amount, or a percentage of the entry's value."""

    mode: str  # "auto" | "abs" | "rel"
    amount: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        t = text.strip().lower()
        if t == "auto":
            return cls("auto")
        try:
            if t.endswith("%"):
                amount, mode = float(t[:-1]) / 100.0, "rel"
            else:
                amount, mode = float(t), "abs"
        except ValueError:
            raise UsageError(f"--tolerance {text!r}: use auto, a number (absolute) or a percentage like 5%") from None
        if not math.isfinite(amount) or amount < 0:
            raise UsageError(f"--tolerance {text!r}: must be a finite non-negative amount")
        return cls(mode, amount)

    def allowed(self, old: dict, new: dict) -> float | None:
        """The worsening tolerated for one metric; None when ``auto`` and neither run has a CI."""
        if self.mode == "abs":
            return self.amount
        if self.mode == "rel":
            return self.amount * abs(old["value"])
        halves = [_half_width(m) for m in (old, new)]
        if all(h is None for h in halves):
            return None
        return math.sqrt(sum((h or 0.0) ** 2 for h in halves))


def _half_width(m: dict) -> float | None:
    # a flagged metric (valid: false) has no population interval, but FID keeps its spread at equal N
    ci = m.get("ci") or m.get("ci_equal_n")
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return abs(ci[1] - ci[0]) / 2.0


@dataclass(frozen=True)
class CheckRow:
    key: str
    higher_is_better: bool
    entry: float | None
    new: float | None
    worse_by: float | None  # > 0: worse than the entry, in the metric's own direction
    allowed: float | None
    regressed: bool
    note: str = ""


def regressions(old_metrics: dict, new_metrics: dict, keys: list[str], tolerance: Tolerance) -> list[CheckRow]:
    """One row per key; ``regressed`` when worse by more than allowed, or when the new run lost the metric."""
    rows = []
    for key in keys:
        old, new = old_metrics[key], new_metrics.get(key)
        hib = old["higher_is_better"]
        if old["value"] is None:
            rows.append(CheckRow(key, hib, None, new and new["value"], None, None, False, "entry has no value"))
            continue
        if new is None or new["value"] is None:
            rows.append(CheckRow(key, hib, old["value"], None, None, None, True, "not computed on the new samples"))
            continue
        worse = (old["value"] - new["value"]) if hib else (new["value"] - old["value"])
        allowed = tolerance.allowed(old, new)
        if allowed is None and (old.get("valid") is False or new.get("valid") is False):
            why = (old if old.get("valid") is False else new).get("reason") or "flagged unreliable"
            rows.append(CheckRow(key, hib, old["value"], new["value"], worse, None, False,
                                 f"not checked: {why}; pass --tolerance to check it anyway"))
            continue
        note = "no CI: any worsening fails" if allowed is None else ""
        regressed = worse > (allowed or 0.0)
        rows.append(CheckRow(key, hib, old["value"], new["value"], worse, allowed, regressed, note))
    return rows


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width text table (stdout is read by people and by CI logs)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
