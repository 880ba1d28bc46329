"""The registered feature-distribution metrics (``fid``, ``fd_inf``, ``kid``, ``prdc``, ``ks_*``): adapters from
an ``EvalContext`` to the functional API, with each metric's real-vs-real floor.

They sit above ``functional`` (which builds on the estimators in ``fid.py``, ``kid.py``, ...), so no estimator
module imports the functional API back.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from . import functional as F
from .base import EvalContext, Metric, MetricValue
from .common import (
    MetricSettings,
    classifier_of,
    dimension_names,
    features_of,
    float64_device,
    matched_floor,
    missing_classifier,
    missing_features,
    with_floor,
)
from .fd_inf import fd_inf_two_sample
from .fid import fid_from_features
from .kid import kid
from .ks import ks_battery
from .prdc import prdc


class FID(Metric):
    name = "fid"
    version = "1"
    outputs = {"fid": False}
    per_extractor = True
    per_condition = True
    accepts_reference_stats = True

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        st = MetricSettings.from_config(ctx.config)
        dev = ctx.device if ctx.device != "mps" else "cpu"  # mps has no float64
        kw = dict(n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha, device=dev)
        out = {}
        for ext in ctx.embedding_extractors():
            g = ctx.gen.features[ext]
            cached = (ctx.ref.stats or {}).get(ext) if ext not in ctx.ref.features else None
            if cached is not None:  # reference given as statistics (`cxrbench stats`): its floor comes with them
                mv = F.fid(g, ref_stats=cached, **kw)
                mv.real_vs_real = cached.get("real_vs_real")
                mv.extra.update({"real_vs_real_n": cached.get("real_vs_real_n"), "reference_from_statistics": True})
            else:
                r = ctx.ref.features[ext]
                mv = with_floor(F.fid(g, r, **kw), *matched_floor(fid_from_features, g, r, st, ctx.ref.patient_ids))
            out[f"fid_{ext}"] = mv
        return out


class KID(Metric):
    name = "kid"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"kid": False}
    per_extractor = True
    per_condition = True

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        st = MetricSettings.from_config(ctx.config)
        kw = dict(subset_size=st.kid_subset_size, n_subsets=st.kid_subsets, seed=st.seed,
                  device=float64_device(ctx.device))
        out = {}
        for e in ctx.embedding_extractors():
            gen, ref = features_of(ctx.gen, e), features_of(ctx.ref, e)
            mv = F.kid(gen, ref, boot_subsets=st.kid_boot_subsets, n_bootstrap=st.n_bootstrap, alpha=st.alpha, **kw)
            out[f"kid_{e}"] = with_floor(mv, *matched_floor(lambda x, y: kid(x, y, **kw).mean, gen, ref, st,
                                                            ctx.ref.patient_ids))
        return out


class PRDC(Metric):
    name = "prdc"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"precision": True, "recall": True, "density": True, "coverage": True}
    per_extractor = True
    per_condition = True

    def skip_reason(self, ctx: EvalContext) -> str | None:
        k = MetricSettings.from_config(ctx.config).prdc_k
        if len(ctx.gen) <= k or len(ctx.ref) <= 2 * k + 1:
            return f"PRDC with k={k} needs more than {k} generated and {2 * k + 1} reference images"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        kw = dict(k=st.prdc_k, boot_candidates=st.prdc_boot_candidates, device=ctx.device, budget=st.knn_budget)
        out = {}
        for e in ctx.embedding_extractors():
            gen, ref = features_of(ctx.gen, e), features_of(ctx.ref, e)
            res = F.prdc(gen, ref, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha, **kw)
            floor, matched, sizes = matched_floor(lambda x, y: prdc(y, x, **kw).as_dict(), gen, ref, st,
                                                  ctx.ref.patient_ids)
            for key, mv in res.items():
                out[f"{key}_{e}"] = with_floor(mv, None if floor is None else floor[key],
                                               None if matched is None else matched[key], sizes)
        return out


class FDInf(Metric):
    name = "fd_inf"
    version = "2"  # 2: extrapolates both set sizes; clipped at 0; flagged below 1 row per dim
    outputs: ClassVar[dict[str, bool]] = {"fd_inf": False}
    per_extractor = True
    per_condition = True

    def skip_reason(self, ctx: EvalContext) -> str | None:
        if len(ctx.gen) < 10 or len(ctx.ref) < 20:
            return f"FD_inf needs at least 10 generated and 20 reference images, got {len(ctx.gen)}, {len(ctx.ref)}"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        kw = dict(points=st.fd_inf_points, min_fraction=st.fd_inf_min_fraction, seed=st.seed,
                  device=float64_device(ctx.device))
        out = {}
        for e in ctx.embedding_extractors():
            gen, ref = features_of(ctx.gen, e), features_of(ctx.ref, e)
            mv = F.fd_inf(gen, ref, n_bootstrap=st.fd_inf_n_bootstrap, alpha=st.alpha, **kw)
            out[f"fd_inf_{e}"] = with_floor(mv, *matched_floor(
                lambda x, y: max(0.0, fd_inf_two_sample(x, y, **kw)[0]), gen, ref, st, ctx.ref.patient_ids))
        return out


def ks_metric_value(gen, ref, names, *, st: MetricSettings, device, patient_ids=None) -> MetricValue:
    """The battery as a MetricValue: two-sample bootstrap CI of the rejected fraction and the matched floor."""
    mv = F.ks_features(gen, ref, names=names, q=st.ks_q, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha,
                       device=float64_device(device))
    return with_floor(mv, *matched_floor(lambda x, y: ks_battery(x, y, names, q=st.ks_q).fraction, gen, ref, st,
                                         patient_ids))


class KSFeatures(Metric):
    name = "ks_features"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_features": False}
    per_extractor = True
    per_condition = True

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        st = MetricSettings.from_config(ctx.config)
        out = {}
        for e in ctx.embedding_extractors():
            gen, ref = features_of(ctx.gen, e), features_of(ctx.ref, e)
            out[f"ks_features_{e}"] = ks_metric_value(
                gen, ref, dimension_names(ctx, e, gen.shape[1]), st=st, device=ctx.device,
                patient_ids=ctx.ref.patient_ids,
            )
        return out


class _KSOne(Metric):
    """A battery over one non-embedding extractor's named outputs."""

    per_condition = True
    extractor: ClassVar[str] = ""

    def extractor_of(self, ctx: EvalContext) -> str:
        return self.extractor

    def skip_reason(self, ctx: EvalContext) -> str | None:
        return missing_features(ctx, [self.extractor])

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        ext = self.extractor_of(ctx)
        gen, ref = features_of(ctx.gen, ext), features_of(ctx.ref, ext)
        keep = ~(np.isnan(gen).any(0) | np.isnan(ref).any(0))  # e.g. a pathology the head does not predict
        names = [n for n, k in zip(dimension_names(ctx, ext, gen.shape[1]), keep) if k]
        (key,) = self.outputs
        value = ks_metric_value(gen[:, keep], ref[:, keep], names, st=st, device=ctx.device,
                                patient_ids=ctx.ref.patient_ids)
        return {key: value}


class KSLabels(_KSOne):
    name = "ks_labels"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_labels": False}

    def extractor_of(self, ctx: EvalContext) -> str:
        return classifier_of(ctx)

    def skip_reason(self, ctx: EvalContext) -> str | None:
        return missing_classifier(ctx)


class KSPixels(_KSOne):
    name = "ks_pixels"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_pixels": False}
    requires_extractors = ("pixels",)
    extractor = "pixels"
