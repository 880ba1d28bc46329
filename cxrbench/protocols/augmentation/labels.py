"""The binary task ``"A vs B"`` and its labels: parsed from the task string, read from label tables, or
predicted for synthetic images by a label classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...data.imageset import ImageSource, _align_table, _read_csv
from ...data.labels import LABELS, NO_FINDING, canonical_label
from ...errors import UsageError
from ...features.base import FeatureKind
from ...registry import EXTRACTORS


def parse_task(task: str) -> tuple[str, str]:
    """``"A vs B"`` -> (positive label A, negative label B), NIH spelling."""
    parts = [p.strip() for p in task.replace(" VS ", " vs ").split(" vs ")]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--task {task!r}: expected 'A vs B', e.g. 'Edema vs No Finding'")
    out = []
    for p in parts:
        lab = canonical_label(p)
        if lab is None:
            raise UsageError(f"--task {task!r}: unknown label {p!r}; known labels: {', '.join(LABELS)}")
        out.append(lab)
    if out[0] == out[1]:
        raise UsageError(f"--task {task!r}: the two classes must differ")
    return out[0], out[1]


def binary_labels(matrix: np.ndarray, pos: str, neg: str) -> np.ndarray:
    """1 (pos), 0 (neg) or -1 (neither, or both: left out) from an (N, 15) LABELS-order matrix (NaN unknown)."""
    a = matrix[:, LABELS.index(pos)] == 1
    b = matrix[:, LABELS.index(neg)] == 1
    return np.where(a & ~b, 1, np.where(b & ~a, 0, -1)).astype(np.int64)


def _attach_labels(src: ImageSource, csv: str | None, role: str) -> None:
    if csv is None:
        return

    p = Path(csv)
    if not p.is_file():
        raise UsageError(f"{p}: no such labels file for --{role}-labels")
    if src.root is None or src._array is not None:
        raise UsageError(f"--{role}-labels needs --{role} to be a folder (array files carry no paths)")
    table = _align_table(_read_csv(p), src.ids, p, src.root)
    if "manifest" in p.name:
        src.manifest = table
    src.labels = table


def _has_task_columns(src: ImageSource, pos: str, neg: str) -> bool:
    return src.labels is not None and pos in src.labels.columns and neg in src.labels.columns


def _labeller(extractor: str, task: tuple[str, str]) -> tuple[str, str]:
    """(base, head) extractors that label synthetic images: ``extractor``'s own registered label head when it
    predicts every label of ``task`` (No Finding = none present), else the XRV classifier."""
    for name in EXTRACTORS.names():
        cls = EXTRACTORS.get(name)
        if getattr(cls, "derived_from", None) == extractor and cls.kind == FeatureKind.PROBABILITIES:
            try:
                names = cls().feature_names or []
            except Exception:  # noqa: BLE001 - a head that cannot be built here labels nothing; fall back to xrv
                break
            if all(lab == NO_FINDING or lab in names for lab in task):
                return extractor, name
            break
    return "xrv", "xrv-classifier"


def _classifier_labels(probs: np.ndarray, names: list[str], pos: str, neg: str) -> np.ndarray:
    """Task labels from classifier probabilities (> 0.5 = present; No Finding = nothing present)."""
    col = {canonical_label(n) or n: j for j, n in enumerate(names)}
    present = probs > 0.5

    def has(lab):
        if lab == NO_FINDING:
            return ~present.any(1)
        if lab not in col:
            raise UsageError(f"the label classifier has no output for {lab!r}; "
                             "give --synthetic-labels (a manifest.csv)")
        return present[:, col[lab]]

    a, b = has(pos), has(neg)
    return np.where(a & ~b, 1, np.where(b & ~a, 0, -1)).astype(np.int64)
