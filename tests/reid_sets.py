"""Real image sets that separate re-identification from memorization, shared by ``tests/test_metrics_reid.py`` and
``tests/benchmarks/reid_vs_memorization.py``.

All from the patients of the ``cxr128`` reference and held-out NIH splits, which neither shipped network (the
``cxr128`` backbone, the ``reid-net`` verification network) saw in training:

- ``train``: the first image of every patient with several images, plus images of single-image patients: the
  generator's training set;
- ``same_patient``: the other images of those several-image patients (another film of a training patient:
  what re-identification must catch and pixel memorization misses);
- ``heldout`` and ``reference``: images of single-image patients not in ``train`` (other patients);
- ``near_copies(kind)``: training images re-exposed or moved: flipped, shifted, noised, contrast-changed.

Images are kept at 128 px (``to_cxr128``: both networks' own input size), decoded once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrbench.data.io import load_image
from cxrbench.features.cxr128 import CXR128Extractor, to_cxr128
from cxrbench.metrics.base import FeatureSet
from cxrbench.protocols.cxr128_splits import nih_splits

NEAR_COPY_KINDS = ("hflip", "shift", "noise", "contrast", "mixed")


def _decode(folder: Path, paths) -> torch.Tensor:
    return torch.stack([to_cxr128(torch.from_numpy(load_image(folder / p))[None, None])[0] for p in paths])


def build_sets(data_root: Path, *, n_train_single: int = 120, n_other: int = 100, seed: int = 0) -> dict:
    t = nih_splits(data_root)
    t = t[t["cxr128_split"] != "train"].sort_values("path").reset_index(drop=True)
    t["patient_id"] = t["patient_id"].astype(str)
    counts = t["patient_id"].value_counts()
    multi = t[t["patient_id"].map(counts) > 1]
    single = t[t["patient_id"].map(counts) == 1]
    first = multi.groupby("patient_id", sort=True).head(1)
    rest = multi.drop(first.index)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(single))
    single_train = single.iloc[pick[:n_train_single]]
    heldout = single.iloc[pick[n_train_single:n_train_single + n_other]]
    reference = single.iloc[pick[n_train_single + n_other:n_train_single + 2 * n_other]]
    folder = Path(data_root) / "nih_extra_256px"
    rows = {"train": [first, single_train], "same_patient": [rest], "heldout": [heldout], "reference": [reference]}
    out = {}
    for name, parts in rows.items():
        tab = pd.concat(parts)
        out[name] = {"images": _decode(folder, tab["path"]), "patients": list(tab["patient_id"]),
                     "ids": list(tab["path"])}
    out["n_train_patients_with_more_images"] = len(first)
    return out


def near_copies(train: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """A perturbed copy of every training image (128 px): a mirrored film, a 6 px shift, Gaussian noise of std
    0.03, contrast x0.75 with a brightness change, or one of these at random per image (``mixed``)."""
    g = torch.Generator().manual_seed(seed)
    x = train.clone()
    if kind == "mixed":
        k = torch.randint(0, 4, (len(x),), generator=g)
        return torch.cat([near_copies(x[i:i + 1], NEAR_COPY_KINDS[int(k[i])], seed + i) for i in range(len(x))])
    if kind == "hflip":
        return x.flip(-1)
    if kind == "shift":  # translate by 6 px right and 4 px down, edge pixels repeated
        x = F.pad(x, (6, 0, 4, 0), mode="replicate")
        return x[..., : train.shape[-2], : train.shape[-1]]
    if kind == "noise":
        return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "contrast":
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (m + 0.75 * (x - m) + 0.05).clamp(0, 1)
    raise ValueError(kind)


def feature_set(name: str, images: torch.Tensor, extractor: CXR128Extractor, *, patients=None, ids=None) -> FeatureSet:
    feats = torch.cat([extractor.extract(images[i:i + 64]) for i in range(0, len(images), 64)]).numpy()
    n = len(images)
    return FeatureSet(name=name, ids=list(ids) if ids is not None else [f"{name}[{i}]" for i in range(n)],
                      hashes=[f"{name}{i}" for i in range(n)], features={"cxr128": feats}, patient_ids=patients,
                      load_images=lambda idx: [images[int(i)] for i in idx])
