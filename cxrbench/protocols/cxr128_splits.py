"""Patient-disjoint splits of the 256 px NIH ChestX-ray14 images (``nih_extra_256px``) behind the ``cxr128`` protocol.

The same balanced patient assignment as ``cxr64`` (largest patients first, each to the split whose shortfall
is largest for the kinds of image it brings: view AP/PA x normal/abnormal), with its own salt and targets
near 600 / 300 / the rest:
- ``reference`` (~37.6%, ~600 images): the protocol's reference; its features ship, never its images, and
  neither the protocol's network nor a bundled generator sees it;
- ``heldout`` (~19.4%, >= 300 images): real images in neither; they supply the held-out real row at the
  protocol's sample count and calibrate the label head;
- ``train`` (the rest, ~690 images): what the bundled generators train on (the feature network trains on it
  too, with every other public radiograph that is neither reference nor held-out).

NIH patients span folders: a patient of ``nih_extra_256px`` who also appears in ``nih1000_64px`` (one does)
is put in ``train``, so that no image of a reference or held-out patient is anywhere else in the data.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .cxr64_splits import patient_splits
from .cxr128 import load_features

SPLITS = {"train": 0.43, "reference": 0.376, "heldout": 0.194}
SALT = "cxr128"


def _norm(pid) -> str:
    """Patient ids compare as integers ("00282" and "282" are one NIH patient)."""
    return str(pid).strip().lstrip("0") or "0"


def image_splits(labels, *, other_patients=()) -> list[str]:
    """The split of each row of an NIH ``labels.csv`` table (``patient_id``, ``view_position``, ``No Finding``).

    ``other_patients``: patient ids that appear in other NIH folders; they go to ``train``."""
    ids = [_norm(p) for p in labels["patient_id"]]
    kinds = [f"{v}/{int(n)}" for v, n in zip(labels["view_position"], labels["No Finding"])]
    others = {_norm(p) for p in other_patients}
    by_patient = patient_splits(ids, kinds, shares=SPLITS, salt=SALT,
                                fixed={p: "train" for p in set(ids) & others})
    return [by_patient[p] for p in ids]


def nih_splits(data_root) -> object:
    """``labels.csv`` of ``data_root/nih_extra_256px`` with a ``cxr128_split`` column (patients of
    ``data_root/nih1000_64px`` forced to ``train`` where that folder is present)."""

    import pandas as pd  # heavy; only callers that read the data folder need it

    root = Path(data_root)
    csv = root / "nih_extra_256px" / "labels.csv"
    if not csv.is_file():
        raise UsageError(f"{csv} not found: the cxr128 splits are defined on the nih_extra_256px folder "
                         "(pass the data folder that holds it)")
    table = pd.read_csv(csv)
    small = root / "nih1000_64px" / "labels.csv"
    others = pd.read_csv(small)["patient_id"].tolist() if small.is_file() else []
    table["cxr128_split"] = image_splits(table, other_patients=others)
    return table


def select_cxr128_split(source, split: str):
    """``cxr128-train`` / ``cxr128-heldout`` / ``cxr128-reference`` of ``nih_extra_256px`` (or any NIH folder).

    Decided by what the protocol ships, not recomputed from this folder's table (which cannot see the patients
    of the other NIH folder): ``reference`` / ``heldout`` are the images whose sha256 ships with those splits;
    ``train`` is every image of a patient in neither."""
    return source.subset([i for i, keep in enumerate(split_mask(source, split)) if keep])


def split_mask(source, split: str) -> list[bool]:
    """For each image of ``source``: whether it is in ``split`` (``cxr128-train`` / ``-heldout`` /
    ``-reference``), by the rule of :func:`select_cxr128_split`."""
    name = split.removeprefix("cxr128-")
    if name not in SPLITS:
        raise UsageError(f"--split {split}: the cxr128 splits are {', '.join('cxr128-' + s for s in SPLITS)}")
    if name != "train":
        hashes = set(load_features(name).hashes)
        return [h in hashes for h in source.hashes]
    pids = source.patient_ids
    if pids is None and source.labels is not None and "patient_id" in source.labels.columns:
        pids = source.labels["patient_id"].astype(str).tolist()
    if pids is None:
        raise UsageError(f"--split {split}: {source.name} has no patient ids (a labels.csv patient_id column); "
                         "they decide which images stay out of training")
    held = {_norm(p) for w in ("reference", "heldout") for p in load_features(w).patient_ids}
    held_hashes = {h for w in ("reference", "heldout") for h in load_features(w).hashes}
    return [_norm(p) not in held and h not in held_hashes for p, h in zip(pids, source.hashes)]
