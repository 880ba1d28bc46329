"""File helpers: atomic writes (readers never see half a file) and checked JSON reads.

Kept free of torch at import time (``atomic_torch_save`` imports it when called), so results, reports and
the leaderboard can write files without loading the networks' stack.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from .errors import CxrbenchError, UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_PUBLIC_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _PUBLIC_MODE)  # mkstemp makes 0600; results and entries are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_output(path: str | os.PathLike, data: bytes) -> Path:
    """``atomic_write_bytes`` for a file the user asked for (a result, a report, an entry): a disk that is full
    or a folder that cannot be written is one ``CxrbenchError`` naming the file, and nothing is left behind."""
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CxrbenchError(f"{path}: cannot be written ({e.strerror or e}); nothing was written there. Free space "
                            "or pass a writable path") from None
    return Path(path)


def check_writable(path: str | os.PathLike) -> None:
    """Fail before the work, not after it, when ``path``'s folder cannot be created or written into."""
    folder = Path(path).absolute().parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise CxrbenchError(f"{path}: cannot be written ({probe} is not a writable folder); pass a writable path")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch names the zip's inner folder after the file: saving under the final name (in a temporary folder
    # beside it) makes identical weights give identical bytes, hence the same sha256, on every save
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        torch.save(obj, tmpdir / path.name)
        os.chmod(tmpdir / path.name, _PUBLIC_MODE)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from ``path``; anything else is a CxrbenchError naming the file."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CxrbenchError(f"{path}: not readable JSON ({e}); re-save the model folder") from None
    if not isinstance(meta, dict):
        raise CxrbenchError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta


def read_toml(path: str | os.PathLike, what: str = "file") -> dict:
    """A TOML file as a dict; a missing or malformed file is one ``UsageError`` naming it."""

    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
