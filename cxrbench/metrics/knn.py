"""Exact k-nearest-neighbour queries in chunks: never an N x N matrix in memory.

Every query walks blocks of at most ``budget`` query-by-reference distances (default 2**24 elements, a
64 MB float32 block; the addmm input and output, the top-k merge and comparison temporaries hold a few
blocks at once), so the working memory does not grow with N: measured on CPU, PRDC on 20k x 20k 64-d
features raised peak RSS by 370 MB, where one 20k x 20k float32 matrix alone would be 1.5 GB.

Distances are Euclidean, computed as ``|a|^2 + |b|^2 - 2 a.b`` with one matmul per block. Both sets are
first centred on the reference mean (distances do not change; the squared norms shrink, so float32 loses
far less to cancellation). Blocks are float32 by default (``dtype=torch.float64`` for exact comparisons
with other implementations); the k distances ``knn`` returns are recomputed directly in float64 (an exact
copy comes back at distance 0), counts accumulate in int64, results come back as float64 / int64 numpy.

Conventions follow the ``prdc`` package (Naeem et al. 2020): the radius of a point is the distance to its
k-th nearest *other* point, taken as the (k+1)-th smallest distance including the point itself; a ball is
closed (``d <= r``; prdc uses ``<``, which differs only on exact ties).
"""

from __future__ import annotations

import numpy as np
import torch

#: elements in one query x reference distance block
DEFAULT_BUDGET = 2**24


def _as_tensor(x, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device).to(dtype)


def block_sizes(n_query: int, n_ref: int, *, budget: int = DEFAULT_BUDGET, min_ref: int = 1) -> tuple[int, int]:
    """Query and reference chunk sizes with ``q * r <= budget`` (unless ``min_ref`` forces a wider block).

    The query chunk takes up to 1024 rows and the reference chunk the rest of the budget; ``min_ref`` is
    the narrowest reference chunk allowed (``k`` for top-k, so each block can supply k candidates), in
    which case the query chunk shrinks instead.
    """
    n_query, n_ref = max(int(n_query), 1), max(int(n_ref), 1)
    r = min(n_ref, max(budget // min(n_query, 1024), min_ref, 1))
    q = min(n_query, max(budget // r, 1))
    return q, r


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of one block, clamped at 0 (the one place a block is formed)."""
    d = torch.addmm(a_sq[:, None] + b_sq[None, :], a, b.T, alpha=-2.0)
    return d.clamp_(min=0.0)


class _Pair:
    """Two point sets prepared for blocked distance queries (centred, on the device, in ``dtype``)."""

    def __init__(self, query, ref, *, device, dtype, budget, min_ref=1):
        ref_t = _as_tensor(ref, device, dtype)
        center = ref_t.mean(0, keepdim=True) if len(ref_t) else 0.0
        self.ref = ref_t - center
        self.query = self.ref if query is ref else _as_tensor(query, device, dtype) - center
        if self.query.shape[1] != self.ref.shape[1]:
            raise ValueError(f"feature dimensions differ: {self.query.shape[1]} vs {self.ref.shape[1]}")
        self.q_sq = (self.query * self.query).sum(1)
        self.r_sq = self.q_sq if query is ref else (self.ref * self.ref).sum(1)
        self.q_step, self.r_step = block_sizes(len(self.query), len(self.ref), budget=budget, min_ref=min_ref)

    def blocks(self):
        """Yield ``(q0, r0, distances)`` blocks, reference chunks innermost."""
        for q0 in range(0, len(self.query), self.q_step):
            q1 = min(q0 + self.q_step, len(self.query))
            for r0 in range(0, len(self.ref), self.r_step):
                r1 = min(r0 + self.r_step, len(self.ref))
                sq = _sq_dists(self.query[q0:q1], self.ref[r0:r1], self.q_sq[q0:q1], self.r_sq[r0:r1])
                yield q0, r0, sq.sqrt_()


def knn(
    query,
    ref,
    k: int,
    *,
    scale=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    budget: int = DEFAULT_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest ``d(q, r) / scale[r]`` over ``ref`` for every query row, ascending.

    ``scale`` (one positive value per reference row, default 1) turns the query into "which balls
    ``B(r, scale[r])`` contain ``q`` most deeply": a value ``<= 1`` means the ball contains the query.
    Returns ``(values (Nq, k) float64, indices (Nq, k) int64)``.
    """
    (out,), _ = knn_multi(query, ref, k, scales=(scale,), device=device, dtype=dtype, budget=budget)
    return out


def knn_multi(query, ref, k: int, *, scales=(None,), radii=None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, budget: int = DEFAULT_BUDGET):
    """Several queries of one pair of sets in one pass over the distance blocks (each block is computed once).

    For each entry of ``scales``, what ``knn(query, ref, k, scale=...)`` returns; with ``radii`` (one per
    ``ref`` row) also ``ball_counts(query, ref, radii)``. Returns ``([(values, indices), ...], counts or
    None)``, each equal to the separate call's (PRDC's six N x N passes become four).
    """
    n_ref = len(ref)
    if not 1 <= k <= n_ref:
        raise ValueError(f"k={k} must be between 1 and the number of reference points ({n_ref})")
    pair = _Pair(query, ref, device=device, dtype=dtype, budget=budget, min_ref=k)
    invs = [None if s is None else 1.0 / _as_tensor(s, device, dtype) for s in scales]
    rad = None if radii is None else _as_tensor(radii, device, dtype)
    counts = None if rad is None else torch.zeros(len(pair.query), dtype=torch.int64, device=pair.query.device)
    outs = [(torch.empty(len(pair.query), k, dtype=torch.float64), torch.empty(len(pair.query), k, dtype=torch.int64))
            for _ in invs]
    best: list = [None] * len(invs)
    for q0, r0, d in pair.blocks():
        if rad is not None:
            counts[q0 : q0 + len(d)] += (d <= rad[r0 : r0 + d.shape[1]]).sum(1)
        for j, inv in enumerate(invs):
            dj = d if inv is None else d * inv[r0 : r0 + d.shape[1]]
            kk = min(k, dj.shape[1])
            v, i = torch.topk(dj, kk, dim=1, largest=False)
            i = i + r0
            if r0 == 0:
                best[j] = v, i
            else:  # merge with the running best: at most q x 2k
                best_v, best_i = best[j]
                v, sel = torch.topk(torch.cat([best_v, v], 1), k, dim=1, largest=False)
                best[j] = v, torch.gather(torch.cat([best_i, i], 1), 1, sel)
            if r0 + dj.shape[1] >= n_ref:
                best_i = best[j][1]
                v, i = _refine(pair.query[q0 : q0 + len(best_i)], pair.ref, best_i, inv, budget)
                outs[j][0][q0 : q0 + len(v)] = v.cpu()
                outs[j][1][q0 : q0 + len(i)] = i.cpu()
    return [(v.numpy(), i.numpy()) for v, i in outs], None if counts is None else counts.cpu().numpy()


def _refine(q: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor, inv, budget: int):
    """Recompute the selected distances directly in float64 (``|a - b|``, no cancellation) and re-sort.

    The block formula loses about ``sqrt(eps) * |a|`` to cancellation, so an exact copy would sit at a
    small positive distance; the k winners of each row are few, so they are recomputed exactly.
    """
    v = torch.empty(idx.shape, dtype=torch.float64, device=q.device)
    step = max(1, budget // max(1, idx.shape[1] * q.shape[1]))
    for a in range(0, len(q), step):
        diff = q[a : a + step, None, :].double() - ref[idx[a : a + step]].double()
        v[a : a + step] = diff.square_().sum(-1).sqrt_()
    if inv is not None:
        v = v * inv[idx].double()
    v, order = torch.sort(v, dim=1, stable=True)
    return v, torch.gather(idx, 1, order)


def kth_radii(x, k: int, **kw) -> np.ndarray:
    """Distance from every row of ``x`` to its k-th nearest other row ((k+1)-th including itself)."""
    if len(x) < k + 1:
        raise ValueError(f"need more than k={k} points for k-th neighbour radii, got {len(x)}")
    v, _ = knn(x, x, k + 1, **kw)
    return v[:, -1]


def ball_counts(
    query,
    centers,
    radii,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    budget: int = DEFAULT_BUDGET,
) -> np.ndarray:
    """For every query row, how many closed balls ``B(centers[j], radii[j])`` contain it (int64)."""
    pair = _Pair(query, centers, device=device, dtype=dtype, budget=budget)
    r = _as_tensor(radii, device, dtype)
    counts = torch.zeros(len(pair.query), dtype=torch.int64, device=pair.query.device)
    for q0, r0, d in pair.blocks():
        counts[q0 : q0 + len(d)] += (d <= r[r0 : r0 + d.shape[1]]).sum(1)
    return counts.cpu().numpy()


def nearest(query, ref, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Distance to, and index of, the nearest reference row for every query row."""
    v, i = knn(query, ref, 1, **kw)
    return v[:, 0], i[:, 0]
