"""Metric interface and the evaluation context metrics read from.

A metric is a pure function of cached features (or of a few decoded images): it declares its output
keys with ``higher_is_better`` and a ``version``; the leaderboard reads those, never a hard-coded table.
Per-extractor metrics (``per_extractor = True``) are computed once for every embedding extractor that ran
and their keys get the extractor's suffix: ``fid`` -> ``fid_inception``, ``fid_xrv``.

Two kinds of metric:

- ``TwoSampleMetric``: a value of the samples' features against the reference's (FID, KID, PRDC, FD_inf, the KS
  batteries). It supplies ``estimate`` (value and interval) and ``point`` (the bare estimate); the engine
  (``cxrbench.engine.metric_runner.run_metric``) runs it for every extractor, adds the real-vs-real floor,
  suffixes the keys and sets the direction from ``outputs``.
- any other ``Metric`` (memorization, MS-SSIM, label metrics, RRS) implements ``compute(ctx)`` itself.

Either kind may draw its own figures in the report: ``figures(key, value)`` returns ``FigureSpec``s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..features.base import FeatureKind


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
    #: the estimate minus its bias estimate (FID: half subsets; FD_inf, labels: the bootstrap), where it is biased
    value_bias_corrected: float | None = None
    #: False where the metric flags itself as unreliable (interval not expected to cover; see ``reason``)
    valid: bool = True
    reason: str | None = None
    #: set where the interval's coverage, measured on real features (``coverage_table``), misses 95 +/- 3%:
    #: ``{"measured", "nominal", "population", "repetitions", "benchmark"}``; tables print the measured coverage
    ci_coverage: dict | None = None

    def __float__(self) -> float:
        """The value, as ``float(torchmetrics_fid.compute())`` or clean-fid's number is used."""
        return float(self.value)

    @property
    def estimate(self) -> float:
        """The number ``ci`` is an interval for: the population value's estimate. For a biased estimator
        (FID, FD of labels) that is ``value_bias_corrected``, not ``value`` (FID at these N, which overstates
        the population FD; at 500 x 64-d rows by several times)."""
        return self.value if self.value_bias_corrected is None else self.value_bias_corrected

    def __str__(self) -> str:
        """One line a reader cannot misread: the value at these N, and the estimate the interval belongs to."""
        at = f"{self.value:.4g} (at N = {self.n_gen}/{self.n_ref})"
        if not self.valid:
            return f"{at}; not valid: {self.reason}"
        if self.ci is None:
            return at
        level = "95%" if self.ci_coverage is None else f"{self.ci_coverage['measured']:.1%}-coverage (measured; not 95%)"
        ci = f"{level} CI [{self.ci[0]:.4g}, {self.ci[1]:.4g}] ({self.ci_method})"
        if self.value_bias_corrected is None:
            return f"{at}, {ci}"
        return f"{at}; population estimate {self.value_bias_corrected:.4g} (bias-corrected), {ci}"

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
        if self.ci_coverage is not None and self.ci is not None:
            d["ci_coverage"] = dict(self.ci_coverage)
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
        return [n for n, s in self.extractors.items() if s.get("kind") == FeatureKind.EMBEDDING]


@dataclass
class FigureSpec:
    """One figure of the report (``Metric.figures``), drawn by the report's renderer for ``kind`` from ``data``.

    Kinds the report draws (``cxrbench.publish.report.RENDERERS``), with their ``data``: ``"ks_histogram"`` (a KS
    value dict with ``dims``), ``"fd_against_1_over_n"`` (an FD_inf value dict with ``sizes`` and ``fd``),
    ``"prevalence"`` (``{label: {"samples", "reference"}}``), ``"per_label"`` (``{"per_label": {label: v},
    "reference_per_label": {label: v} or None}``), ``"nearest_pairs"`` (``[{"sample", "train", "distance"}]``,
    paths relative to the samples' and training folders), and ``"note"`` (no figure: ``caption`` is a note
    beside the table). A kind the report does not draw becomes a note saying so.
    """

    kind: str
    key: str  # the result's metric key the figure shows (``fd_inf_xrv``)
    name: str  # file stem and anchor, unique in the report
    title: str = ""
    caption: str = ""
    data: Any = None


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

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        """The report's figures (and notes) for one stored output: ``key`` as in the result (``fid_xrv``),
        ``value`` its stored dict (``MetricValue.to_dict()``). None by default."""
        return []


@dataclass
class FeaturePair:
    """What a ``TwoSampleMetric`` sees for one extractor; built by the engine.

    ``ref`` is None where the reference is saved statistics (``cxrbench stats``): ``ref_stats`` then holds
    ``{"mu", "sigma", "n", "real_vs_real", ...}`` and only metrics with ``accepts_reference_stats`` get here.
    """

    gen: np.ndarray  # (N_gen, D)
    ref: np.ndarray | None  # (N_ref, D), rows in the reference's canonical order
    extractor: str
    names: list[str]  # the D dimensions' names (``common.dimension_names``)
    settings: Any  # common.MetricSettings (common imports this module)
    device: str = "cpu"
    patient_ids: list[str] | None = None  # the reference's, for the patient-wise real-vs-real split
    ref_stats: dict | None = None


class TwoSampleMetric(Metric):
    """A metric of the samples' features against the reference's; the engine owns the rest.

    A subclass supplies two value functions; ``cxrbench.engine.metric_runner.run_metric(metric, ctx)`` runs it
    once per extractor (``extractors_of``), computes the real-vs-real floor with ``point`` on two halves of the
    reference (``common.matched_floor``) and the metric's own value at the floor's sizes, suffixes the keys with
    ``_{extractor}`` (when ``per_extractor``) and sets ``higher_is_better`` from ``outputs``:

    - ``estimate(pair)``: the value with its interval: a ``MetricValue`` (one output) or ``{output: MetricValue}``;
    - ``point(x, y, pair)``: the bare estimate of rows ``x`` against rows ``y``: a float, or
      ``{output: float}``.

    Adding one is a class and a registration (``METRICS.register("mmd")`` or a ``cxrbench.metrics`` entry
    point)::

        from cxrbench.metrics.base import TwoSampleMetric, MetricValue

        class MeanDistance(TwoSampleMetric):  # the README's example
            name = "mean_dist"
            outputs = {"mean_dist": False}  # -> mean_dist_<extractor>, lower is better

            def point(self, x, y, pair):
                return float(np.linalg.norm(x.mean(0) - y.mean(0)))

            def estimate(self, pair):
                return MetricValue(self.point(pair.gen, pair.ref, pair), False, n_gen=len(pair.gen),
                                   n_ref=len(pair.ref))

    Optional hooks: ``extractors_of(ctx)`` (default: every embedding extractor), ``prepare(pair)`` (e.g. drop
    columns), ``skip_reason(ctx)``. ``compute`` is not for direct calls: use ``run_metric``.
    """

    per_extractor = True
    per_condition = True

    def extractors_of(self, ctx: EvalContext) -> list[str]:
        """The extractors this metric runs on (their features must be in both sets)."""
        return ctx.embedding_extractors()

    def prepare(self, pair: FeaturePair) -> FeaturePair:
        """The pair as ``estimate`` and ``point`` see it (e.g. columns dropped); unchanged by default."""
        return pair

    def estimate(self, pair: FeaturePair) -> MetricValue | dict[str, MetricValue]:  # pragma: no cover - interface
        raise NotImplementedError

    def point(self, x: np.ndarray, y: np.ndarray, pair: FeaturePair) -> float | dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        raise TypeError(f"{type(self).__name__} is a TwoSampleMetric: the engine runs it; call "
                        "cxrbench.engine.metric_runner.run_metric(metric, ctx)")
