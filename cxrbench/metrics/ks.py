"""Two-sample Kolmogorov-Smirnov batteries with Benjamini-Hochberg control (the "future work" of
Kumar & Triana, "Generating Synthetic Chest X-Rays with Generative Modeling", Stanford, 2023).

One file: the battery ``ks_battery``, the functional entry ``ks_features(real=, fake=)`` (re-exported by
``functional``) and the registered ``ks_features``, ``ks_labels`` and ``ks_pixels`` metrics (``KSFeatures``,
``KSLabels``, ``KSPixels``).

One KS test per dimension (scipy ``ks_2samp``, two-sided; exact p for small sets, asymptotic for large),
then Benjamini-Hochberg at false-discovery rate ``q`` (0.05) across the dimensions. Three batteries:

- ``ks_features_<extractor>``: every dimension of an embedding;
- ``ks_labels``: the XRV classifier's 18 pathology probabilities;
- ``ks_pixels``: per-image intensity statistics (the ``pixels`` extractor).

The value is the fraction of dimensions rejected (lower is better; 0 means no dimension tells the sets
apart); ``extra`` holds the median and maximum D, the dimension with the largest D by name and, for
batteries of at most 64 dimensions, every dimension's D, p and decision.

Bootstrap replicates (both sets resampled, ``ks_features``) recompute every D with a vectorised KS statistic
(the same ECDF comparison as scipy, checked against it in the tests) and take p from the closed-form
Kolmogorov limit with Stephens' correction (``ks_pvalues_fast``; scipy's own asymptotic p costs
milliseconds per value), so 100 replicates of a 2048-dimensional battery stay cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy import stats

from ..config import MetricSettings
from .base import EvalContext, FeaturePair, FigureSpec, MetricValue, TwoSampleMetric
from .bootstrap import two_sample_bootstrap
from .common import (
    check_pair,
    classifier_of,
    float64_device,
    missing_classifier,
    missing_features,
    one_thread,
    replicates,
    with_interval,
)

#: batteries up to this many dimensions list every dimension in ``extra["dims"]``
MAX_LISTED_DIMS = 64


def benjamini_hochberg(p, q: float = 0.05) -> np.ndarray:
    """Boolean rejections controlling the false discovery rate at ``q`` (Benjamini & Hochberg 1995), through
    scipy's adjusted p-values."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return stats.false_discovery_control(p) <= q


def sorted_columns(y, device: str | torch.device = "cpu") -> torch.Tensor:
    """``(D, N)`` float64: each column of ``y`` sorted; pass as ``y_sorted`` when ``y`` is reused."""
    return torch.as_tensor(np.asarray(y), device=device, dtype=torch.float64).T.contiguous().sort(1).values


def ks_statistics(x, y=None, *, device: str | torch.device = "cpu", budget: int = 2**24,
                  y_sorted: torch.Tensor | None = None) -> np.ndarray:
    """Two-sample KS statistic D of every column, vectorised (scipy's ECDF comparison, side='right')."""
    x = torch.as_tensor(np.asarray(x), device=device, dtype=torch.float64)
    if y_sorted is None:
        y_sorted = sorted_columns(y, device)
    n1, n2 = len(x), y_sorted.shape[1]
    cols = max(1, budget // (n1 + n2))
    out = np.empty(x.shape[1])
    for c in range(0, x.shape[1], cols):
        xs = x[:, c : c + cols].T.contiguous().sort(1).values
        ys = y_sorted[c : c + cols]
        both = torch.cat([xs, ys], 1)
        f1 = torch.searchsorted(xs, both, right=True).double() / n1
        f2 = torch.searchsorted(ys, both, right=True).double() / n2
        out[c : c + cols] = (f1 - f2).abs().amax(1).cpu().numpy()
    return out


def ks_pvalues_fast(d, n1: int, n2: int) -> np.ndarray:
    """Two-sided p-values from the Kolmogorov limit with Stephens' small-sample correction.

    ``kstwobign.sf((sqrt(en) + 0.12 + 0.11 / sqrt(en)) * D)`` with ``en = n1 n2 / (n1 + n2)``: closed form
    and vectorised, within a few percent of scipy's ``method="asymp"`` (the exact ``kstwo`` distribution at
    ``en``, which costs milliseconds per value) for p above 1e-6 (checked in the tests).
    """
    en = n1 * n2 / (n1 + n2)
    return np.clip(stats.kstwobign.sf((np.sqrt(en) + 0.12 + 0.11 / np.sqrt(en)) * np.asarray(d)), 0.0, 1.0)


class WeightedKS:
    """Every column's KS statistic for resamples of both sets, from counts, without sorting per replicate.

    A resample's ECDF at a point is the cumulative count of the rows at or below it in the original sorted
    order, so with the sorted columns and the positions of all ``n1 + n2`` original values in each (computed
    once), a replicate is a cumsum and a gather: the supremum of ``|F1 - F2|`` is attained at a data value,
    and a value drawn zero times changes neither ECDF. Same statistics as ``ks_statistics`` on the resampled
    rows (checked in the tests), at a fraction of the cost of sorting D columns twice per replicate.
    """

    def __init__(self, x, y, device: str | torch.device = "cpu", budget: int = 2**19):
        xt = torch.as_tensor(np.asarray(x), device=device, dtype=torch.float64).T.contiguous()
        yt = torch.as_tensor(np.asarray(y), device=device, dtype=torch.float64).T.contiguous()
        xs, self.ox = xt.sort(1)
        ys, self.oy = yt.sort(1)
        both = torch.cat([xs, ys], 1)
        self.ix = torch.searchsorted(xs, both, right=True)  # (D, n1 + n2): rows of x at or below each value
        self.iy = torch.searchsorted(ys, both, right=True)
        # columns per block: a replicate's temporaries (~budget float64 each) stay in cache instead of streaming
        # D x (n1 + n2) tables through memory several times (at 100k + 100k rows that made a replicate 8x slower
        # than at 50k + 50k)
        self.cols = max(1, budget // both.shape[1])

    @staticmethod
    def _ecdf(order: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor, total: float) -> torch.Tensor:
        # counts in sorted order and their running sums in int32 (exact; half the bytes of float64 through the
        # random gather), divided in float64 at the end: the same numbers as a float64 cumsum
        c = counts[order]
        cum = torch.cat([torch.zeros(len(c), 1, dtype=c.dtype, device=c.device), c.cumsum(1, dtype=torch.int32)], 1)
        return cum.gather(1, idx).double().div_(total)

    def __call__(self, counts_x: np.ndarray, counts_y: np.ndarray) -> np.ndarray:
        cx = torch.as_tensor(counts_x, device=self.ox.device, dtype=torch.int32)
        cy = torch.as_tensor(counts_y, device=self.oy.device, dtype=torch.int32)
        nx, ny = float(counts_x.sum()), float(counts_y.sum())
        out = torch.empty(self.ox.shape[0], dtype=torch.float64, device=self.ox.device)
        for a in range(0, len(out), self.cols):
            b = a + self.cols
            f1 = self._ecdf(self.ox[a:b], self.ix[a:b], cx, nx)
            f1.sub_(self._ecdf(self.oy[a:b], self.iy[a:b], cy, ny))
            out[a:b] = f1.abs_().amax(1)
        return out.cpu().numpy()


@dataclass
class KSResult:
    d: np.ndarray
    p: np.ndarray
    rejected: np.ndarray
    names: list[str]

    @property
    def fraction(self) -> float:
        return float(self.rejected.mean())

    def extra(self, q: float) -> dict:
        worst = int(np.argmax(self.d))
        e = {
            "median_d": float(np.median(self.d)),
            "max_d": float(self.d[worst]),
            "worst": self.names[worst],
            "worst_p": float(self.p[worst]),
            "n_tests": int(self.d.size),
            "n_rejected": int(self.rejected.sum()),
            "q": q,
        }
        if self.d.size <= MAX_LISTED_DIMS:
            e["dims"] = {n: {"d": float(d), "p": float(p), "rejected": bool(r)}
                         for n, d, p, r in zip(self.names, self.d, self.p, self.rejected)}
        return e


def ks_battery(gen, ref, names: list[str] | None = None, *, q: float = 0.05) -> KSResult:
    """scipy ``ks_2samp`` on every column, Benjamini-Hochberg across columns."""
    gen, ref = np.asarray(gen, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature dimensions differ: {gen.shape[1]} vs {ref.shape[1]}")
    r = stats.ks_2samp(gen, ref, axis=0)
    d, p = np.atleast_1d(r.statistic), np.atleast_1d(r.pvalue)
    names = names or [f"dim_{i}" for i in range(gen.shape[1])]
    return KSResult(d, p, benjamini_hochberg(p, q), list(names))


# the functional entry (``functional.ks_features``)


@one_thread
def ks_features(*, real, fake, names: list[str] | None = None, q: float = MetricSettings.ks_q, ci: bool = False,
                n_bootstrap: int | None = None, seed: int = MetricSettings.seed,
                alpha: float = MetricSettings.alpha, device: str = "cpu", ci_method: str = "centred") -> MetricValue:
    """Fraction of dimensions a per-dimension KS test rejects (Benjamini-Hochberg at ``q``); on request a
    centred interval over both sets."""
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, what="ks_features")
    res = ks_battery(g, r, names, q=q)
    mv = MetricValue(res.fraction, False, None, len(g), len(r), extra=res.extra(q))
    if n_bootstrap <= 0:
        return mv

    if g.shape[1] * (len(g) + len(r)) <= 2**26:  # position tables of 2 x 512 MB at most
        wks = WeightedKS(g, r, device=device)

        def stat(ig, ir):
            d = wks(np.bincount(ig, minlength=len(g)), np.bincount(ir, minlength=len(r)))
            return float(benjamini_hochberg(ks_pvalues_fast(d, len(ig), len(ir)), q).mean())
    else:
        def stat(ig, ir):
            d = ks_statistics(g[ig], r[ir], device=device)
            return float(benjamini_hochberg(ks_pvalues_fast(d, len(ig), len(ir)), q).mean())

    iv = two_sample_bootstrap(stat, len(g), len(r), res.fraction, n_boot=n_bootstrap, seed=seed, alpha=alpha,
                              method=ci_method)
    return with_interval(mv, iv, bias_corrected=False, lower=0.0, upper=1.0)


# the registered metrics (``cxrbench evaluate``)


class KSFeatures(TwoSampleMetric):
    """The KS battery over every dimension of an embedding (Benjamini-Hochberg at ``ks_q``)."""

    name = "ks_features"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"ks_features": False}

    def estimate(self, pair: FeaturePair) -> MetricValue:
        st = pair.settings
        return ks_features(real=pair.ref, fake=pair.gen, names=pair.names, q=st.ks_q, n_bootstrap=st.n_bootstrap,
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
