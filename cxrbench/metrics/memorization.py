"""Memorization: how many generated images sit closer to a training image than real unseen images do.

For every generated image, the distance to its nearest training image (``--train-reference``, the
generator's training set); for every held-out real image (the evaluation reference, which must not
overlap the training set), the same. The threshold is the ``percentile``-th (5th) percentile of the
held-out distances; ``memorization`` is the fraction of generated images strictly below it.

A generator that never copies gives the base rate ``percentile / 100`` (0.05): the real held-out images
themselves are below their own 5th percentile 5% of the time. A set in which a fraction ``c`` are copies
of training images and the rest behave like unseen real images gives ``c + (1 - c) * 0.05``, so
``extra["excess"] = (rate - 0.05) / 0.95`` estimates the copied fraction ``c`` directly. The noise floor
(``real_vs_real``) takes the threshold from one half of the reference and the rate from the other.

One file: the estimator ``memorization_result``, the functional entry ``memorization(real=, fake=, train=)``
(re-exported by ``functional``) and the registered ``memorization`` metric (``Memorization``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import MetricSettings
from ..data.splits import real_vs_real_split
from . import knn
from .base import EvalContext, FigureSpec, Metric, MetricValue
from .bootstrap import two_sample_bootstrap
from .common import check_pair, features_of, one_thread, replicates


@dataclass
class MemorizationResult:
    rate: float
    excess: float
    threshold: float
    gen_dist: np.ndarray  # (N_gen,) distance to the nearest training row
    gen_nearest: np.ndarray  # (N_gen,) index of that training row
    heldout_dist: np.ndarray  # (N_ref,)
    base_rate: float


def memorization_result(
    gen,
    heldout,
    train,
    *,
    percentile: float = 5.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    budget: int = knn.DEFAULT_BUDGET,
) -> MemorizationResult:
    kw = dict(device=device, dtype=dtype, budget=budget)
    d_gen, i_gen = knn.nearest(gen, train, **kw)
    d_held, _ = knn.nearest(heldout, train, **kw)
    threshold = float(np.percentile(d_held, percentile))
    rate = float((d_gen < threshold).mean())
    base = percentile / 100.0
    return MemorizationResult(rate, (rate - base) / (1 - base), threshold, d_gen, i_gen, d_held, base)


def rate_interval(res: MemorizationResult, *, n_bootstrap: int, seed: int, alpha: float, percentile: float):
    """Percentile-bootstrap interval of the rate, resampling the generated AND the held-out rows.

    The threshold is a percentile of the held-out distances, so it varies with the held-out sample too: at
    300 / 599, to first order, the rate's spread from the held-out rows is sqrt(300 / 599) = 0.71 times its
    spread from the generated rows (both binomial at the 5th percentile).
    An interval that held it fixed covered the expected rate 0.880 +/- 0.016 of the time on real cxr128
    features of a generator that copies nothing; resampling both covers nominally
    (``tests/benchmarks/interval_coverage.py``). The training set is the generator's own, fixed, not resampled.
    """
    gd, hd = res.gen_dist, res.heldout_dist

    def stat(ig, ir):
        return float((gd[ig] < np.percentile(hd[ir], percentile)).mean())

    iv = two_sample_bootstrap(stat, len(gd), len(hd), res.rate, n_boot=n_bootstrap, seed=seed, alpha=alpha,
                              method="percentile")
    if iv is None:
        return None
    lo, hi = min(max(iv.ci[0], 0.0), 1.0), min(max(iv.ci[1], 0.0), 1.0)
    # no sample below the threshold (or every one): every replicate repeats it and the bootstrap gives [0, 0],
    # certainty it does not have. The exact (Clopper-Pearson) bound for 0 of n is 1 - (alpha / 2) ** (1 / n)
    n = len(gd)
    if res.rate == 0.0:
        hi = max(hi, 1.0 - (alpha / 2) ** (1.0 / n))
    elif res.rate == 1.0:
        lo = min(lo, (alpha / 2) ** (1.0 / n))
    return lo, hi


# the functional entry (``functional.memorization``)


@one_thread
def memorization(*, real, fake, train, percentile: float = MetricSettings.memorization_percentile, ci: bool = False,
                 n_bootstrap: int | None = None, seed: int = MetricSettings.seed,
                 alpha: float = MetricSettings.alpha, device: str = "cpu", budget: int | None = None) -> MetricValue:
    """Fraction of ``fake`` rows nearer to their nearest ``train`` row than the ``percentile``-th percentile of
    the held-out ``real`` rows' distances to ``train`` (the base rate ``percentile / 100`` when nothing is
    copied); ``extra`` holds ``excess``, the estimated copied fraction, ``base_rate`` and ``threshold``.

    ``real`` must not overlap ``train``. On request a percentile-bootstrap interval over the generated and the
    held-out rows (``rate_interval``): the interval the registered metric reports.
    """
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, what="memorization")
    t, _ = check_pair(train, r, what="memorization", names=("train (training set)", "real (reference)"))
    res = memorization_result(g, r, t, percentile=percentile, device=device, budget=budget or knn.DEFAULT_BUDGET)
    mv = MetricValue(res.rate, False, None, len(g), len(r),
                     extra={"excess": res.excess, "base_rate": res.base_rate, "threshold": res.threshold})
    mv.ci = rate_interval(res, n_bootstrap=n_bootstrap, seed=seed, alpha=alpha, percentile=percentile)
    if mv.ci is not None:
        mv.ci_method = "percentile bootstrap (generated and held-out rows; training set fixed)"
    return mv


# the registered metric (``cxrbench evaluate``)


class Memorization(Metric):
    name = "memorization"
    version = "2"  # 2: the interval resamples the held-out rows too (their percentile is the threshold)
    outputs: ClassVar[dict[str, bool]] = {"memorization": False}
    per_extractor = True
    #: closest generated-to-training pairs listed in extra (shown in the report)
    n_closest: ClassVar[int] = 10

    def skip_reason(self, ctx: EvalContext) -> str | None:
        if ctx.train is None:
            return "needs the generator's training images (--train-reference)"
        if len(ctx.ref) < 20:
            return f"needs at least 20 held-out reference images for a 5th-percentile threshold, got {len(ctx.ref)}"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        out = {}
        for e in ctx.embedding_extractors():
            gen, ref, train = (features_of(s, e) for s in (ctx.gen, ctx.ref, ctx.train))
            res = memorization_result(gen, ref, train, percentile=st.memorization_percentile, device=ctx.device,
                               budget=st.knn_budget)
            ci = rate_interval(res, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha,
                               percentile=st.memorization_percentile)
            a, b = real_vs_real_split(len(ref), st.seed, ctx.ref.patient_ids)
            rvr = float((res.heldout_dist[b] < np.percentile(res.heldout_dist[a], st.memorization_percentile)).mean())
            # a reference that overlaps the training set drags the threshold to 0: say so
            tiny = 1e-6 * max(float(np.median(res.heldout_dist)), 1e-12)
            closest = np.argsort(res.gen_dist, kind="stable")[: self.n_closest]
            extra = {
                "excess": res.excess,
                "base_rate": res.base_rate,
                "threshold": res.threshold,
                "exact_copies": float((res.gen_dist <= tiny).mean()),
                "reference_in_train": float((res.heldout_dist <= tiny).mean()),
                "n_train": len(train),
                "closest_pairs": [
                    {"sample": ctx.gen.ids[j], "train": ctx.train.ids[res.gen_nearest[j]],
                     "distance": float(res.gen_dist[j])}
                    for j in closest
                ],
            }
            out[f"memorization_{e}"] = MetricValue(res.rate, False, ci, len(gen), len(ref), rvr, extra=extra)
        return out

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        if not (isinstance(value.get("closest_pairs"), list) and value["closest_pairs"]):
            return []
        t = value.get("threshold")
        return [FigureSpec("nearest_pairs", key, f"pairs_{key}", f"{key}: nearest pairs",
                           "threshold (5th percentile of held-out-to-train distances): " + ("-" if t is None else f"{t:.4g}"),
                           value["closest_pairs"])]
