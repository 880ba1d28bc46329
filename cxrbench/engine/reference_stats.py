"""Reference statistics: per-extractor mean and covariance of a reference set, saved once, reused by FID.

``cxrbench stats --reference nih-cxr14 --out nih.npz`` writes a ``.npz`` (no pickles) with ``meta`` (JSON:
schema ``cxrbench.engine.reference_stats/1``, the reference's path/split/n/sha256, each extractor's full spec, the
real-vs-real FID of its halves) and ``mu__<extractor>`` / ``sigma__<extractor>`` (float64). ``evaluate
--reference nih.npz`` then costs only the samples' forward passes; metrics that need the reference's
features themselves (KID, PRDC, KS, ...) are listed as skipped. The stored extractor spec must equal the
run's (same weights id, version, preprocessing): otherwise the numbers would not be comparable.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..config import resolve_device
from ..data.sources import open_source
from ..data.splits import real_vs_real_split
from ..errors import DataError, UsageError
from ..features.base import FeatureKind
from ..features.cache import FeatureCache
from ..fileio import write_output
from ..metrics.fid import fid_from_features, gaussian_stats
from .extraction import build_extractors, extract_features

SCHEMA = "cxrbench.engine.reference_stats/1"


def is_reference_stats(path) -> bool:
    p = Path(str(path))
    if p.suffix.lower() != ".npz" or not p.is_file():
        return False
    try:
        with np.load(p, allow_pickle=False) as z:
            return "meta" in z.files
    except Exception:
        return False


def load_reference_stats(path) -> dict:
    """``{"meta": {...}, "stats": {extractor: {"mu", "sigma", "n", "real_vs_real", "real_vs_real_n"}}}``."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except Exception as e:
        raise DataError(f"{p}: not a readable reference-statistics file ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise DataError(f"{p}: schema {meta.get('schema') if isinstance(meta, dict) else None!r}, expected {SCHEMA!r}")
    stats = {}
    for ext, info in meta.get("extractors", {}).items():
        mu, sigma = arrays.get(f"mu__{ext}"), arrays.get(f"sigma__{ext}")
        d = int(info["spec"]["num_features"])
        if mu is None or sigma is None or mu.shape != (d,) or sigma.shape != (d, d):
            raise DataError(f"{p}: statistics for {ext!r} are missing or not {d}-dimensional; recompute them")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise DataError(f"{p}: statistics for {ext!r} hold NaN/Inf; recompute them")
        stats[ext] = {"mu": mu, "sigma": sigma, "n": info["n"], "spec": info["spec"],
                      "real_vs_real": info.get("real_vs_real"), "real_vs_real_n": info.get("real_vs_real_n")}
    return {"meta": meta, "stats": stats}


def check_specs(path, loaded: dict, specs: dict[str, dict]) -> None:
    """Every embedding extractor of this run must be in the file with an identical spec."""
    for ext, spec in specs.items():
        if spec.get("kind") != FeatureKind.EMBEDDING:
            continue
        have = loaded["stats"].get(ext)
        if have is None:
            raise UsageError(f"{path}: has no statistics for extractor {ext!r} (it has {sorted(loaded['stats'])}); "
                             "recompute with `cxrbench stats` or drop it from --extractors")
        if have["spec"] != spec:
            diff = sorted(k for k in set(spec) | set(have["spec"]) if spec.get(k) != have["spec"].get(k))
            raise UsageError(f"{path}: statistics for {ext!r} were made with a different {', '.join(diff)} "
                             f"({have['spec'].get(diff[0])!r} vs {spec.get(diff[0])!r}); recompute them")


def write_reference_stats(reference, out, *, config) -> Path:
    """Extract the reference once and save its statistics (see module docstring)."""
    import torch

    device = resolve_device(config.device)
    src = open_source(reference, split=config.reference_split, role="reference", seed=config.seed,
                      index=config.use_cache, cache_dir=config.cache_dir)
    extractors = build_extractors(config.extractors, config, device)
    emb = {k: e for k, e in extractors.items() if e.kind == FeatureKind.EMBEDDING}
    if not emb:
        raise UsageError("cxrbench stats needs at least one embedding extractor (inception, xrv, moco, ...)")
    feats, bad = extract_features(src, emb, config, FeatureCache(config.cache_dir, enabled=config.use_cache),
                                  device, desc="reference features")
    if bad and not config.skip_bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {src.name}: "
                        + "; ".join(m for _, m in bad[:5]) + ". Fix them or pass --skip-bad")
    keep = np.array(sorted(set(range(len(src))) - {i for i, _ in bad}), dtype=np.int64)
    if len(keep) < 2:
        raise DataError(f"{src.name}: {len(keep)} usable image(s); statistics need at least 2")
    pids = None if src.patient_ids is None else [src.patient_ids[i] for i in keep]
    a, b = real_vs_real_split(len(keep), config.seed, pids)
    meta = {"schema": SCHEMA, "reference": {**src.describe(), "n_used": len(keep),
                                            "skipped_files": [src.ids[i] for i, _ in bad]},
            "seed": config.seed, "extractors": {}}
    arrays = {}
    for k, e in emb.items():
        f = feats[k][keep]
        mu, sigma = gaussian_stats(f)
        arrays[f"mu__{k}"] = mu.cpu().numpy()
        arrays[f"sigma__{k}"] = sigma.cpu().numpy()
        meta["extractors"][k] = {"spec": e.spec(), "n": len(keep),
                                 "real_vs_real": fid_from_features(f[a], f[b]) if min(len(a), len(b)) >= 2 else None,
                                 "real_vs_real_n": [len(a), len(b)]}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    write_output(out, buf.getvalue())
    del torch
    return Path(out)
