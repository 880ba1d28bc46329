"""``run_metric(metric, ctx)``: one metric on one evaluation context, as the engine runs it.

A ``TwoSampleMetric`` supplies only its value functions; the fan-out is here, once for every such metric: for
each extractor it runs on, the samples' and reference's features (or the reference's saved statistics), the
value with its interval (``estimate``), the real-vs-real floor of two reference halves and the metric at the
floor's sizes (``point`` through ``matched_floor``), keys suffixed ``_{extractor}`` and ``higher_is_better``
from the metric's ``outputs``. Any other metric computes itself (``metric.compute(ctx)``).
"""

from __future__ import annotations

from ..config import MetricSettings
from ..metrics.base import EvalContext, FeaturePair, Metric, MetricValue, TwoSampleMetric
from ..metrics.common import dimension_names, features_of, matched_floor, with_floor


def run_metric(metric: Metric, ctx: EvalContext) -> dict[str, MetricValue]:
    """``{output key: MetricValue}`` of ``metric`` on ``ctx``; ``{}`` where it has a skip reason."""
    if not isinstance(metric, TwoSampleMetric):
        return metric.compute(ctx)
    if metric.skip_reason(ctx):
        return {}
    st = MetricSettings.from_config(ctx.config)
    out = {}
    for ext in metric.extractors_of(ctx):
        pair = metric.prepare(_pair(ctx, ext, st))
        values = _by_output(metric, metric.estimate(pair))
        if pair.ref is None:  # saved statistics: their floor (FID of the reference's halves) comes with them
            for mv in values.values():
                mv.real_vs_real = pair.ref_stats.get("real_vs_real")
                mv.extra.update({"real_vs_real_n": pair.ref_stats.get("real_vs_real_n"),
                                 "reference_from_statistics": True})
        else:
            floor, matched, sizes = matched_floor(lambda x, y, pair=pair: metric.point(x, y, pair), pair.gen, pair.ref, st,
                                                  pair.patient_ids)
            for key, mv in values.items():
                with_floor(mv, _pick(floor, key), _pick(matched, key), sizes)
        for key, mv in values.items():
            mv.higher_is_better = metric.outputs[key]
            out[f"{key}_{ext}" if metric.per_extractor else key] = mv
    return out


def _pair(ctx: EvalContext, ext: str, st: MetricSettings) -> FeaturePair:
    gen = features_of(ctx.gen, ext)
    stats = (ctx.ref.stats or {}).get(ext) if ext not in ctx.ref.features else None
    ref = None if stats is not None else features_of(ctx.ref, ext)
    return FeaturePair(gen=gen, ref=ref, extractor=ext, names=dimension_names(ctx, ext, gen.shape[1]), settings=st,
                       device=ctx.device, patient_ids=ctx.ref.patient_ids, ref_stats=stats)


def _by_output(metric: TwoSampleMetric, values) -> dict[str, MetricValue]:
    """``estimate``'s answer keyed by output: a lone MetricValue is the metric's one output."""
    if isinstance(values, MetricValue):
        (key,) = metric.outputs
        return {key: values}
    unknown = set(values) - set(metric.outputs)
    if unknown:
        raise ValueError(f"metric {metric.name!r}: estimate returned {sorted(unknown)}, not among its outputs "
                         f"{sorted(metric.outputs)}; declare them in `outputs`")
    return dict(values)


def _pick(x, key: str):
    """One output's number from ``point``'s answer: a float (one output), a dict (several), None (it failed)."""
    return x[key] if isinstance(x, dict) else x
