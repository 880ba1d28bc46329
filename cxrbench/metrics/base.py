"""Metric interface and the evaluation context metrics read from.

A metric is a pure function of cached features (or of a few decoded images): it declares its output
keys with ``higher_is_better`` and a ``version``; the leaderboard reads those, never a hard-coded table.
Per-extractor metrics (``per_extractor = True``) are computed once for every embedding extractor that ran
and their keys get the extractor's suffix: ``fid`` -> ``fid_inception``, ``fid_xrv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class MetricValue:
    value: float
    higher_is_better: bool
    ci: tuple[float, float] | None = None
    n_gen: int = 0
    n_ref: int = 0
    real_vs_real: float | None = None
    #: metric-specific details (std, worst dimension, per-label tables ...); JSON-serialisable
    extra: dict[str, Any] = field(default_factory=dict)
    #: how ``ci`` was made (e.g. "basic bootstrap (both sets)"), None without an interval
    ci_method: str | None = None
    #: the estimate minus the bootstrap's bias estimate, where the estimator is biased (FID, FD_inf, labels)
    value_bias_corrected: float | None = None
    #: False where the metric flags itself as unreliable (interval not expected to cover; see ``reason``)
    valid: bool = True
    reason: str | None = None

    def to_dict(self) -> dict:
        d = {
            "value": _num(self.value),
            "ci": None if self.ci is None else [_num(self.ci[0]), _num(self.ci[1])],
            "higher_is_better": bool(self.higher_is_better),
            "n_gen": int(self.n_gen),
            "n_ref": int(self.n_ref),
            "real_vs_real": _num(self.real_vs_real),
            "valid": bool(self.valid),
        }
        if self.reason:
            d["reason"] = self.reason
        if self.ci_method:
            d["ci_method"] = self.ci_method
        if self.value_bias_corrected is not None:
            d["value_bias_corrected"] = _num(self.value_bias_corrected)
        d.update(self.extra)
        return d


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


@dataclass
class FeatureSet:
    """Features of one image set, rows in the set's canonical order (sorted by file hash, then path)."""

    name: str  # "samples", "reference", "train"
    ids: list[str]  # relative paths (or "array[i]") in canonical order
    hashes: list[str]
    features: dict[str, np.ndarray]  # extractor name -> (N, D) float32
    labels: Any = None  # pandas.DataFrame aligned with ids, or None
    manifest: Any = None  # pandas.DataFrame aligned with ids (samples only), or None
    patient_ids: list[str] | None = None
    load_images: Callable[[list[int]], Any] | None = None  # indices -> (k, 1, H, W) float32 tensor list
    #: reference given as cached statistics: extractor -> {"mu", "sigma", "n", "real_vs_real", ...}
    stats: dict[str, dict] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EvalContext:
    gen: FeatureSet
    ref: FeatureSet
    train: FeatureSet | None
    extractors: dict[str, dict]  # name -> spec()
    config: Any  # EvalConfig
    device: str = "cpu"

    def embedding_extractors(self) -> list[str]:
        return [n for n, s in self.extractors.items() if s.get("kind") == "embedding"]


class Metric:
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: output key (without extractor suffix) -> higher_is_better
    outputs: ClassVar[dict[str, bool]] = {}
    per_extractor: ClassVar[bool] = False
    #: extractors this metric needs even if the user did not ask for them (e.g. "xrv-classifier")
    requires_extractors: ClassVar[tuple[str, ...]] = ()
    #: can run when the reference is given as saved statistics (mean/covariance) rather than images
    accepts_reference_stats: ClassVar[bool] = False
    #: a pure function of the samples' and the reference's features, so it is also computed per condition
    #: (samples requested with label L against reference images carrying L; ``engine/per_condition.py``)
    per_condition: ClassVar[bool] = False

    def output_keys(self, extractors: list[str]) -> dict[str, bool]:
        if not self.per_extractor:
            return dict(self.outputs)
        return {f"{k}_{e}": v for e in extractors for k, v in self.outputs.items()}

    def skip_reason(self, ctx: EvalContext) -> str | None:
        """Why this metric cannot run on ``ctx`` (no ``--train-reference``, no manifest labels ...), or None.

        The harness asks before ``compute`` and records the metric under ``skipped`` with this reason;
        ``compute`` on such a context returns ``{}``.
        """
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:  # pragma: no cover - interface
        raise NotImplementedError
