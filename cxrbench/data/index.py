"""A persistent hash index per folder: (relative path, size, mtime_ns, ctime_ns, inode) -> sha256.

Opening NIH ChestX-ray14 (112,120 PNGs, ~45 GB) would otherwise read and hash every byte on every run. The
index of a folder lives at ``<cache>/index/<sha256 of its absolute path>.json``, is written atomically after
hashing, and holds one entry per file hashed so far. An entry is trusted only when size, mtime, ctime and
inode all match and the file last changed before the scan that hashed it began (a file modified while it was
being hashed, or within the file system's timestamp tick of it, is hashed again). ctime cannot be set from
user space, so an edit that restores the old mtime is still caught. A corrupt or foreign index is ignored and
rebuilt. Only the files asked for are hashed: opening one split of a reference leaves the others alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_write_bytes

SCHEMA = "cxrbench.index/1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXRBENCH_CACHE", Path.home() / ".cache" / "cxrbench")).expanduser()


def index_path(root: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "index" / f"{key}.json"


def _load(path: Path, root: str) -> dict[str, list]:
    """The index's entries, or {} when it is absent, unreadable, malformed or made for another folder.
    Entries are checked one by one where they are used (``_trusted``)."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("schema") == SCHEMA and doc.get("root") == root and isinstance(doc.get("files"), dict):
            return doc["files"]
    except Exception:  # noqa: BLE001 - any damage means "no index": everything is hashed again
        pass
    return {}


def _trusted(e, key: list[int]) -> str | None:
    """The entry's sha256 when ``e`` = [size, mtime_ns, ctime_ns, inode, sha256, scan_ns] is well formed, its
    stat fields equal ``key``, and the file last changed before the scan that hashed it began."""
    if (type(e) is list and len(e) == 6 and e[:4] == key and type(e[5]) is int and max(key[1], key[2]) < e[5]
            and type(e[4]) is str and _HEX64.fullmatch(e[4])):
        return e[4]
    return None


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def hash_files(root: Path, rels: list[str], hasher, *, cache_dir=None, present: set[str] | None = None,
                write: bool = True) -> list:
    """sha256 of ``root / rel`` for each of ``rels`` (a DataError in place of a file that cannot be read),
    reading only files that are new or changed since the index last saw them.

    ``hasher(paths)`` hashes a list of paths (threaded); ``present``, when given, is every file now in the
    folder, and entries for files gone from it are dropped. ``write`` False leaves the index file alone
    (the other ranks under torchrun: rank 0 writes it).
    """
    root = Path(root)
    path = index_path(root, cache_dir)
    root_key = str(root.resolve())
    entries = _load(path, root_key)
    base = str(root)
    scan_ns = time.time_ns()
    out: list = [None] * len(rels)
    todo: list[int] = []
    keys: dict[int, list[int]] = {}
    for i, rel in enumerate(rels):
        try:
            st = os.stat(os.path.join(base, rel))
        except OSError as e:
            out[i] = DataError(f"{root / rel}: cannot be read ({e.strerror or e})")
            continue
        k = _stat_key(st)
        h = _trusted(entries.get(rel), k)
        if h is not None:
            out[i] = h
        else:
            todo.append(i)
            keys[i] = k
    changed = False
    for i, h in zip(todo, hasher([root / rels[i] for i in todo])):
        out[i] = h
        if isinstance(h, str):
            entries[rels[i]] = keys[i] + [h, scan_ns]
            changed = True
    if present is not None:
        gone = [r for r in entries if r not in present]
        for r in gone:
            del entries[r]
        changed = changed or bool(gone)
    if changed and write:
        doc = {"schema": SCHEMA, "root": root_key, "files": entries}
        try:
            atomic_write_bytes(path, json.dumps(doc, separators=(",", ":")).encode())
        except OSError:
            pass  # a read-only cache only costs the next run a re-hash; the hashes returned are right
    return out
