"""Shared builders for the metric tests: feature sets and evaluation contexts without the harness."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrbench.config import MetricSettings
from cxrbench.metrics.base import EvalContext, FeatureSet


def feature_set(name: str, features: dict[str, np.ndarray], *, images: torch.Tensor | None = None,
                labels=None, manifest=None) -> FeatureSet:
    n = len(next(iter(features.values())))
    load = None if images is None else (lambda idx: [images[int(i)] for i in idx])
    return FeatureSet(
        name=name, ids=[f"{name}[{i}]" for i in range(n)], hashes=[f"{name}{i}" for i in range(n)],
        features={k: np.asarray(v, dtype=np.float32) for k, v in features.items()}, labels=labels,
        manifest=manifest, load_images=load,
    )


def context(gen: FeatureSet, ref: FeatureSet, train: FeatureSet | None = None, **settings) -> EvalContext:
    kinds = {"xrv-classifier": "probabilities", "pixels": "statistics"}
    names = set(gen.features) | set(ref.features)
    extractors = {e: {"name": e, "kind": kinds.get(e, "embedding")} for e in sorted(names)}
    if "xrv-classifier" in extractors:  # as the harness records them (and no torchxrayvision import here)
        d = gen.features["xrv-classifier"].shape[1]
        extractors["xrv-classifier"]["feature_names"] = [f"pathology_{i}" for i in range(d)]
    st = MetricSettings(**{"n_bootstrap": 20, **settings})
    return EvalContext(gen=gen, ref=ref, train=train, extractors=extractors, config=st, device="cpu")


def thumbnails(images: torch.Tensor, size: int = 8) -> np.ndarray:
    """Flattened, area-downsampled pixels: a weight-free stand-in for an embedding."""
    return F.adaptive_avg_pool2d(images, size).flatten(1).numpy().astype(np.float32)


def shared_data() -> Path | None:
    """``CXRBENCH_SHARED_DATA``, else ``shared/data`` beside the repository (or beside a worktree's parent)."""
    env = os.environ.get("CXRBENCH_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for up in Path(__file__).resolve().parents[1:]:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return None
