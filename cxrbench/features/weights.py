"""Resolving pretrained weights files, in the order DESIGN section 4 fixes.

explicit ``--weights DIR`` (or a file) > ``$CXRBENCH_WEIGHTS`` > the owning library's cache >
``$CXRBENCH_WEIGHTS_MIRROR`` (a URL base serving the published files by their published names: for sites
without internet access) > a download through the owning library when online > a clear error naming the
file and the folder to put it in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

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
    """Download ``<base>/<name>`` into ``dest_dir/name``: to a temporary file beside it, hash-checked against
    ``sha256`` (full or prefix), then renamed, so a failed or wrong download never leaves a file behind."""
    from tqdm.auto import tqdm

    url = base.rstrip("/") + "/" + urllib.parse.quote(name)
    fix = f"put the published {name} at {base.rstrip('/')}/ or unset {MIRROR_ENV}"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".part")
    except OSError as e:
        raise WeightsError(f"{dest_dir}: cannot write the mirrored {name} there ({e.strerror or e})") from None
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"{name} from mirror", file=sys.stderr,
                      disable=not progress, leave=False) as bar:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if sha256 and not digest.startswith(sha256.lower()):
            raise WeightsError(f"{url}: sha256 {digest[:16]}... is not the published {name} (expected sha256 "
                               f"{sha256[:16]}...); nothing was saved - {fix}")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared weights folder is read by others
        os.replace(tmp, dest_dir / name)
    except urllib.error.HTTPError as e:
        raise WeightsError(f"{url}: HTTP {e.code} {e.reason} from the weights mirror; {fix}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"{url}: weights mirror unreachable ({reason}); {fix}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest_dir / name


def weights_sha256(path: Path) -> str:
    return sha256_file(path)


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"
