"""``ImageFolder``: a torch Dataset over an image set, for training baselines and representation models."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from .imageset import ImageSource, _align_table, _read_csv
from .sources import open_source


class ImageFolder(Dataset):
    """``ds[i] -> (image (1, H, W) float32 in [0, 1] at native size, labels (15,) float32, NaN = unknown)``.

    ``labels_csv`` overrides the folder's own ``labels.csv``; ``split`` selects rows as ``open_source`` does.
    ``cache=True`` keeps each transformed image in memory after its first load, for a deterministic
    ``transform`` only: training then stops paying to decode and resize the same files every epoch (a
    256 px PNG costs more than a 64 px model's step on one of its images), so a CPU budget buys steps.
    """

    def __init__(self, path: str | os.PathLike | ImageSource, *, labels_csv=None, split: str | None = None,
                 transform=None, cache: bool = False):
        src = open_source(path, split=split, role="data")
        if labels_csv is not None:
            src.labels = _align_table(_read_csv(labels_csv), src.ids, labels_csv, src.root)
            if "patient_id" in src.labels.columns and src.labels["patient_id"].notna().all():
                src.patient_ids = [str(p) for p in src.labels["patient_id"]]
        self.source = src
        self.transform = transform
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        lm = src.label_matrix()
        self._labels = None if lm is None else torch.from_numpy(lm)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def ids(self) -> list[str]:
        return self.source.ids

    @property
    def paths(self):
        return [self.source.path(i) for i in range(len(self))]

    @property
    def labels(self):
        return self.source.labels

    @property
    def patient_ids(self):
        return self.source.patient_ids

    def __getitem__(self, i: int):
        img = self._cache.get(i) if self._cache is not None else None
        if img is None:
            img = torch.from_numpy(self.source.load(i)).unsqueeze(0)
            if self.transform is not None:
                img = self.transform(img)
            if self._cache is not None:
                self._cache[i] = img
        lab = self._labels[i] if self._labels is not None else torch.full((15,), float("nan"))
        return img, lab
