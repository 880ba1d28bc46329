"""Deterministic splits of an image set: the two halves behind every real-vs-real floor."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


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
