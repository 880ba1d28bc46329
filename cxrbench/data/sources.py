"""Opening an image set by what the user typed: a folder, an array file, or a named reference.

The set types themselves live in ``imageset.py``, so that ``references.py`` builds on them without importing
this module back.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..registry import REFERENCES as NAMED_REFERENCES
from .imageset import (
    ImageSource,
    open_array,
    open_folder,
    select_split,
)
from .io import ARRAY_SUFFIXES
from .references import open_reference


def open_source(spec, *, split: str | None = None, role: str = "samples", seed: int = 0, index: bool = True,
                cache_dir=None, dist=None) -> ImageSource:
    """A folder, a ``.npy``/``.npz`` array, a named reference, or an ``ImageSource``; then the split.

    Folder files are hashed through a persistent index under ``cache_dir`` (default ``$CXRBENCH_CACHE``),
    so a second open reads only new or changed files; ``index=False`` re-reads every byte. ``dist`` (a
    ``DistContext`` under torchrun) shares the hashing out between the ranks."""
    if isinstance(spec, ImageSource):
        return select_split(spec, split, seed=seed)
    s = str(spec)
    p = Path(s)
    if p.is_dir():
        src = open_folder(p, role=role, index=index, cache_dir=cache_dir, split=split, dist=dist)
    elif p.is_file() and p.suffix.lower() in ARRAY_SUFFIXES:
        src = open_array(p)
    elif p.is_file():
        raise DataError(f"{p}: --{role} must be a folder of images or a .npy/.npz array of images")
    else:
        if s in NAMED_REFERENCES:
            return open_reference(s, split=split, seed=seed, index=index, cache_dir=cache_dir, dist=dist)
        raise DataError(
            f"{s}: no such folder or file for --{role}"
            + (f"; named references: {', '.join(sorted(NAMED_REFERENCES.names()))}" if role == "reference" else "")
        )
    return select_split(src, split, seed=seed)
