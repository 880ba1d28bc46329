"""The registered feature-distribution metrics ``fd_inf`` and ``ks_*`` (``fid``, ``kid`` and ``prdc`` live in
``fid.py``, ``kid.py`` and ``prdc.py``, beside their estimators): each is its two value functions over the functional API
(``estimate``: value and interval; ``point``: the bare estimate the real-vs-real floor uses). The engine
(``engine/metric_runner.py``) runs them per extractor, adds the floor, the key suffix and the direction.

They sit above ``functional`` (which builds on the estimators in ``fd_inf.py`` and ``ks.py``), so no estimator
module imports the functional API back.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from . import functional as F
from .base import EvalContext, FeaturePair, FigureSpec, MetricValue, TwoSampleMetric
from .common import classifier_of, float64_device, missing_classifier, missing_features
from .fd_inf import fd_inf_two_sample
from .ks import ks_battery


class FDInf(TwoSampleMetric):
    name = "fd_inf"
    version = "2"  # 2: extrapolates both set sizes; clipped at 0; flagged below 1 row per dim
    outputs: ClassVar[dict[str, bool]] = {"fd_inf": False}

    def skip_reason(self, ctx: EvalContext) -> str | None:
        if len(ctx.gen) < 10 or len(ctx.ref) < 20:
            return f"FD_inf needs at least 10 generated and 20 reference images, got {len(ctx.gen)}, {len(ctx.ref)}"
        return None

    @staticmethod
    def _kw(pair: FeaturePair) -> dict:
        st = pair.settings
        return dict(points=st.fd_inf_points, min_fraction=st.fd_inf_min_fraction, seed=st.seed,
                    device=float64_device(pair.device))

    def estimate(self, pair: FeaturePair) -> MetricValue:
        return F.fd_inf(real=pair.ref, fake=pair.gen, n_bootstrap=pair.settings.fd_inf_n_bootstrap,
                        alpha=pair.settings.alpha, **self._kw(pair))

    def point(self, x, y, pair: FeaturePair) -> float:
        return max(0.0, fd_inf_two_sample(x, y, **self._kw(pair))[0])

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        sizes, fd = value.get("sizes"), value.get("fd")
        if not (sizes and fd and len(sizes) == len(fd)):
            return []
        return [FigureSpec("fd_against_1_over_n", key, f"fd_{key}", f"{key}: FD against 1/N",
                           "the intercept at 1/N = 0 is FD_inf", value)]


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
