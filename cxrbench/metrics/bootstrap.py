"""Bootstrap confidence intervals and the real-vs-real split, shared by every metric."""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Bias-corrected percentile bootstrap over resamples (with replacement) of ``range(n)``.

    ``stat(idx)`` is evaluated on ``n_boot`` resamples; the ``(alpha/2, 1-alpha/2)`` quantiles are shifted by
    the bootstrap's bias estimate ``mean(boot) - stat(all)``. Resampling duplicates rows, which inflates
    distances such as FID (fewer distinct samples): a plain percentile interval can then lie entirely above
    the point estimate. Returns None when ``n_boot`` is 0 or ``n`` < 2.
    """
    if n_boot <= 0 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None
    full = float(stat(np.arange(n)))
    bias = float(vals.mean()) - full if np.isfinite(full) else 0.0
    return float(np.quantile(vals, alpha / 2)) - bias, float(np.quantile(vals, 1 - alpha / 2)) - bias


def real_vs_real_split(
    n: int, seed: int = 0, patient_ids: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of ``range(n)``; patient-wise when patient ids are known (no patient in both).

    Deterministic for a given seed: patients are ordered by a seeded hash of their id, then assigned
    greedily to the smaller half so the halves stay balanced in images.
    """
    if patient_ids is None or len(set(patient_ids)) < 2:
        perm = np.random.default_rng(seed).permutation(n)
        return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patient_ids):
        groups.setdefault(str(p), []).append(i)
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    a: list[int] = []
    b: list[int] = []
    for p in order:
        (a if len(a) <= len(b) else b).extend(groups[p])
    return np.sort(np.array(a, dtype=np.int64)), np.sort(np.array(b, dtype=np.int64))
