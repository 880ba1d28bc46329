"""Image sets: a folder of images or an array file, with labels and manifests (named references build on
these in ``references.py``; ``sources.open_source`` opens any of them).

Every set is put in a canonical order (by file sha256, then relative path), so the features of a set, the
set's hash and every metric are independent of directory listing order.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from . import index as _index
from .io import IMAGE_SUFFIXES, load_array_file, load_image, sha256_bytes, sha256_file
from .labels import LABEL_LIST_COLUMNS, LABELS, MANIFEST_METADATA, canonical_label, unknown_label
from .splits import real_vs_real_split

SIDE_FILES = {"labels.csv", "manifest.csv", "sha256sums"}
#: smallest short side of an image in a set: smaller is no radiograph (a broken generator output), and upsampled
#: to an extractor's input (64 to 299 px) it would give features that mean nothing
MIN_SIDE = 16


def set_sha256(file_hashes) -> str:
    """A set's hash: sha256 over its sorted per-file sha256s (the result's and the entry's definition)."""
    return hashlib.sha256("\n".join(sorted(file_hashes)).encode()).hexdigest()


@dataclass
class ImageSource:
    """An ordered image set. ``ids`` are paths relative to ``root`` (or ``array[i]`` for arrays)."""

    name: str  # what the user gave: a path or a reference name
    root: Path | None
    ids: list[str]
    hashes: list[str]
    kind: str = "folder"  # folder | array | named
    split: str = "all"
    labels: object = None  # pandas.DataFrame aligned with ids (LABELS columns + extras), or None
    manifest: object = None  # pandas.DataFrame aligned with ids (samples' manifest.csv), or None
    patient_ids: list[str] | None = None
    ignored: list[str] = field(default_factory=list)  # files present but not images
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relative path, message): cannot be read
    notes: list[str] = field(default_factory=list)  # things about the set the result should warn about
    _array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sha256(self) -> str:
        """Hash of the set: sha256 over the sorted per-image sha256s (order and names do not matter)."""
        return set_sha256(self.hashes)

    def path(self, i: int) -> Path | None:
        return None if self.root is None or self._array is not None else self.root / self.ids[i]

    def load(self, i: int) -> np.ndarray:
        img = self._array[i] if self._array is not None else load_image(self.root / self.ids[i])
        if min(img.shape[-2:]) < MIN_SIDE:
            where = self.path(i) or f"{self.name} {self.ids[i]}"
            raise DataError(f"{where}: {img.shape[-1]}x{img.shape[-2]} pixels, below the {MIN_SIDE} px short side "
                            "cxrbench evaluates (upsampled to an extractor's input it would give meaningless "
                            "features); regenerate it at full size or remove it")
        return img

    def subset(self, idx) -> ImageSource:
        idx = [int(i) for i in idx]
        pick = lambda df: None if df is None else df.iloc[idx].reset_index(drop=True)
        return ImageSource(
            name=self.name, root=self.root, ids=[self.ids[i] for i in idx], hashes=[self.hashes[i] for i in idx],
            kind=self.kind, split=self.split, labels=pick(self.labels), manifest=pick(self.manifest),
            patient_ids=None if self.patient_ids is None else [self.patient_ids[i] for i in idx],
            ignored=list(self.ignored), unreadable=list(self.unreadable), notes=list(self.notes),
            _array=None if self._array is None else self._array[idx],
        )

    def describe(self) -> dict:
        return {"path": self.name, "kind": self.kind, "split": self.split, "n": len(self), "sha256": self.sha256}

    def label_matrix(self) -> np.ndarray | None:
        """(N, 15) float32 in LABELS order, NaN where unknown; None without labels."""
        if self.labels is None:
            return None
        out = np.full((len(self), len(LABELS)), np.nan, dtype=np.float32)
        for j, lab in enumerate(LABELS):
            if lab in self.labels.columns:
                out[:, j] = self.labels[lab].to_numpy(dtype=np.float32, na_value=np.nan)
        return out


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable CSV ({e.__class__.__name__}: {e})") from None


def _relative(p: str, csv_path: Path, column: str, root: str) -> str:
    """``p`` as a normalised relative path; refuses absolute paths and any that climb out with ``..``."""
    q = os.path.normpath(p.replace("\\", "/"))  # CSVs written on Windows use backslashes
    if os.path.isabs(q) or q == ".." or q.startswith("../") or re.match(r"[A-Za-z]:", q):
        raise DataError(f"{csv_path}: {column} {p!r} leaves its folder; use paths relative to {root}")
    return Path(q).as_posix()


def _check_label_values(df, csv_path: Path) -> None:
    """Label columns must hold 0/1 (or probabilities in [0, 1]); blank means unknown. Anything else is refused
    rather than read as a number it is not (e.g. CheXpert's -1 "uncertain", or "yes")."""
    import pandas as pd

    for c in df.columns:
        if canonical_label(str(c)) is None:
            continue
        col = df[c]
        num = pd.to_numeric(col, errors="coerce")
        bad = (col.notna() & num.isna()) | ~(num.isna() | ((num >= 0) & (num <= 1)))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{csv_path}: label column {c!r} holds {str(col.iloc[i])!r} (row {i + 2}); use 1/0, or leave it blank "
                "for unknown (map uncertain values such as -1 explicitly)"
            )
        df[c] = num.astype("float64")


def _check_manifest_columns(df, csv_path: Path) -> None:
    """A samples manifest holds requested labels, so a column that reads as a label but is none (a typo such as
    ``Efusion``, a CheXpert-only name, 0/1 values under an unknown name) is refused: it would silently drop that
    label from every label metric. Other columns (generator metadata with other values) pass."""
    import pandas as pd

    lower = [lab.lower() for lab in LABELS]
    for c in df.columns[1:] if "path" not in df.columns else df.columns:
        name = str(c)
        if name in MANIFEST_METADATA or name.startswith("Unnamed:") or canonical_label(name) is not None:
            continue  # "Unnamed: 0": the index pandas writes by default, not a label
        if name in LABEL_LIST_COLUMNS:
            for s in df[c].dropna():
                for t in str(s).replace(",", "|").split("|"):
                    if t.strip() and canonical_label(t) is None:
                        raise DataError(unknown_label(f"{csv_path}: column {name!r} holds", t.strip()))
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        binary = len(df) > 0 and df[c].notna().any() and bool(num[df[c].notna()].isin([0, 1]).all())
        if binary or difflib.get_close_matches(name.strip().lower(), lower, n=1, cutoff=0.8):
            raise DataError(unknown_label(f"{csv_path}: column", name) + " (rename the column, or drop it if it "
                            "is no label)")


def _align_table(df, ids: list[str], csv_path: Path, root: Path, notes: list[str] | None = None):
    """Rows of ``df`` (first column = path relative to ``root``) in the order of ``ids``; label columns canonical."""
    df = df.copy()
    if len(df.columns) == 0:
        raise DataError(f"{csv_path}: no columns; the first column must be 'path'")
    if "path" not in df.columns:  # the first column is the path whatever its header: named so from here on, or a
        df = df.rename(columns={df.columns[0]: "path"})  # header that reads as a label would clash with that label
    key = "path"
    if df[key].isna().any():
        raise DataError(f"{csv_path}: row {int(np.flatnonzero(df[key].isna().to_numpy())[0]) + 2} has no path")
    df[key] = [_relative(str(p), csv_path, "path", root) for p in df[key]]
    if "source" in df.columns:  # a manifest's source image: relative to the reference folder, never outside it
        for p in df["source"].dropna():
            _relative(str(p), csv_path, "source", "the reference folder")
    _check_label_values(df, csv_path)
    if df[key].duplicated().any():
        dup = df[key][df[key].duplicated()].iloc[0]
        raise DataError(f"{csv_path}: path {dup!r} is listed twice")
    df = df.set_index(key)
    rename = {}
    for c in df.columns:
        lab = canonical_label(str(c))
        if lab is not None and lab != c and lab not in df.columns:
            rename[c] = lab
    df = df.rename(columns=rename)
    if notes is not None:
        listed = set(df.index)
        stray = sorted(listed - set(ids))
        unlisted = sum(1 for i in ids if i not in listed)
        if stray:
            notes.append(f"{csv_path.name}: {len(stray)} row(s) name no image in the folder (e.g. {stray[0]}); ignored")
        if unlisted:
            notes.append(f"{csv_path.name}: {unlisted} of {len(ids)} image(s) have no row; their labels are unknown")
    return df.reindex(ids).reset_index().rename(columns={"index": "path"})


def _dicom_magic(path: str) -> bool:
    """A DICOM file by content: PACS exports often have no extension, or a UID's last digits as one. Only
    regular files are opened (a named pipe would block the scan)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def scan_folder(root: Path) -> tuple[list[str], list[str]]:
    """(images, ignored): images by suffix, or DICOM by its magic bytes; side files and hidden files skipped."""
    images, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # string joins, not pathlib: this loop runs once per file of a 112k-image reference on every open
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for fn in sorted(filenames):
            if fn.startswith(".") or fn.lower() in SIDE_FILES:
                continue
            is_image = (os.path.splitext(fn)[1].lower() in IMAGE_SUFFIXES
                        or _dicom_magic(os.path.join(dirpath, fn)))
            (images if is_image else ignored).append(prefix + fn)
    return images, ignored


def _hash_files(paths: list[Path], workers: int = 8) -> list[str | DataError]:
    """sha256 of each file; a file that cannot be read (symlink loop, dangling link, I/O error) gives its
    DataError in place, so that every such file is listed, not just the first."""

    def one(p: Path) -> str | DataError:
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):  # a named pipe would block the read forever
                return DataError(f"{p}: not a regular file (a named pipe, socket or device); remove it from the folder")
            return sha256_file(p)
        except OSError as e:
            return DataError(f"{p}: cannot be read ({e.strerror or e})")

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, paths))


def sharded_hasher(hasher, dist):
    """``hasher`` split across the ranks of ``dist`` (anything with ``active``, ``rank``, ``world_size``,
    ``is_main`` and ``all_gather(obj)``, e.g. ``engine.distributed.DistContext``): each rank reads the files
    whose path's crc32 falls to it, then every rank gets every hash. The owner of a file depends on its path
    alone, so ranks that were asked for different files (one changed between their index checks) still agree
    on what they share; a file no rank hashed is hashed where it is missing. Every rank must call it the same
    number of times (once per folder opened)."""
    if dist is None or not dist.active:
        return hasher

    def run(paths: list[Path]) -> list:
        mine = [p for p in paths if zlib.crc32(str(p).encode()) % dist.world_size == dist.rank]
        merged: dict[str, object] = {}
        for part in dist.all_gather(dict(zip(map(str, mine), hasher(mine)))):
            merged.update(part)
        missing = [p for p in paths if str(p) not in merged]
        merged.update(zip(map(str, missing), hasher(missing)))
        return [merged[str(p)] for p in paths]

    return run


def hash_folder_files(root: Path, rels: list[str], *, index: bool = True, cache_dir=None,
                      present: set[str] | None = None, dist=None) -> list[str | DataError]:
    """sha256 of each ``root / rel``; through the folder's persistent index (``data/index.py``) unless
    ``index`` is False (``cxrbench verify`` re-reads every byte: an index is not evidence). Under ``dist``
    (torchrun) the files are shared out between the ranks (``sharded_hasher``) and rank 0 writes the index."""
    hasher = sharded_hasher(_hash_files, dist)
    if not index:
        return hasher([root / p for p in rels])
    return _index.hash_files(root, rels, hasher, cache_dir=cache_dir, present=present,
                             write=dist is None or dist.is_main)


def open_folder(path: str | os.PathLike, *, name: str | None = None, role: str = "samples", index: bool = True,
                cache_dir=None, split: str | None = None, dist=None) -> ImageSource:
    """A folder of images. With ``split`` a value of labels.csv's ``split`` column, only that split's images
    are hashed (the set still needs ``select_split`` to be labelled with the split)."""
    root = Path(path)
    images, ignored = scan_folder(root)
    if not images:
        extra = f" (found {len(ignored)} other files, e.g. {ignored[0]})" if ignored else ""
        raise DataError(
            f"{root}: no images found{extra}; cxrbench reads {', '.join(sorted(IMAGE_SUFFIXES))} files "
            f"(or pass a .npy/.npz array as --{role})"
        )
    tables = {attr: (root / fn, _read_csv(root / fn)) for fn, attr in (("labels.csv", "labels"),
                                                                        ("manifest.csv", "manifest"))
              if (root / fn).is_file()}
    if "manifest" in tables:  # a reference's labels.csv may carry labels of its own dataset (COVID-19, ...)
        _check_manifest_columns(tables["manifest"][1], tables["manifest"][0])
    notes: list[str] = []
    # tables checked and noted against every image in the folder, whichever split is hashed
    full = {attr: _align_table(df, images, p, root, notes) for attr, (p, df) in tables.items()}
    chosen = images
    if split not in (None, "", "all", "half0", "half1") and "split" in getattr(full.get("labels"), "columns", ()):
        keep = full["labels"]["split"].astype(str).to_numpy() == split
        if keep.any():  # else select_split names the splits present
            chosen = [p for p, k in zip(images, keep) if k]
    hashes = hash_folder_files(root, chosen, index=index, cache_dir=cache_dir, present=set(images), dist=dist)
    unreadable = [(chosen[i], str(h)) for i, h in enumerate(hashes) if isinstance(h, DataError)]
    ok = [i for i, h in enumerate(hashes) if not isinstance(h, DataError)]
    order = sorted(ok, key=lambda i: (hashes[i], chosen[i]))
    ids = [chosen[i] for i in order]
    src = ImageSource(name=name or str(path), root=root, ids=ids, hashes=[hashes[i] for i in order], ignored=ignored,
                      unreadable=unreadable, notes=notes)
    for attr, (p, df) in tables.items():
        setattr(src, attr, _align_table(df, ids, p, root))
    if src.labels is None and src.manifest is not None:
        # a samples manifest's requested labels double as the set's labels
        src.labels = src.manifest
    table = src.labels
    if table is not None and "patient_id" in table.columns and table["patient_id"].notna().all():
        src.patient_ids = [str(p) for p in table["patient_id"]]
    return src


def array_source(arr: np.ndarray, *, name: str, root: Path | None) -> ImageSource:
    """An image set over decoded (N, H, W) float32 images, in canonical (hash) order."""
    hashes = [sha256_bytes(a.tobytes() + str(a.shape).encode()) for a in arr]
    order = sorted(range(len(arr)), key=lambda i: (hashes[i], i))
    return ImageSource(
        name=name, root=root, ids=[f"array[{i}]" for i in order], hashes=[hashes[i] for i in order],
        kind="array", _array=arr[order],
    )


def open_array(path: str | os.PathLike) -> ImageSource:
    return array_source(load_array_file(path), name=str(path), root=Path(path).parent)


def select_split(src: ImageSource, split: str | None, *, seed: int = 0) -> ImageSource:
    """``half0``/``half1``: deterministic (patient-wise when known) halves; other values: labels.csv ``split``."""
    if split in (None, "", "all"):
        return src
    if split in ("half0", "half1"):
        a, b = real_vs_real_split(len(src), seed, src.patient_ids)
        out = src.subset(a if split == "half0" else b)
    else:
        if src.labels is None or "split" not in src.labels.columns:
            raise UsageError(
                f"{src.name}: split {split!r} needs a 'split' column in labels.csv; use half0/half1 otherwise"
            )
        # a named reference's patient-hash splits (hash-train/...) sit in their own column
        key = "hash_split" if split.startswith("hash-") and "hash_split" in src.labels.columns else "split"
        col = src.labels[key].astype(str)
        idx = np.flatnonzero(col.to_numpy() == split)
        if len(idx) == 0:
            raise UsageError(f"{src.name}: no images with split {split!r}; splits present: {sorted(set(col))}")
        out = src.subset(idx)
    out.split = split
    return out
