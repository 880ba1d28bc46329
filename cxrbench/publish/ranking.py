"""Grouping and ranking of leaderboard entries.

Ranking rules: only entries that share protocol name *and* version *and* extractor weights (the sha256 of
every extractor's weights file) share a table; within it, only entries with ``comparable: true`` (every
extractor ran with its published weights) are ranked; the others are listed apart, unranked. A metric's
direction comes from ``higher_is_better`` in the entries themselves (which the metric class declared), never
from this module. Reference rows (real images) are placed where their value falls and take no rank.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from ..errors import DataError
from ..registry import METRICS, PROTOCOLS

#: the ranking metric where the protocol names none (``--protocol default``, your own reference)
HEADLINE_METRIC = "fid"


def weights_signature(entry: dict) -> tuple[tuple[str, str], ...]:
    """The extractors and the sha256 of each one's weights: entries are ranked together only when equal."""
    return tuple(sorted(entry["weights"].items()))


@dataclass
class Group:
    """One ranked table: entries sharing protocol name and version *and* extractor weights (``weights``).

    A protocol version whose comparable entries used different weights gets one group per weights signature
    (``split``); its non-comparable entries are listed once, with the last of its groups.
    """

    protocol: str
    version: str
    weights: tuple[tuple[str, str], ...] = ()
    ranked: list[dict] = field(default_factory=list)  # comparable: true
    unranked: list[dict] = field(default_factory=list)  # comparable: false, never ranked
    directions: dict[str, bool] = field(default_factory=dict)  # metric key -> higher_is_better
    split: bool = False

    @property
    def protocol_slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.protocol}-v{self.version}")

    @property
    def slug(self) -> str:
        if not self.split:
            return self.protocol_slug
        # a short, stable name for the weights signature keeps table ids and plot names apart
        return f"{self.protocol_slug}-w" + hashlib.sha256(json.dumps(self.weights).encode()).hexdigest()[:8]


def _directions(entries: list[dict], protocol: tuple[str, str]) -> dict[str, bool]:
    directions: dict[str, bool] = {}
    for e in entries:
        for k, m in e["result"]["metrics"].items():
            hib = m["higher_is_better"]
            if directions.setdefault(k, hib) != hib:
                raise DataError(
                    f"entries disagree on the direction of {k!r} under protocol {protocol[0]} v{protocol[1]} "
                    f"({e['slug']} says higher_is_better={hib}); the metric changed without a protocol version bump"
                )
    return directions


def group_entries(entries: list[dict]) -> list[Group]:
    """Split entries by (protocol name, version, extractor weights); directions read from the entries,
    checked to agree within a protocol version."""
    by_protocol: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        by_protocol.setdefault((e["protocol"]["name"], str(e["protocol"]["version"])), []).append(e)
    out: list[Group] = []
    for key in sorted(by_protocol):
        directions = _directions(by_protocol[key], key)
        ranked: dict[tuple, list[dict]] = {}
        for e in by_protocol[key]:
            if e["comparable"]:
                ranked.setdefault(weights_signature(e), []).append(e)
        unranked = [e for e in by_protocol[key] if not e["comparable"]]
        groups = [Group(*key, weights=sig, ranked=ranked[sig], directions=directions, split=len(ranked) > 1)
                  for sig in sorted(ranked)] or [Group(*key, directions=directions)]
        groups[-1].unranked = unranked
        out += groups
    return out


def metric_value(entry: dict, key: str) -> float | None:
    m = entry["result"]["metrics"].get(key)
    return None if m is None else m["value"]


def rank(entries: list[dict], key: str, higher_is_better: bool) -> list[tuple[int | None, dict]]:
    """Best first by ``key`` in its own direction; ties share a rank (1, 2, 2, 4); missing values last,
    unranked (None). Ties keep slug order so the output is deterministic."""
    have = [e for e in entries if metric_value(e, key) is not None]
    none = [e for e in entries if metric_value(e, key) is None]
    sign = -1.0 if higher_is_better else 1.0
    have.sort(key=lambda e: (sign * metric_value(e, key), e["slug"]))
    out: list[tuple[int | None, dict]] = []
    for i, e in enumerate(have):
        r = out[-1][0] if i and metric_value(e, key) == metric_value(have[i - 1], key) else i + 1
        out.append((r, e))
    return out + [(None, e) for e in sorted(none, key=lambda e: e["slug"])]


def default_rank_key(keys: list[str], protocol: str | None = None, extractors=()) -> str | None:
    """The protocol's headline metric (``headline`` on its registered class, e.g. cxr64's ``fid_cxr64``) when the
    table has it; else the first output of ``HEADLINE_METRIC`` (FID, the field's headline number) for the
    table's ``extractors``, alphabetically; else the first key."""
    keys = sorted(keys)
    if protocol and protocol in PROTOCOLS:
        headline = getattr(PROTOCOLS.get(protocol), "headline", None)
        if headline in keys:
            return headline
    own = METRICS.get(HEADLINE_METRIC)().output_keys(sorted(extractors))
    return ([k for k in keys if k in own] or keys or [None])[0]


def is_reference_row(e: dict) -> bool:
    """A real-image row (held-out images, the training images): the board's scale, never ranked as a model."""
    return e["card"].get("kind") == "reference"


def ordered(rows_e: list[dict], key: str | None, hib: bool) -> list[tuple[int | None, dict]]:
    """Models ranked by ``key``; reference rows placed where their value falls, without a rank."""
    models = [e for e in rows_e if not is_reference_row(e)]
    refs = [e for e in rows_e if is_reference_row(e)]
    if not key:
        return [(None, e) for e in models + refs]
    ranked = rank(models, key, hib)
    sign = -1.0 if hib else 1.0

    def order(t):
        v = metric_value(t[1], key)
        return (v is None, 0.0 if v is None else sign * v, is_reference_row(t[1]), t[1]["slug"])

    return sorted(ranked + [(None, e) for e in refs], key=order)
