"""Precision, recall, density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics").

One file: the estimator ``prdc_result``, the functional entry ``prdc(real=, fake=)`` (re-exported by
``functional``) and the registered ``prdc`` metric (``PRDC``).

With ``r_real(i)`` the distance from real point i to its k-th nearest other real point, and ``r_gen(j)``
the same within the generated set (k = 5):
- precision: fraction of generated points inside at least one real ball ``B(real_i, r_real(i))``;
- recall: fraction of real points inside at least one generated ball ``B(gen_j, r_gen(j))``;
- density: mean number of real balls containing a generated point, divided by k (1 on identical sets in
  expectation; above 1 when samples crowd the dense regions);
- coverage: fraction of real points whose own ball contains at least one generated point.

All neighbour queries go through ``knn.py`` (chunked, never N x N), in four passes over distance blocks:
the two within-set radii, then one pass per direction serving every query of that direction. Balls are
closed (``<=``; the prdc package uses ``<``, identical except on exact ties).

Bootstrap over both sets (the reference is a sample too): every value is a mean over the points of one
set of "is it in a ball of a present point of the other set"; the ``boot_candidates`` deepest balls of
every point are stored once and a replicate checks which are present (exact unless all of them are absent,
probability about e^-K; density counts are exact up to ``boot_candidates`` balls per point) and averages
with the resample's multiplicities, radii at their full-set values (``PRDCResult.resampled``): the route for
sets too large for dense distances. Up to ``RECOMPUTE_MAX_ROWS`` rows, ``PRDCReplicates`` recomputes every
radius in each replicate instead, counting neighbours with their multiplicities (a copy at distance 0 is not
a neighbour of itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import MetricSettings
from . import knn
from .base import EvalContext, FeaturePair, MetricValue, TwoSampleMetric
from .bootstrap import interval_from_replicates
from .common import check_pair, one_thread, replicates, with_interval


@dataclass
class PRDCResult:
    precision: float
    recall: float
    density: float
    coverage: float
    #: per generated point: number of real balls containing it
    gen_counts: np.ndarray
    #: per real point: candidate generated indices (K,) and whether each one's ball contains the real point
    recall_cand: np.ndarray
    recall_hit: np.ndarray
    #: per real point: its nearest generated indices (K,) and whether each lies inside the real ball
    cover_cand: np.ndarray
    cover_hit: np.ndarray
    #: per generated point: candidate real balls (K,) (deepest first) and whether each one contains it
    prec_cand: np.ndarray
    prec_hit: np.ndarray
    k: int

    def as_dict(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "density": self.density,
                "coverage": self.coverage}

    def resampled(self, idx: np.ndarray, idx_ref: np.ndarray | None = None) -> dict[str, float]:
        """The four values when the generated set is replaced by its rows ``idx`` and the reference by its
        rows ``idx_ref`` (with repetition; None keeps the reference)."""
        present = np.zeros(len(self.gen_counts), dtype=bool)
        present[idx] = True
        if idx_ref is None:
            c = self.gen_counts[idx]
            ref_rows = slice(None)
        else:
            w_ref = np.bincount(idx_ref, minlength=len(self.recall_cand))
            c = (self.prec_hit * w_ref[self.prec_cand]).sum(1)[idx]
            ref_rows = idx_ref
        return {
            "precision": float((c > 0).mean()),
            "density": float(c.mean() / self.k),
            "recall": float((self.recall_hit & present[self.recall_cand]).any(1)[ref_rows].mean()),
            "coverage": float((self.cover_hit & present[self.cover_cand]).any(1)[ref_rows].mean()),
        }


def prdc_result(
    real,
    gen,
    *,
    k: int = 5,
    boot_candidates: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    budget: int = knn.DEFAULT_BUDGET,
) -> PRDCResult:
    kw = dict(device=device, dtype=dtype, budget=budget)
    if len(real) <= k or len(gen) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} points per set, got {len(real)} and {len(gen)}")
    r_real = knn.kth_radii(real, k, **kw)
    r_gen = knn.kth_radii(gen, k, **kw)
    kc = min(boot_candidates, len(gen))
    # one pass over the real x generated distances: recall's candidates, the balls B(gen_j, r_gen(j))
    # containing real_i most deeply (smallest d / r_gen(j)), and coverage's, the nearest generated points
    ((ratio, recall_cand), (dist, cover_cand)), _ = knn.knn_multi(
        real, gen, kc, scales=(np.maximum(r_gen, 1e-30), None), **kw)
    recall_hit = ratio <= 1.0
    cover_hit = dist <= r_real[:, None]
    # one pass over the generated x real distances: the real balls around each generated point and their count
    ((ratio, prec_cand),), gen_counts = knn.knn_multi(
        gen, real, min(boot_candidates, len(real)), scales=(np.maximum(r_real, 1e-30),), radii=r_real, **kw)
    return PRDCResult(
        precision=float((gen_counts > 0).mean()),
        recall=float(recall_hit[:, 0].mean()),
        density=float(gen_counts.mean() / k),
        coverage=float(cover_hit[:, 0].mean()),
        gen_counts=gen_counts, recall_cand=recall_cand, recall_hit=recall_hit,
        cover_cand=cover_cand, cover_hit=cover_hit, prec_cand=prec_cand, prec_hit=ratio <= 1.0, k=k,
    )


#: largest set (rows) whose dense distance matrices the radius-recomputing bootstrap holds (3 float32
#: matrices of at most this squared: 200 MB at 4096); larger sets fall back to ``PRDCResult.resampled``
RECOMPUTE_MAX_ROWS = 4096
#: PRDC density interval widening where the replicates keep the full-set kNN radii (sets above
#: ``RECOMPUTE_MAX_ROWS``; calibrated with tests/benchmarks/coverage.py)
DENSITY_INFLATE = 1.3
#: neighbours per point searched for the multiplicity-weighted k-th neighbour (the k-th copy is within the
#: first ``NEIGHBOURS`` distinct rows unless a resample drew fewer than k of them: probability ~e^-40 at k = 5)
NEIGHBOURS = 48


class PRDCReplicates:
    """Bootstrap replicates of PRDC that resample both sets *and recompute every kNN radius*.

    A resample has the original rows with multiplicities ``w``. Copies of one row sit at distance 0, so a
    plain k-th neighbour radius would collapse; here a row's radius is the distance at which its *other*
    rows' multiplicities first add up to k (its own copies are not its neighbours): with ~63% distinct rows
    drawn, the k-th copy lies about as far as the k-th neighbour of n distinct rows, so the radii keep their
    scale while varying as the set varies. Values then count balls and points with their multiplicities
    (density: a ball drawn twice counts twice). Holding the radii at their full-set values instead (what
    ``PRDCResult.resampled`` does) misses the radii's own variance: on real cxr128 features, 300 vs 599,
    precision's interval covered too rarely (tests/benchmarks/interval_coverage.py).

    Dense: the three distance matrices in float32 plus each row's ``NEIGHBOURS`` nearest within its set.
    """

    def __init__(self, real, gen, *, k: int = 5):
        self.k = k
        r = torch.as_tensor(np.asarray(real, dtype=np.float64))
        g = torch.as_tensor(np.asarray(gen, dtype=np.float64))
        c = r.mean(0)
        r, g = r - c, g - c
        self.d_gr = torch.cdist(g, r).float().numpy()  # (n_g, n_r)
        self.nn_r = self._neighbours(torch.cdist(r, r))
        self.nn_g = self._neighbours(torch.cdist(g, g))

    def _neighbours(self, d):
        """Each row's nearest other rows, ascending: (distances (n, L) float32, indices (n, L))."""

        d.fill_diagonal_(float("inf"))
        kk = min(NEIGHBOURS, d.shape[1] - 1)
        v, i = torch.topk(d, kk, dim=1, largest=False)
        return v.float().numpy(), i.numpy()

    def _radii(self, nn, w):
        v, i = nn
        reach = np.cumsum(w[i], axis=1) >= self.k
        pos = reach.argmax(1)
        rad = v[np.arange(len(v)), pos]
        rad[~reach[:, -1]] = v[:, -1][~reach[:, -1]]  # fewer than k copies among the neighbours: the farthest kept
        return rad

    def __call__(self, idx_gen: np.ndarray, idx_ref: np.ndarray) -> dict[str, float]:
        n_g, n_r = self.d_gr.shape
        wg = np.bincount(idx_gen, minlength=n_g).astype(np.float32)
        wr = np.bincount(idx_ref, minlength=n_r).astype(np.float32)
        r_r, r_g = self._radii(self.nn_r, wr), self._radii(self.nn_g, wg)
        in_real = self.d_gr <= r_r[None, :]  # gen j inside real ball i
        counts = in_real @ wr  # real balls (with multiplicity) around every generated row
        in_gen = (self.d_gr <= r_g[:, None]) & (wg > 0)[:, None]  # real i inside a drawn generated ball j
        covered = (in_real & (wg > 0)[:, None]).any(0)  # real i's ball holds a drawn generated row
        tg, tr = float(wg.sum()), float(wr.sum())
        return {"precision": float(wg @ (counts > 0)) / tg, "density": float(wg @ counts) / (self.k * tg),
                "recall": float(wr @ in_gen.any(0)) / tr, "coverage": float(wr @ covered) / tr}


# the functional entry (``functional.prdc``)


@one_thread
def prdc(*, real, fake, k: int = MetricSettings.prdc_k, boot_candidates: int = MetricSettings.prdc_boot_candidates,
         ci: bool = False, n_bootstrap: int | None = None, seed: int = MetricSettings.seed,
         alpha: float = MetricSettings.alpha, device: str = "cpu", budget: int | None = None,
         ci_method: str | None = None) -> dict[str, MetricValue]:
    """Precision, recall, density, coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for
    Generative Models", 2020); on request intervals over both sets.

    Precision is the share of ``fake`` rows inside some ``real`` row's k-NN ball, recall the converse: the
    values of ``prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)``.

    Centred intervals: a resample holds ~63% distinct rows, which removes balls and pulls every replicate
    down without any bias in the estimator. Each replicate recomputes both sets' kNN radii with the
    resample's multiplicities (``PRDCReplicates``; sets above ``RECOMPUTE_MAX_ROWS`` keep the full-set
    radii). Measured coverage on real features: tests/benchmarks/interval_coverage.py (README
    "Reliability"). ``ci_method`` forces one method for all four.
    """
    n_bootstrap = replicates(n_bootstrap, ci)
    g, r = check_pair(fake, real, min_rows=k + 1, what="prdc")
    res = prdc_result(r, g, k=k, boot_candidates=boot_candidates, device=device,
                      budget=budget or knn.DEFAULT_BUDGET)
    vals = res.as_dict()
    out = {key: MetricValue(v, True, None, len(g), len(r), extra={"k": k}) for key, v in vals.items()}
    if n_bootstrap <= 0:
        return out
    # one pass of replicates serves all four values; every replicate recomputes the kNN radii of both
    # resampled sets (``PRDCReplicates``) where the dense distances fit, else keeps them fixed
    rng = np.random.default_rng(seed)
    dense = max(len(g), len(r)) <= RECOMPUTE_MAX_ROWS
    one = PRDCReplicates(r, g, k=k) if dense else (lambda ig, ir: res.resampled(ig, ir))
    reps = {key: [] for key in vals}
    for _ in range(n_bootstrap):
        for key, v in one(rng.integers(0, len(g), len(g)), rng.integers(0, len(r), len(r))).items():
            reps[key].append(v)
    for key, mv in out.items():
        method = ci_method or "centred"
        # fixed radii miss their own variance: density's interval is widened there (plain: 0.86-0.92 coverage)
        inflate = DENSITY_INFLATE if key == "density" and not dense and ci_method is None else 1.0
        iv = interval_from_replicates(reps[key], vals[key], alpha=alpha, method=method, inflate=inflate,
                                      what="both sets, kNN radii recomputed" if dense else "both sets, radii fixed")
        with_interval(mv, iv, bias_corrected=False, lower=0.0, upper=None if key == "density" else 1.0)
    return out


# the registered metric (``cxrbench evaluate``)


class PRDC(TwoSampleMetric):
    name = "prdc"
    version = "2"  # 2: bootstrap replicates recompute the kNN radii of both resampled sets; density not widened
    outputs: ClassVar[dict[str, bool]] = {"precision": True, "recall": True, "density": True, "coverage": True}

    def skip_reason(self, ctx: EvalContext) -> str | None:
        k = MetricSettings.from_config(ctx.config).prdc_k
        if len(ctx.gen) <= k or len(ctx.ref) <= 2 * k + 1:
            return f"PRDC with k={k} needs more than {k} generated and {2 * k + 1} reference images"
        return None

    @staticmethod
    def _kw(pair: FeaturePair) -> dict:
        st = pair.settings
        return dict(k=st.prdc_k, boot_candidates=st.prdc_boot_candidates, device=pair.device, budget=st.knn_budget)

    def estimate(self, pair: FeaturePair) -> dict[str, MetricValue]:
        st = pair.settings
        return prdc(real=pair.ref, fake=pair.gen, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha,
                    **self._kw(pair))

    def point(self, x, y, pair: FeaturePair) -> dict[str, float]:
        return prdc_result(y, x, **self._kw(pair)).as_dict()
