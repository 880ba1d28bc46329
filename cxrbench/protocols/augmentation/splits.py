"""Where the images come from: named splits, the one balanced, patient-disjoint test draw, and the balanced
training draws of every seed."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from ...data.imageset import ImageSource
from ...errors import DataError, UsageError
from ...registry import EXTRACTORS
from ..cxr64_splits import SPLITS, image_splits
from ..cxr128_splits import split_mask
from .config import AugmentConfig


def _take_balanced(rng: np.random.Generator, idx: np.ndarray, y: np.ndarray, n: int, what: str,
                   counts_hint: str) -> np.ndarray:
    """``n`` indices from ``idx`` (n//2 of class 0, the rest of class 1), without replacement."""
    want = {0: n // 2, 1: n - n // 2}
    out = []
    for cls, k in want.items():
        pool = idx[y[idx] == cls]
        if len(pool) < k:
            raise DataError(
                f"{what}: needs {k} images of class {cls} but has {len(pool)} ({counts_hint}); "
                "lower --n-real / --n-test / --n-synthetic or add images"
            )
        out.append(rng.permutation(pool)[:k])
    return np.concatenate(out)


def _head(idx: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """The first n//2 class-0 and n - n//2 class-1 entries of a balanced draw (the same split as above)."""
    return np.concatenate([idx[y[idx] == 0][: n // 2], idx[y[idx] == 1][: n - n // 2]])


#: the label columns that make a folder NIH-layout (patient ids, views), where named splits such as the cxr64
#: protocol's (``cxr64_splits``; an extractor's ``augmentation_splits``) can be drawn
_NIH_COLUMNS = {"patient_id", "view_position", "No Finding"}


def _split_mask(src: ImageSource, spec: str, flag: str) -> np.ndarray:
    """Images whose split is one of ``spec`` (comma-separated): a labels.csv ``split`` value, ``cxr64-*`` (the
    cxr64 protocol's patient split of the NIH thumbnails, computed from the labels) or ``cxr128-*`` (the cxr128
    protocol's patient split of the 256 px NIH images, decided by the hashes and patients it ships)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UsageError(f"{flag} {spec!r}: name a split")
    mask = np.zeros(len(src), dtype=bool)
    cxr64 = plain = None
    for name in names:
        if name.startswith("cxr128-"):
            if src.labels is None or "patient_id" not in src.labels.columns:
                raise UsageError(f"{flag} {name}: {src.name} needs a labels.csv patient_id column (the NIH "
                                 "nih_extra_256px layout) for the cxr128 patient split")
            mask |= np.array(split_mask(src, name), dtype=bool)
        elif name.startswith("cxr64-"):
            if name.removeprefix("cxr64-") not in SPLITS:
                raise UsageError(f"{flag} {name}: the cxr64 splits are {', '.join('cxr64-' + s for s in SPLITS)}")
            if src.labels is None or not _NIH_COLUMNS <= set(src.labels.columns):
                raise UsageError(f"{flag} {name}: {src.name} needs labels.csv columns {sorted(_NIH_COLUMNS)} "
                                 "(the NIH nih1000_64px layout) for the cxr64 patient split")
            if cxr64 is None:
                cxr64 = np.array(image_splits(src.labels))
            mask |= cxr64 == name.removeprefix("cxr64-")
        else:
            if src.labels is None or "split" not in src.labels.columns:
                raise UsageError(f"{src.name}: {flag} {name} needs a 'split' column in the real labels")
            if plain is None:
                plain = src.labels["split"].astype(str).to_numpy()
            if not (plain == name).any():
                raise UsageError(f"{src.name}: no images with split {name!r}; splits present: {sorted(set(plain))}")
            mask |= plain == name
    return mask


def _default_splits(cfg: AugmentConfig, src: ImageSource) -> AugmentConfig:
    """No split given, NIH-layout labels, and an extractor whose weights were trained on named splits
    (``augmentation_splits``: cxr64): train the probe on its training split, test on the splits it never saw."""
    splits = getattr(EXTRACTORS.get(cfg.extractor), "augmentation_splits", None)
    if (splits and cfg.test_split is None and cfg.train_split is None and src.labels is not None
            and _NIH_COLUMNS <= set(src.labels.columns)):
        train, test = splits
        return dataclasses.replace(cfg, test_split=test, train_split=train)
    return cfg


def _test_split(src: ImageSource, y: np.ndarray, cfg: AugmentConfig,
                names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, training-pool indices): balanced test, patient-disjoint, no file copies across.

    Patients are visited in a seeded hash order, twice: first whole patients that fit the per-class quotas,
    then, for what is still missing, part of a patient's images (the rest of that patient leaves the training
    pool). Whole patients alone cannot always fill the quotas exactly (NIH's Effusion images come a dozen per
    patient), which made a 60-image draw fail with 170 Effusion images available.
    """
    usable = np.flatnonzero(y >= 0)
    candidates = usable
    in_test_split = np.zeros(len(src), dtype=bool)
    if cfg.test_split is not None:
        in_test_split = _split_mask(src, cfg.test_split, "--test-split")
        candidates = usable[in_test_split[usable]]
    patients = src.patient_ids or [f"img:{i}" for i in range(len(src))]
    groups: dict[str, list[int]] = {}
    for i in candidates:
        groups.setdefault(str(patients[i]), []).append(int(i))
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{cfg.seed}:{p}".encode()).hexdigest())
    quota = {0: cfg.n_test // 2, 1: cfg.n_test - cfg.n_test // 2}
    taken: dict[str, list[int]] = {}
    for whole in (True, False):
        for p in order:
            if quota[0] == 0 and quota[1] == 0:
                break
            if p in taken:
                continue
            by_class = {c: [i for i in groups[p] if y[i] == c] for c in (0, 1)}
            if whole and any(len(by_class[c]) > quota[c] for c in (0, 1)):
                continue
            pick = {c: by_class[c][: quota[c]] for c in (0, 1)}
            if pick[0] or pick[1]:
                taken[p] = pick[0] + pick[1]
                for c in (0, 1):
                    quota[c] -= len(pick[c])
    if quota[0] or quota[1]:
        counts = {c: int((y[candidates] == c).sum()) for c in (0, 1)}
        raise DataError(
            f"{src.name}: cannot draw {cfg.n_test} balanced test images for {names[0]} vs {names[1]}; "
            f"{counts[1]} {names[0]} and {counts[0]} {names[1]} images available for the test set; lower --n-test"
        )
    test_arr = np.sort(np.array([i for imgs in taken.values() for i in imgs], dtype=np.int64))
    test_patients = set(taken)
    test_hashes = {src.hashes[i] for i in test_arr}
    in_train_split = np.ones(len(src), dtype=bool)
    if cfg.train_split is not None:
        in_train_split = _split_mask(src, cfg.train_split, "--train-split")
    pool = np.array([i for i in usable if str(patients[i]) not in test_patients and src.hashes[i] not in test_hashes
                     and not in_test_split[i] and in_train_split[i]], dtype=np.int64)
    return test_arr, pool


def capacity(src: ImageSource, y: np.ndarray, cfg: AugmentConfig) -> tuple[int, dict[int, int]]:
    """(largest balanced test set, images of each class then left in the training pool) that ``src``'s task
    labels ``y`` supply under ``cfg``'s splits; ``cfg.n_test`` caps the test set."""
    usable = np.flatnonzero(y >= 0)
    candidates = usable
    if cfg.test_split is not None:
        candidates = usable[_split_mask(src, cfg.test_split, "--test-split")[usable]]
    n_test = min(cfg.n_test, 2 * min(int((y[candidates] == c).sum()) for c in (0, 1)))
    if n_test < 2:
        return n_test, {0: 0, 1: 0}
    _, pool = _test_split(src, y, dataclasses.replace(cfg, n_test=n_test), ("class 1", "class 0"))
    return n_test, {c: int((y[pool] == c).sum()) for c in (0, 1)}
