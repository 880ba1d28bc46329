"""Named references resolved under ``CXRBENCH_DATA`` with the metadata torchxrayvision ships.

- ``nih-cxr14``: NIH ChestX-ray14 PNGs anywhere below ``$CXRBENCH_DATA/nih-cxr14/``; labels and patient
  ids from torchxrayvision's ``Data_Entry_2017_v2020.csv.gz``. Splits: ``test`` and ``train_val`` are NIH's
  official lists (``test_list.txt`` / ``train_val_list.txt`` from the NIH download, anywhere in the folder).
- ``chexpert``: CheXpert-v1.0(-small) below ``$CXRBENCH_DATA/chexpert/`` with its ``train.csv``/``valid.csv``;
  labels mapped to NIH names where they coincide. Splits: ``train`` and ``valid`` are exactly the rows of
  ``train.csv`` / ``valid.csv``.

Both also have ``hash-train``/``hash-valid``/``hash-test`` (80/10/10, patient-wise and deterministic: a
patient's split is fixed by the sha256 of the patient id), ``half0``/``half1`` and ``all``. Only the images of
the selected split are hashed (through the folder's persistent index).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from ..registry import REFERENCES as ADAPTERS
from .imageset import ImageSource, _read_csv, hash_folder_files, scan_folder, select_split
from .labels import LABELS, NIH14, NO_FINDING

REFERENCES = {
    "nih-cxr14": "NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC), PNGs as published",
    "chexpert": "CheXpert-v1.0-small (https://stanfordmlgroup.github.io/competitions/chexpert/)",
}
CHEXPERT_TO_NIH = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Pleural Effusion": "Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "No Finding": NO_FINDING,
}


def data_root() -> Path:
    return Path(os.environ.get("CXRBENCH_DATA", Path.home() / ".cache" / "cxrbench" / "data")).expanduser()


HASH_SPLITS = ("hash-train", "hash-valid", "hash-test")
# the dataset's own split: which file defines it
OFFICIAL_SPLITS = {
    "nih-cxr14": {"test": "test_list.txt", "train_val": "train_val_list.txt"},
    "chexpert": {"train": "train.csv", "valid": "valid.csv"},
}


def patient_split(patient_id: str) -> str:
    u = int(hashlib.sha256(str(patient_id).encode()).hexdigest()[:8], 16) / 2**32
    return "hash-train" if u < 0.8 else "hash-valid" if u < 0.9 else "hash-test"


def _official_lists(folder: Path, others: list[str]) -> dict[str, list[str]]:
    """NIH's split files (image names, one per line) found in the folder, the shallowest of each name."""
    out = {}
    for split, fn in OFFICIAL_SPLITS["nih-cxr14"].items():
        found = sorted((p for p in others if Path(p).name == fn), key=lambda p: (p.count("/"), p))
        if found:
            text = (folder / found[0]).read_text(errors="replace")
            out[split] = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return out


def _split_rows(name: str, table, split: str, folder: Path, defined: set[str], official: dict[str, str]):
    """Boolean mask of ``table``'s rows in ``split`` (a dataset split whose file is in ``defined``, or a hash
    split)."""
    if split in HASH_SPLITS:
        mask = (table["hash_split"] == split).to_numpy()
    elif split in official:
        if split not in defined:
            raise UsageError(
                f"{name}: split {split!r} is the dataset's own {official[split]}, not found under {folder}; put "
                f"the file from the download there, or use {'/'.join(HASH_SPLITS)} (patient-wise, by hash)")
        mask = (table["split"] == split).to_numpy()
    else:
        known = [*official, *HASH_SPLITS, "half0", "half1", "all"]
        hint = " (NIH's official lists are train_val and test)" if split in ("train", "valid") else ""
        raise UsageError(f"{name}: no split {split!r}{hint}; splits: {', '.join(known)}")
    if not mask.any():
        raise UsageError(f"{name}: split {split!r} holds no image of {folder}")
    return mask


def _missing(name: str, folder: Path) -> DataError:
    env = os.environ.get("CXRBENCH_DATA")
    what = REFERENCES.get(name) or ADAPTERS.get(name).description or name
    return DataError(
        f"reference {name!r} not found: put the {what} images under {folder} "
        f"(CXRBENCH_DATA={'unset, default ' + str(data_root()) if env is None else env}), or pass a folder"
    )


def _xrv_csv(name: str) -> Path:
    import torchxrayvision as xrv

    return Path(xrv.__file__).parent / "data" / name


class NamedReference:
    """A dataset known by name (``--reference nih-cxr14``): where its images are and how its metadata reads.

    A subclass gives ``description`` (shown when the folder is missing), ``official_splits`` (split -> the
    file that defines it) and ``table(folder, images, others, split)``: a DataFrame with ``path``, label
    columns (``LABELS`` names), ``patient_id`` and ``split`` (the official split, NaN outside them), the set
    of official splits found, and notes. Registered in ``cxrbench.registry.REFERENCES`` (entry-point group
    ``cxrbench.references``), so an outside package can add a dataset without touching this module.
    """

    name = ""
    description = ""
    official_splits: dict[str, str] = {}

    def table(self, folder: Path, images: list[str], others: list[str], split: str | None):
        raise NotImplementedError


class NIHChestXray14(NamedReference):
    name = "nih-cxr14"
    description = REFERENCES["nih-cxr14"]
    official_splits = OFFICIAL_SPLITS["nih-cxr14"]

    def table(self, folder, images, others, split):
        import pandas as pd

        notes: list[str] = []
        meta = pd.read_csv(_xrv_csv("Data_Entry_2017_v2020.csv.gz"))
        meta = meta.set_index("Image Index")
        by_name = {Path(p).name: p for p in images}
        keep = [n for n in by_name if n in meta.index]
        if not keep:
            raise DataError(f"{folder}: no file names match NIH image indices (e.g. 00000001_000.png)")
        rows = meta.loc[keep]
        table = pd.DataFrame({"path": [by_name[n] for n in keep]})
        findings = rows["Finding Labels"].astype(str).str.split("|")
        for lab in NIH14 + [NO_FINDING]:
            table[lab] = [float(lab in f) for f in findings]
        table["patient_id"] = rows["Patient ID"].astype(str).to_numpy()
        table["view_position"] = rows["View Position"].to_numpy()
        official = pd.Series(np.nan, index=keep, dtype=object)
        lists = _official_lists(folder, others)
        for s, listed in lists.items():
            present = [n for n in listed if n in official.index]
            official.loc[present] = s
            if len(present) < len(listed) and s == split:
                missing = next(n for n in listed if n not in official.index)
                notes.append(f"{self.official_splits[s]} lists {len(listed)} images, {len(listed) - len(present)} "
                             f"of them not in the folder (e.g. {missing}): split {s!r} is not the full official list")
        table["split"] = official.to_numpy()
        return table, set(lists), notes


class CheXpert(NamedReference):
    name = "chexpert"
    description = REFERENCES["chexpert"]
    official_splits = OFFICIAL_SPLITS["chexpert"]

    def table(self, folder, images, others, split):
        import pandas as pd

        csvs = [p for p in folder.rglob("*.csv") if p.name in ("train.csv", "valid.csv")]
        if not csvs:
            raise _missing(self.name, folder)
        meta = pd.concat([_read_csv(p).assign(_split=p.stem) for p in csvs], ignore_index=True)
        # CheXpert paths start with "CheXpert-v1.0-small/..."; match on the trailing patientX/studyY/viewZ.jpg
        tail = lambda s: "/".join(Path(s).parts[-3:])
        by_tail = {tail(p): p for p in images}
        meta = meta[meta["Path"].map(tail).isin(by_tail)]
        if meta.empty:
            raise DataError(f"{folder}: no images match the paths listed in {[str(c) for c in csvs]}")
        table = pd.DataFrame({"path": meta["Path"].map(lambda s: by_tail[tail(s)]).to_numpy()})
        for cx, nih in CHEXPERT_TO_NIH.items():
            v = meta[cx].to_numpy(dtype=float) if cx in meta.columns else np.full(len(meta), np.nan)
            table[nih] = np.where(v == 1, 1.0, np.where(v == 0, 0.0, np.nan))
        table["patient_id"] = meta["Path"].str.extract(r"(patient\d+)")[0].to_numpy()
        table["split"] = meta["_split"].to_numpy()
        return table, {p.stem for p in csvs}, []


def open_reference(name: str, *, split: str | None = None, seed: int = 0, index: bool = True,
                   cache_dir=None, dist=None) -> ImageSource:
    adapter = ADAPTERS.get(name)()
    folder = data_root() / name
    if not folder.is_dir():
        raise _missing(name, folder)
    images, others = scan_folder(folder)
    if not images:
        raise _missing(name, folder)
    table, defined, notes = adapter.table(folder, images, others, split)
    table["hash_split"] = [patient_split(p) for p in table["patient_id"]]
    table = table.drop_duplicates("path").reset_index(drop=True)
    whole = split in (None, "", "all", "half0", "half1")
    if not whole:  # hash only the split's images: the rest of a 112k-image folder is never read
        table = table[_split_rows(name, table, split, folder, defined, adapter.official_splits)].reset_index(drop=True)
    paths = table["path"].tolist()
    hashes = hash_folder_files(folder, paths, index=index, cache_dir=cache_dir, dist=dist)
    unreadable = [(paths[i], str(h)) for i, h in enumerate(hashes) if isinstance(h, DataError)]
    order = sorted((i for i, h in enumerate(hashes) if isinstance(h, str)), key=lambda i: (hashes[i], paths[i]))
    table = table.iloc[order].reset_index(drop=True)
    for lab in LABELS:
        if lab not in table.columns:
            table[lab] = np.nan
    src = ImageSource(
        name=name, root=folder, ids=[paths[i] for i in order], hashes=[hashes[i] for i in order], kind="named",
        labels=table, patient_ids=table["patient_id"].astype(str).tolist(), notes=notes, unreadable=unreadable,
    )
    if not whole:
        src.split = split
        return src
    return select_split(src, split, seed=seed)
