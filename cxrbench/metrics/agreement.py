"""Cross-extractor (or cross-metric) agreement: do two numbers rank the same entries the same way?

``rank_agreement(results, keys)`` takes several results (leaderboard entries) and metric keys such as
``["fid_inception", "fid_xrv", "kid_xrv"]`` and returns, for every pair of keys, Spearman's rho and
Kendall's tau across the entries that report both. Each key is first oriented by its own
``higher_is_better`` (read from the results, never hard-coded), so +1 always means "same ranking of
better and worse entries", even between a lower-is-better FID and a higher-is-better precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

from ..errors import DataError


def _metrics(result: Mapping) -> Mapping:
    return result.get("metrics", result)


def per_extractor_keys(results: Iterable[Mapping], base: str) -> list[str]:
    """Every ``<base>_<extractor>`` key present in any result (e.g. base "fid" -> fid_inception, fid_xrv)."""
    found = {k for r in results for k in _metrics(r) if k.startswith(base + "_")}
    return sorted(found)


def _goodness(results: list[Mapping], key: str) -> np.ndarray:
    vals = []
    for r in results:
        m = _metrics(r).get(key)
        if m is None or m.get("value") is None:
            vals.append(np.nan)
        else:
            vals.append(float(m["value"]) if m["higher_is_better"] else -float(m["value"]))
    return np.array(vals)


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def rank_agreement(results: Iterable[Mapping], keys: list[str]) -> dict:
    """Pairwise rank correlations of ``keys`` across ``results``.

    Returns ``{"keys", "n_entries": {a: {b: n}}, "spearman": {a: {b: rho}}, "kendall": {a: {b: tau}},
    "mean_spearman", "mean_kendall"}``; a pair with fewer than 3 common entries (or a constant column)
    gets ``None``. Results are result dicts (``{"metrics": {...}}``) or bare metric dicts.
    """
    results = list(results)
    keys = list(keys)
    if len(keys) < 2:
        raise DataError(f"rank agreement needs at least two metric keys, got {keys}")
    good = {k: _goodness(results, k) for k in keys}
    out: dict = {"keys": keys, "n_entries": {}, "spearman": {}, "kendall": {}}
    pair_rho, pair_tau = [], []
    for a in keys:
        for name in ("n_entries", "spearman", "kendall"):
            out[name][a] = {}
        for b in keys:
            both = ~(np.isnan(good[a]) | np.isnan(good[b]))
            n = int(both.sum())
            rho = tau = None
            if a == b and n >= 1:
                rho = tau = 1.0
            elif n >= 3 and np.ptp(good[a][both]) > 0 and np.ptp(good[b][both]) > 0:
                rho = _num(stats.spearmanr(good[a][both], good[b][both]).statistic)
                tau = _num(stats.kendalltau(good[a][both], good[b][both]).statistic)
            out["n_entries"][a][b], out["spearman"][a][b], out["kendall"][a][b] = n, rho, tau
            if a < b and rho is not None:
                pair_rho.append(rho)
                pair_tau.append(tau)
    out["mean_spearman"] = float(np.mean(pair_rho)) if pair_rho else None
    out["mean_kendall"] = float(np.mean(pair_tau)) if pair_tau else None
    return out
