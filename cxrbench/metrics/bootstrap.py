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
    value: float | None = None,
) -> tuple[float, float] | None:
    """Bootstrap CI over resamples (with replacement) of ``range(n)``, centred on the point estimate.

    ``stat(idx)`` is evaluated on ``n_boot`` resamples; the ``(alpha/2, 1-alpha/2)`` quantiles are shifted so
    the replicates' median sits on ``value`` (``stat(range(n))`` when not given). A resample holds only ~63%
    distinct rows, which moves set-level statistics (FID and KID up, recall and coverage down), so a plain
    percentile interval can miss its own point estimate. Returns None when ``n_boot`` is 0 or ``n`` < 2.
    """
    if n_boot <= 0 or n < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None
    if value is None:
        value = float(stat(np.arange(n)))
    shift = value - float(np.median(vals)) if np.isfinite(value) else 0.0
    return float(np.quantile(vals, alpha / 2)) + shift, float(np.quantile(vals, 1 - alpha / 2)) + shift


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
