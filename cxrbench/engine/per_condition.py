"""Feature metrics per condition: the samples requested with label L against the reference images carrying L.

A conditional generator writes one 0/1 column per requested label into the samples' ``manifest.csv``
(``cxrbench sample``); the reference carries its labels (``labels.csv``, or the label columns of a protocol's
shipped features). For every label some sample requested, each metric that declares ``per_condition`` (the
feature-distribution metrics: FID, KID, FD_inf, PRDC, the KS batteries) is computed again (``run_metric``)
on the two row subsets, so each value has its own bootstrap CI and its own real-vs-real floor
(two halves of the condition's reference images). "Healthy" is the ``No Finding`` label.

A condition gets values only with at least ``MIN_SAMPLES`` samples and ``MIN_REFERENCE`` reference images:
below 20 rows a 64-d covariance (FID) is singular and the floor splits the reference into halves of 10.
Requested conditions that do not qualify are listed with the reason. Unconditional samples (no label
columns) get no block, so their results are unchanged.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..data.labels import LABELS
from ..metrics.base import EvalContext, FeatureSet
from ..metrics.labels import requested_labels
from .metric_runner import run_metric

MIN_SAMPLES = 20
MIN_REFERENCE = 20


def _rows(fs: FeatureSet, idx: np.ndarray) -> FeatureSet:
    """The rows ``idx`` of a feature set (features, tables and patient ids); no images: per-condition metrics
    read features only."""
    def pick(df):
        return None if df is None else df.iloc[idx].reset_index(drop=True)

    return dataclasses.replace(
        fs, ids=[fs.ids[i] for i in idx], hashes=[fs.hashes[i] for i in idx],
        features={k: np.asarray(v)[idx] for k, v in fs.features.items()}, labels=pick(fs.labels),
        manifest=pick(fs.manifest), load_images=None, stats=None,
        patient_ids=None if fs.patient_ids is None else [fs.patient_ids[i] for i in idx],
    )


def _order(label: str) -> tuple[int, str]:
    return (LABELS.index(label) if label in LABELS else len(LABELS), label)


def per_condition(plan, ctx: EvalContext, computed, *, min_samples: int = MIN_SAMPLES,
                  min_reference: int = MIN_REFERENCE) -> dict | None:
    """The result's ``per_condition`` block, or None when the samples requested no labels.

    ``plan``: the run's metric objects; ``computed``: names of those that ran on the whole sets (a metric
    skipped there is skipped per condition too).
    """
    requested = {lab: np.flatnonzero(v) for lab, v in requested_labels(ctx.gen.manifest).items() if v.any()}
    if not requested:
        return None
    metrics = [m for m in plan if getattr(m, "per_condition", False) and m.name in computed]
    # the reference's labels: columns named as LABELS (labels.csv, shipped label columns); blank = unknown
    ref_labels = {lab: np.flatnonzero(v) for lab, v in requested_labels(ctx.ref.labels).items()}
    conditions = {}
    for lab in sorted(requested, key=_order):
        g, r = requested[lab], ref_labels.get(lab, np.empty(0, dtype=np.int64))
        entry: dict = {"n_samples": len(g), "n_reference": len(r)}
        if ctx.ref.stats is not None:
            entry["skipped"] = "the reference is saved statistics (mean/covariance), without per-image labels"
        elif ctx.ref.labels is None:
            entry["skipped"] = "the reference has no labels (a labels.csv with one 0/1 column per label)"
        elif lab not in ref_labels:
            entry["skipped"] = f"the reference's labels have no {lab!r} column"
        elif len(g) < min_samples:
            entry["skipped"] = f"{len(g)} sample(s) requested it; at least {min_samples} are needed"
        elif len(r) < min_reference:
            entry["skipped"] = f"{len(r)} reference image(s) carry it; at least {min_reference} are needed"
        else:
            entry.update(_compute(metrics, dataclasses.replace(ctx, gen=_rows(ctx.gen, g), ref=_rows(ctx.ref, r),
                                                               train=None)))
        conditions[lab] = entry
    return {"min_samples": min_samples, "min_reference": min_reference,
            "metric_names": [m.name for m in metrics], "conditions": conditions}


def _compute(metrics, sub: EvalContext) -> dict:
    values, skipped = {}, {}
    # a subset's own warnings (e.g. fewer rows than dimensions) belong to its condition, not to the run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in metrics:
            why = m.skip_reason(sub)
            if why:
                skipped[m.name] = why
                continue
            values.update({k: v.to_dict() for k, v in run_metric(m, sub).items()})
    out: dict = {"metrics": dict(sorted(values.items()))}
    if skipped:
        out["skipped_metrics"] = skipped
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    if notes:
        out["warnings"] = notes
    return out
