"""What the engine calls on a protocol: the base class of every entry in ``registry.PROTOCOLS``.

A protocol fixes what makes numbers comparable (extractors, metrics, reference sets, sample count) and/or
adds its own metrics after the engine's. The engine reaches protocols only through this interface and the
registry, never by importing one, so a third-party protocol plugs in exactly as the built-in ones do.
"""

from __future__ import annotations

from typing import ClassVar

from ..data.precomputed import PrecomputedSet
from ..registry import PROTOCOLS


class Protocol:
    """Base class of a registered protocol; every hook has a neutral default.

    ``sample_count``: the N a comparable result evaluates (the first N samples in sha256 order), or None.
    ``headline``: the metric key a leaderboard ranks by. ``adds_metrics``: ``after_metrics`` contributes
    metrics (the result then records ``protocol:NAME`` among its metric versions).
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    sample_count: ClassVar[int | None] = None
    headline: ClassVar[str | None] = None
    adds_metrics: ClassVar[bool] = False

    def prepare(self, config, reference, train_reference):
        """``(config, reference, train_reference)`` the evaluation uses: a protocol that ships its sets and
        network fixes them here (and refuses conflicting requests); the default changes nothing."""
        return config, reference, train_reference

    def shipped_samples(self, which: str) -> PrecomputedSet | None:
        """The protocol's real-image set ``which`` (``NAME:which`` as a samples argument: the leaderboard's
        reference rows), rows in sha256 order; None when the protocol ships no such set."""
        return None

    def after_metrics(self, ctx, sources: dict) -> dict:
        """Metrics of the protocol's own, on the same sets and features, after the engine's metrics."""
        return {}

    def sections(self) -> dict:
        """Top-level result blocks of the protocol's own (how its metrics were computed), after
        ``after_metrics``; none by default."""
        return {}


def protocol_samples(spec) -> PrecomputedSet | None:
    """``"NAME:which"`` of a registered protocol that ships that set (``cxr64:heldout``), else None."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        return None
    name, which = spec.split(":")
    if not which or name not in PROTOCOLS:
        return None
    return PROTOCOLS.get(name)().shipped_samples(which)
