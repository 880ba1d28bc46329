"""An image set known only by its features: what a protocol ships in place of images."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass
class PrecomputedSet:
    """An image set known only by its features (shipped with a protocol): no images, no decoding.

    ``features`` holds the base extractor's features; derived extractors (the label head) are computed from
    them by the harness. ``specs`` are the extractor specs the features were made with: the harness refuses
    them when the running extractor differs (other weights, version or preprocessing).
    """

    name: str
    ids: list[str]
    hashes: list[str]
    features: dict[str, np.ndarray]
    specs: dict[str, dict]
    labels: object = None  # pandas.DataFrame aligned with ids
    patient_ids: list[str] | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> PrecomputedSet:
        idx = [int(i) for i in idx]
        labels = None if self.labels is None else self.labels.iloc[idx].reset_index(drop=True)
        return dataclasses.replace(
            self, ids=[self.ids[i] for i in idx], hashes=[self.hashes[i] for i in idx],
            features={k: v[idx] for k, v in self.features.items()}, labels=labels,
            patient_ids=None if self.patient_ids is None else [self.patient_ids[i] for i in idx])

    def canonical(self) -> PrecomputedSet:
        """Rows in sha256 order, as a samples folder is read (the protocol's first N are then the same N)."""
        return self.subset(sorted(range(len(self)), key=lambda i: (self.hashes[i], self.ids[i])))

    def describe(self) -> dict:
        return {"path": self.name, "kind": "features", "split": self.meta.get("split"), "n": len(self),
                "sha256": self.meta.get("sha256"), **{k: v for k, v in self.meta.items() if k not in ("split",)}}
