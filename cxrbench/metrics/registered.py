"""The registered feature-distribution metrics ``ks_*`` (``fid``, ``kid``, ``prdc`` and ``fd_inf`` live in
``fid.py``, ``kid.py``, ``prdc.py`` and ``fd_inf.py``, beside their estimators): each is its two value functions over the functional API
(``estimate``: value and interval; ``point``: the bare estimate the real-vs-real floor uses). The engine
(``engine/metric_runner.py``) runs them per extractor, adds the floor, the key suffix and the direction.

They sit above ``functional`` (which builds on the estimators in ``ks.py``), so no estimator
module imports the functional API back.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from . import functional as F
from .base import EvalContext, FeaturePair, FigureSpec, MetricValue, TwoSampleMetric
from .common import classifier_of, float64_device, missing_classifier, missing_features
from .ks import ks_battery


class KSFeatures(TwoSampleMetric):
    """The KS battery over every dimension of an embedding (Benjamini-Hochberg at ``ks_q``)."""

    name = "ks_features"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_features": False}

    def estimate(self, pair: FeaturePair) -> MetricValue:
        st = pair.settings
        return F.ks_features(real=pair.ref, fake=pair.gen, names=pair.names, q=st.ks_q, n_bootstrap=st.n_bootstrap,
                             seed=st.seed, alpha=st.alpha, device=float64_device(pair.device))

    def point(self, x, y, pair: FeaturePair) -> float:
        return ks_battery(x, y, pair.names, q=pair.settings.ks_q).fraction

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        if isinstance(value.get("dims"), dict) and value["dims"]:
            return [FigureSpec("ks_histogram", key, f"ks_{key}", f"{key}: KS D histogram",
                               "two-sample KS statistic of every dimension; red: rejected after Benjamini-Hochberg",
                               value)]
        if value.get("max_d") is not None:  # the battery had too many dimensions to store each one
            return [FigureSpec("note", key, f"ks_{key}", caption=(
                f"{key}: per-dimension D not stored in the result (too many dimensions); median D "
                f"{value['median_d']:.4g}, max D {value['max_d']:.4g} ({value.get('worst')})."))]
        return []


class _KSOne(KSFeatures):
    """A battery over one non-embedding extractor's named outputs; its key has no extractor suffix."""

    per_extractor = False
    extractor: ClassVar[str] = ""

    def extractors_of(self, ctx: EvalContext) -> list[str]:
        return [self.extractor]

    def skip_reason(self, ctx: EvalContext) -> str | None:
        return missing_features(ctx, [self.extractor])

    def prepare(self, pair: FeaturePair) -> FeaturePair:
        keep = ~(np.isnan(pair.gen).any(0) | np.isnan(pair.ref).any(0))  # e.g. a pathology the head does not predict
        return dataclasses.replace(pair, gen=pair.gen[:, keep], ref=pair.ref[:, keep],
                                   names=[n for n, k in zip(pair.names, keep) if k])


class KSLabels(_KSOne):
    name = "ks_labels"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_labels": False}

    def extractors_of(self, ctx: EvalContext) -> list[str]:
        return [classifier_of(ctx)]

    def skip_reason(self, ctx: EvalContext) -> str | None:
        return missing_classifier(ctx)


class KSPixels(_KSOne):
    name = "ks_pixels"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_pixels": False}
    requires_extractors = ("pixels",)
    extractor = "pixels"
