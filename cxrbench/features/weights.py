"""Resolving pretrained weights files, in the order DESIGN section 4 fixes.

explicit ``--weights DIR`` (or a file) > ``$CXRBENCH_WEIGHTS`` > the owning library's cache > a download
through the owning library when online > a clear error naming the file and the folder to put it in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..errors import WeightsError
from ..data.io import sha256_file


def resolve_weights_file(
    what: str,
    filenames: Sequence[str],
    *,
    weights: str | None,
    library_dirs: Sequence[Path] = (),
    download: Callable[[], Path] | None = None,
    url: str = "",
) -> Path:
    """The first existing file among the candidates; ``download()`` is tried last."""
    searched: list[Path] = []
    if weights not in (None, "", "auto"):
        p = Path(weights).expanduser()
        if p.is_file():
            return p
        if not p.is_dir():
            raise WeightsError(f"--weights {weights}: no such folder or file (give a folder holding {filenames[0]})")
        searched.append(p)
    env = os.environ.get("CXRBENCH_WEIGHTS")
    if env:
        searched.append(Path(env).expanduser())
    searched.extend(Path(d).expanduser() for d in library_dirs)
    for d in searched:
        for fn in filenames:
            if (d / fn).is_file():
                return d / fn
    if download is not None and weights in (None, "", "auto"):
        try:
            # the owning libraries print download chatter; stdout carries results, so send it to stderr
            with contextlib.redirect_stdout(sys.stderr):
                return Path(download())
        except Exception as e:  # offline, proxy, disk full: all end in the same advice
            reason = f"{e.__class__.__name__}: {e}".splitlines()[0][:200]
        else:  # pragma: no cover
            reason = ""
    else:
        reason = "download not attempted"
    where = searched[0] if searched else Path("~/.cache/cxrbench/weights").expanduser()
    raise WeightsError(
        f"{what} weights not found ({reason}). Put {filenames[0]} in {where} "
        f"(or set CXRBENCH_WEIGHTS to its folder){' - it is published at ' + url if url else ''}; "
        "or run with --weights random for an offline smoke test (numbers not comparable)"
    )


def weights_sha256(path: Path) -> str:
    return sha256_file(path)


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"
