"""Patient-disjoint splits of the NIH thumbnails (``nih1000_64px``) that the ``cxr64`` protocol is built on.

The folder's own ``split`` column is not patient-disjoint (8 patients span its train and test), so the
protocol splits by patient. A few patients hold dozens of images (one has 66, mostly AP views), so a plain
hash split skews the mix of a small split; instead patients are taken largest first (ties in the order of
``sha256("cxr64:" + patient_id)``), each to the split whose shortfall against its target share is largest
for the kinds of image (view AP/PA x normal/abnormal) that patient brings. Deterministic, and the same on every machine.

- ``train`` (~45%): what the bundled generators and the cxr64 network train on;
- ``reference`` (~35%): the protocol's reference (its features ship; never seen by the network);
- ``heldout`` (~20%): real images in neither, for the leaderboard's held-out real row and for calibrating
  the label head.
"""

from __future__ import annotations

import hashlib

from ..errors import UsageError
from .cxr64 import load_features as cxr64_features

SPLITS = {"train": 0.45, "reference": 0.35, "heldout": 0.20}


def patient_splits(patient_ids, views=None, *, shares: dict[str, float] = SPLITS, salt: str = "cxr64",
                   fixed: dict[str, str] | None = None) -> dict[str, str]:
    """``{patient_id: split}`` for an image list (one patient id per image; ``views`` one view per image).

    ``shares``: each split's target share; ``salt`` orders ties; ``fixed``: patients whose split is decided
    beforehand (counted toward their split's fill, so the others still meet the targets)."""
    fixed = {str(p): s for p, s in (fixed or {}).items()}
    views = ["any"] * len(patient_ids) if views is None else [str(v) for v in views]
    counts: dict[str, dict[str, int]] = {}
    for p, v in zip(patient_ids, views):
        c = counts.setdefault(str(p), {})
        c[v] = c.get(v, 0) + 1
    total: dict[str, int] = {}
    for c in counts.values():
        for v, k in c.items():
            total[v] = total.get(v, 0) + k
    order = sorted(counts, key=lambda p: (p not in fixed, -sum(counts[p].values()),
                                          hashlib.sha256(f"{salt}:{p}".encode()).hexdigest()))
    filled = {s: dict.fromkeys(total, 0) for s in shares}
    out = {}
    for p in order:
        def shortfall(s):  # images of this patient's views still missing from split s (ties: shares order)
            return sum(k * (shares[s] * total[v] - filled[s][v]) for v, k in counts[p].items())

        s = fixed[p] if p in fixed else max(shares, key=shortfall)
        out[p] = s
        for v, k in counts[p].items():
            filled[s][v] += k
    return out


def image_splits(labels) -> list[str]:
    """The split of each row of an NIH ``labels.csv`` table (``patient_id``, ``view_position``, ``No Finding``)."""
    ids = [str(p) for p in labels["patient_id"]]
    kinds = [f"{v}/{int(n)}" for v, n in zip(labels["view_position"], labels["No Finding"])]
    by_patient = patient_splits(ids, kinds)
    return [by_patient[p] for p in ids]


def select_cxr64_split(source, split: str):
    """``cxr64-train`` / ``cxr64-heldout`` / ``cxr64-reference``: the cxr64 protocol's patient-disjoint NIH split.

    ``cxr64-disjoint``: any NIH folder (full resolution, a GPU recipe's data) without the patients of the
    protocol's reference and held-out sets, whose ids ship with their features: training there keeps every
    cxr64 number free of patient leakage."""
    if split == "cxr64-disjoint":
        return _without_protocol_patients(source, split)
    name = split.removeprefix("cxr64-")
    need = {"patient_id", "view_position", "No Finding"}
    if name not in SPLITS:
        raise UsageError(f"--split {split}: the cxr64 splits are {', '.join('cxr64-' + s for s in SPLITS)}")
    if source.labels is None or not need <= set(source.labels.columns):
        raise UsageError(f"--split {split}: {source.name} needs labels.csv columns {sorted(need)} (the NIH "
                         "nih1000_64px layout) to apply the cxr64 patient split")
    keep = [i for i, s in enumerate(image_splits(source.labels)) if s == name]
    return source.subset(keep)


def _without_protocol_patients(source, split: str):
    if source.patient_ids is None and (source.labels is None or "patient_id" not in source.labels.columns):
        raise UsageError(f"--split {split}: {source.name} has no patient ids (a labels.csv patient_id column or "
                         "a named reference such as nih-cxr14); they decide which images stay out")
    pids = source.patient_ids or source.labels["patient_id"].astype(str).tolist()
    held = {_pid(p) for w in ("reference", "heldout") for p in cxr64_features(w).patient_ids}
    keep = [i for i, p in enumerate(pids) if _pid(p) not in held]
    return source.subset(keep)


def protocol_overlap(source, load_features=None) -> dict[str, int]:
    """How much of ``source`` is a protocol's reference or held-out set (``load_features`` of that protocol;
    cxr64's by default): images (by sha256, shipped with their features) and further images of their patients
    (by patient id). Training on either leaks the protocol's evaluation data into the model (``train`` warns
    or refuses on it)."""
    if load_features is None:
        load_features = cxr64_features

    hashes = set(source.hashes)
    pids = source.patient_ids
    if pids is None and source.labels is not None and "patient_id" in source.labels.columns:
        pids = source.labels["patient_id"].astype(str).tolist()
    out = {"images": 0, "patient_images": 0}
    held_patients = set()
    for which in ("reference", "heldout"):
        pre = load_features(which)
        out["images"] += len(hashes & set(pre.hashes))
        held_patients |= {_pid(p) for p in pre.patient_ids}
    if pids is not None:
        out["patient_images"] = sum(_pid(p) in held_patients for p in pids)
    out["train_split_present"] = int(set(load_features("train").hashes) <= hashes)
    return out


def _pid(p) -> str:
    return str(p).lstrip("0") or "0"
