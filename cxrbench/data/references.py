"""Named references resolved under ``CXRBENCH_DATA`` with the metadata torchxrayvision ships.

- ``nih-cxr14``: NIH ChestX-ray14 PNGs anywhere below ``$CXRBENCH_DATA/nih-cxr14/``; labels and patient
  ids from torchxrayvision's ``Data_Entry_2017_v2020.csv.gz``; splits ``train``/``valid``/``test`` (80/10/10)
  are patient-wise and deterministic (a patient's split is fixed by the sha256 of the patient id).
- ``chexpert``: CheXpert-v1.0(-small) below ``$CXRBENCH_DATA/chexpert/`` with its ``train.csv``/``valid.csv``;
  labels mapped to NIH names where they coincide; the same patient-wise split rule.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..labels import LABELS, NIH14, NO_FINDING
from .sources import ImageSource, _hash_files, _read_csv, scan_folder, select_split

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


def patient_split(patient_id: str) -> str:
    u = int(hashlib.sha256(str(patient_id).encode()).hexdigest()[:8], 16) / 2**32
    return "train" if u < 0.8 else "valid" if u < 0.9 else "test"


def _missing(name: str, folder: Path) -> DataError:
    env = os.environ.get("CXRBENCH_DATA")
    return DataError(
        f"reference {name!r} not found: put the {REFERENCES[name]} images under {folder} "
        f"(CXRBENCH_DATA={'unset, default ' + str(data_root()) if env is None else env}), or pass a folder"
    )


def _xrv_csv(name: str) -> Path:
    import torchxrayvision as xrv

    return Path(xrv.__file__).parent / "data" / name


def open_reference(name: str, *, split: str | None = None, seed: int = 0) -> ImageSource:
    import pandas as pd

    folder = data_root() / name
    if not folder.is_dir():
        raise _missing(name, folder)
    images, _ = scan_folder(folder)
    if not images:
        raise _missing(name, folder)
    if name == "nih-cxr14":
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
    else:  # chexpert
        csvs = [p for p in folder.rglob("*.csv") if p.name in ("train.csv", "valid.csv")]
        if not csvs:
            raise _missing(name, folder)
        meta = pd.concat([_read_csv(p) for p in csvs], ignore_index=True)
        present = {p: p for p in images}
        # CheXpert paths start with "CheXpert-v1.0-small/..."; match on the trailing patientX/studyY/viewZ.jpg
        tail = lambda s: "/".join(Path(s).parts[-3:])  # noqa: E731
        by_tail = {tail(p): p for p in present}
        meta = meta[meta["Path"].map(tail).isin(by_tail)]
        if meta.empty:
            raise DataError(f"{folder}: no images match the paths listed in {[str(c) for c in csvs]}")
        table = pd.DataFrame({"path": meta["Path"].map(lambda s: by_tail[tail(s)]).to_numpy()})
        for cx, nih in CHEXPERT_TO_NIH.items():
            v = meta[cx].to_numpy(dtype=float) if cx in meta.columns else np.full(len(meta), np.nan)
            table[nih] = np.where(v == 1, 1.0, np.where(v == 0, 0.0, np.nan))
        table["patient_id"] = meta["Path"].str.extract(r"(patient\d+)")[0].to_numpy()
    table["split"] = [patient_split(p) for p in table["patient_id"]]
    table = table.drop_duplicates("path")
    paths = table["path"].tolist()
    hashes = _hash_files([folder / p for p in paths])
    order = sorted(range(len(paths)), key=lambda i: (hashes[i], paths[i]))
    table = table.iloc[order].reset_index(drop=True)
    for lab in LABELS:
        if lab not in table.columns:
            table[lab] = np.nan
    src = ImageSource(
        name=name, root=folder, ids=[paths[i] for i in order], hashes=[hashes[i] for i in order], kind="named",
        labels=table, patient_ids=table["patient_id"].astype(str).tolist(),
    )
    return select_split(src, split, seed=seed)
