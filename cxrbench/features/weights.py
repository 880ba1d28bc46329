"""Resolving pretrained weights files, in the order DESIGN section 4 fixes.

explicit ``--weights DIR`` (or a file) > ``$CXRBENCH_WEIGHTS`` > the owning library's cache >
``$CXRBENCH_WEIGHTS_MIRROR`` (a URL base serving the published files by their published names: for sites
without internet access) > a download through the owning library when online > a clear error naming the
file and the folder to put it in.
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data.io import sha256_file
from ..errors import WeightsError

MIRROR_ENV = "CXRBENCH_WEIGHTS_MIRROR"
#: the advice that works offline: the default protocol's network ships with cxrbench (no download, comparable
#: numbers); random weights only show that the pipeline runs
OFFLINE_HINT = ("or, offline, use the network that ships with cxrbench: --extractors cxr128 (the cxr128 protocol's "
                "network; extractors=(\"cxr128\",) in Python); --weights random only for a smoke test (numbers not "
                "comparable)")


def resolve_weights_file(
    what: str,
    filenames: Sequence[str],
    *,
    weights: str | None,
    library_dirs: Sequence[Path] = (),
    download: Callable[[], Path] | None = None,
    url: str = "",
    sha256: str = "",
) -> Path:
    """The first existing file among the candidates; then the mirror, then ``download()``.

    ``sha256``: the published file's sha256 (or a hex prefix of it), which a mirrored copy must match.
    """
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
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        # into the folder the user named (or the library cache), so the next run finds it there
        dest = searched[0] if searched else Path("~/.cache/cxrbench/weights").expanduser()
        return fetch_from_mirror(mirror, Path(url).name if url else filenames[0], dest, sha256=sha256)
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
        f"(or set CXRBENCH_WEIGHTS to its folder, or {MIRROR_ENV} to a URL serving it)"
        f"{' - it is published at ' + url if url else ''}; "
        + OFFLINE_HINT
    )


def fetch_from_mirror(base: str, name: str, dest_dir: Path, *, sha256: str = "", progress: bool = True) -> Path:
    """Download ``<base>/<name>`` into ``dest_dir/name`` through ``torch.hub.download_url_to_file``, which writes
    a temporary file beside it, checks the sha256 against ``sha256`` (the full published digest, or a prefix)
    and only then moves it into place, so a failed or wrong download never leaves a file behind."""
    url = base.rstrip("/") + "/" + urllib.parse.quote(name)
    fix = f"put the published {name} at {base.rstrip('/')}/ or unset {MIRROR_ENV}"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{dest_dir}: cannot write the mirrored {name} there ({e.strerror or e})") from None
    if progress:
        print(f"{name} from mirror {url}", file=sys.stderr)
    try:
        torch.hub.download_url_to_file(url, str(dest_dir / name), hash_prefix=sha256.lower() or None,
                                       progress=progress)
    except urllib.error.HTTPError as e:
        raise WeightsError(f"{url}: HTTP {e.code} {e.reason} from the weights mirror; {fix}") from None
    except RuntimeError as e:  # torch.hub's "invalid hash value (expected ..., got ...)"
        got = str(e).rpartition('got "')[2].rstrip('")')
        raise WeightsError(f"{url}: sha256 {got[:16]}... is not the published {name} (expected sha256 "
                           f"{sha256[:16]}...); nothing was saved - {fix}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"{url}: weights mirror unreachable ({reason}); {fix}") from None
    return dest_dir / name


def weights_sha256(path: Path) -> str:
    return sha256_file(path)


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"
