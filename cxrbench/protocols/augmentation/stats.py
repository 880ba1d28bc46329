"""The statistics of the protocol: AUROC, accuracy, their resolution, and the percentile bootstrap over test
images and training seeds."""

from __future__ import annotations

import numpy as np


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count 1/2); NaN when only one class is present."""
    y = np.asarray(y)
    n1 = int((y == 1).sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    # average ranks of tied scores (what scipy.stats.rankdata does, without its per-call overhead)
    _, inv, counts = np.unique(np.asarray(s), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return float(((s > 0.5).astype(np.int64) == y).mean())


STATS = {"auroc": auroc, "accuracy": accuracy}
#: how many resolution steps ``cxrbench verify`` lets a recomputed rank statistic move: a test pair whose two
#: scores tie to the last digits can order either way when the features come from another CPU's kernels
VERIFY_STEPS = 1


def resolution_fields(step: float) -> dict[str, float]:
    """``resolution`` (one test pair or image, averaged over seeds) and ``verify_atol`` (what verify allows)."""
    return {"resolution": step, "verify_atol": VERIFY_STEPS * step}


CI_METHOD = "percentile bootstrap over test images and training seeds"


def seed_and_test_ci(stat, n_test: int, n_seeds: int, *, n_boot: int, seed: int,
                     alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile CI of the mean over seeds of ``stat(test_idx, k)`` (seed k's statistic on those test images).

    Each replicate resamples the test images and, independently, the training seeds (both with replacement):
    the training draw varies as much as the test set (with the NIH Effusion pool a seed's gain moves by
    ~0.04 AUROC), and an interval over test images alone excluded 0 for copies of real training images.
    Paired statistics stay paired: one test resample and one seed index serve both modes.
    """
    if n_boot <= 0 or n_test < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_test, size=n_test)
        ks = rng.integers(0, n_seeds, size=n_seeds) if n_seeds > 1 else np.zeros(1, dtype=np.int64)
        per = {int(k): stat(idx, int(k)) for k in np.unique(ks)}
        vals.append(float(np.mean([per[int(k)] for k in ks])))
    v = np.array(vals, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))
