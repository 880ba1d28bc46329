"""Leaderboard entries (schema ``cxrbench.entry/1``): build, validate and load them.

An entry is one JSON file under ``leaderboard/entries/``, written by ``cxrbench submit`` (never by hand)::

    schema       "cxrbench.entry/1"
    name, slug   the model card's name and the file-name-safe form of it (entries/<slug>.json)
    card         the validated model card (see cxrbench.publish.card)
    protocol     {name, version}: copied from the result
    comparable   false when any extractor ran with weights other than its published file (random, self-made,
                 unknown sha256) or below fp32 precision (copied from the result)
    samples      {n, sha256, files: [{path, sha256}, ...], side_files: [...], location?}: the sample set by
                 content; ``sha256`` is the sha256 over the sorted per-file sha256s (as in the result);
                 side_files are labels.csv / manifest.csv, which feed the label metrics; ``location`` is where
                 the samples are, relative to the entry's folder (or a protocol's shipped set)
    weights      {extractor: weights id}: the sha256 of each extractor's weights file (or random:<seed>)
    result       the full ``cxrbench.result/1`` the numbers come from
    augmentation optional: downstream augmentation gain (``aug_*`` metrics) of a conditional model, see
                 ``cxrbench.publish.augment_block``
    learning_curve optional: a metric at training checkpoints, see ``cxrbench.publish.learning_curve``
    reconstruction optional: rrs_moco of the model's reconstructions of held-out real images, see
                 ``cxrbench.publish.reconstruction_block``

Entries are untrusted input (anyone may open a pull request with one): everything that reads a path, a
number or a name from an entry goes through ``validate_entry`` first, and sample paths through
``safe_relpath``. Checks on where an entry may point (``samples.location``) belong here too.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from .. import results
from ..data.imageset import set_sha256
from ..errors import DataError, UsageError
from . import augment_block, learning_curve, reconstruction_block
from .card import ModelCard, card_from_dict

SCHEMA = "cxrbench.entry/1"
ENTRY_KEYS = ("schema", "name", "slug", "card", "protocol", "comparable", "samples", "weights", "result")
MAX_ENTRY_BYTES = 256 * 2**20  # an entry is JSON text; anything bigger is not one
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")  # metric / extractor / protocol names
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


def make_entry(
    result: dict,
    card: ModelCard,
    files: list[tuple[str, str]],
    weights: dict[str, str],
    *,
    side_files: dict[str, str] | None = None,
    location: str | None = None,
    augmentation: dict | None = None,
    curve: dict | None = None,
) -> dict[str, Any]:
    """Bundle a computed result with its card and the provenance ``verify`` needs. ``location``: where the
    samples are, relative to the entry's folder (or a protocol's shipped set), so that ``verify`` needs no
    other argument; ``augmentation``: the downstream-augmentation block (``cxrbench.publish.augment_block``);
    ``curve``: the ``learning_curve`` block (``cxrbench.publish.learning_curve``)."""
    results.validate(result)
    entry = {
        "schema": SCHEMA,
        "name": card.name,
        "slug": card.slug,
        "card": card.to_dict(),
        "protocol": {"name": result["protocol"]["name"], "version": result["protocol"]["version"]},
        "comparable": bool(result["comparable"]),
        "samples": {
            "n": len(files),
            "sha256": result["samples"]["sha256"],
            "files": [{"path": p, "sha256": h} for p, h in sorted(files)],
            "side_files": [{"path": p, "sha256": h} for p, h in sorted((side_files or {}).items())],
            **({"location": location} if location else {}),
        },
        "weights": dict(sorted(weights.items())),
        "result": dict(result),
    }
    if augmentation is not None:
        entry["augmentation"] = augmentation
    if curve is not None:
        entry["learning_curve"] = curve
    validate_entry(entry)
    return entry


def safe_relpath(p: Any, source: str) -> str:
    """A sample path from an entry, refused unless it stays inside its folder (no absolute, no ``..``)."""
    if not isinstance(p, str) or not p or "\\" in p or "\x00" in p:
        raise DataError(f"{source}: sample path {p!r} is not a relative POSIX path")
    pp = PurePosixPath(p)
    if pp.is_absolute() or any(part in ("..", ".", "") for part in p.split("/")):
        raise DataError(f"{source}: sample path {p!r} escapes the samples folder; entries hold relative paths only")
    return p


def samples_root(entries_dir: str | os.PathLike) -> Path:
    """The tree an entry's ``samples.location`` may lead into: the repository that holds the entries folder
    (the nearest folder above it with ``.git``), else the folder above the entries folder (``leaderboard/``:
    ``entries/`` beside ``samples/``)."""
    d = Path(entries_dir).resolve()
    for p in (d, *d.parents):
        if (p / ".git").exists():
            return p
    return d.parent


def samples_folder(e: dict, entries_dir: str | os.PathLike, source: str, hint: str = "") -> Path | None:
    """The folder ``e``'s ``samples.location`` names, relative to its entries folder; None when it records
    none or names a protocol's shipped set (``cxr64:heldout``). An entry is untrusted: a location that resolves
    outside ``samples_root`` (``../../..``, or a link out) is refused, so that verify and the leaderboard never
    read, hash or publish thumbnails of an arbitrary folder on the machine."""
    return located_folder(e["samples"].get("location"), entries_dir, source, hint)


def located_folder(loc: str | None, entries_dir: str | os.PathLike, source: str, hint: str = "",
                   what: str = "samples.location") -> Path | None:
    """The folder an entry's recorded ``loc`` (``samples.location``, ``augmentation.samples.location``) names,
    refused outside ``samples_root`` (see :func:`samples_folder`)."""
    if not loc or ":" in loc:
        return None
    folder = Path(entries_dir) / loc
    root = samples_root(entries_dir)
    if not folder.resolve().is_relative_to(root):
        raise DataError(f"{source}: {what} {loc!r} leads to {folder.resolve()}, outside {root} (the tree "
                        f"holding the entry); an entry's samples must be inside it{hint}")
    return folder


def validate_entry(d: Any, source: str = "entry") -> None:
    """Schema-check an (untrusted) entry; every message names ``source`` and what is wrong."""
    results.check_header(d, SCHEMA, ENTRY_KEYS, source, "; re-create it with `cxrbench submit`")
    card = card_from_dict(d["card"], f"{source}: card")
    if d["name"] != card.name or d["slug"] != card.slug or not _SLUG.match(str(d["slug"])):
        raise DataError(f"{source}: name/slug {d['name']!r}/{d['slug']!r} do not match the card ({card.name!r})")
    results.validate(d["result"], f"{source}: result")
    _check_protocol(d, source)
    if not isinstance(d["comparable"], bool) or d["comparable"] != d["result"]["comparable"]:
        raise DataError(f"{source}: 'comparable' must be true/false and equal the result's")
    _check_samples(d["samples"], d["result"], source)
    w = d["weights"]
    if not isinstance(w, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in w.items()):
        raise DataError(f"{source}: 'weights' must map extractor names to weights ids")
    _check_metrics(d["result"]["metrics"], source)
    if "augmentation" in d:
        augment_block.validate(d["augmentation"], source)
        if "samples" in d["augmentation"]:
            check_listing(d["augmentation"]["samples"], source, "augmentation.samples")
    if "learning_curve" in d:
        learning_curve.validate(d["learning_curve"], d["result"]["metrics"], source)
    if reconstruction_block.KEY in d:
        reconstruction_block.validate(d[reconstruction_block.KEY], source)


def _check_protocol(d: dict, source: str) -> None:
    proto = d["protocol"]
    if (
        not isinstance(proto, dict)
        or set(proto) != {"name", "version"}
        or not isinstance(proto["name"], str)
        or not SAFE_KEY.match(proto["name"])
        or not isinstance(proto["version"], (str, int))
        or isinstance(proto["version"], bool)
        or not SAFE_KEY.match(str(proto["version"]))
    ):
        raise DataError(f"{source}: 'protocol' must be {{name, version}} with plain names, got {proto!r}")
    rp = d["result"].get("protocol")
    if not isinstance(rp, dict) or rp.get("name") != proto["name"] or rp.get("version") != proto["version"]:
        raise DataError(f"{source}: protocol {proto!r} differs from the result's {rp!r}")


def _check_samples(s: Any, res: dict, source: str) -> None:
    check_listing(s, source)
    rs = res.get("samples")
    if not isinstance(rs, dict) or rs.get("sha256") != s["sha256"]:
        raise DataError(f"{source}: samples.sha256 differs from the result's")


def check_listing(s: Any, source: str, what: str = "samples") -> None:
    """A sample set by content, ``{n, sha256, files, side_files, location?}`` (an entry's ``samples``, an
    augmentation block's ``samples``): safe relative paths, well-formed hashes, ``n`` and ``sha256`` its own."""
    if not isinstance(s, dict) or not isinstance(s.get("files"), list) or not isinstance(s.get("side_files"), list):
        raise DataError(f"{source}: '{what}' must hold 'files' and 'side_files' lists of {{path, sha256}}")
    for listing in ("files", "side_files"):
        seen = set()
        for f in s[listing]:
            if not isinstance(f, dict) or set(f) != {"path", "sha256"}:
                raise DataError(f"{source}: every {what}.{listing} item must be {{path, sha256}}, got {f!r}")
            safe_relpath(f["path"], source)
            if not isinstance(f["sha256"], str) or not _HEX64.match(f["sha256"]):
                raise DataError(f"{source}: {f['path']!r} has a malformed sha256 {f['sha256']!r}")
            if f["path"] in seen:
                raise DataError(f"{source}: sample path {f['path']!r} is listed twice")
            seen.add(f["path"])
    _check_location(s.get("location"), source, what)
    if s.get("n") != len(s["files"]):
        raise DataError(f"{source}: {what}.n = {s.get('n')!r} but {len(s['files'])} files are listed")
    if s.get("sha256") != set_sha256([f["sha256"] for f in s["files"]]):
        raise DataError(f"{source}: {what}.sha256 does not match its file list (edited by hand?)")


def _check_location(loc: Any, source: str, what: str = "samples") -> None:
    """``samples.location``: where ``verify`` and the thumbnails read the samples from."""
    if loc is not None and (not isinstance(loc, str) or not loc or "\x00" in loc or "\\" in loc
                            or PurePosixPath(loc).is_absolute()):
        raise DataError(f"{source}: {what}.location must be a relative POSIX path, got {loc!r}")


def _check_metrics(metrics: dict, source: str) -> None:
    for key, m in metrics.items():
        if not SAFE_KEY.match(key):
            raise DataError(f"{source}: metric key {key!r} is not a plain name")
        ci = m["ci"]
        if ci is not None and not (
            isinstance(ci, list)
            and len(ci) == 2
            and all(c is None or (is_number(c) and math.isfinite(c)) for c in ci)
        ):
            raise DataError(f"{source}: metric {key!r}: ci must be [lo, hi] or null, got {ci!r}")
        rvr = m["real_vs_real"]
        if rvr is not None and not (is_number(rvr) and math.isfinite(rvr)):
            raise DataError(f"{source}: metric {key!r}: real_vs_real must be a number or null")


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_entry(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            raise DataError(f"{path}: larger than {MAX_ENTRY_BYTES >> 20} MiB; not a leaderboard entry")
        d = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such entry file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder; pass an entry file (leaderboard/entries/NAME.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    validate_entry(d, str(path))
    return d


def load_entries(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``*.json`` directly in ``folder`` (no recursion, no symlinks out), sorted by slug."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such entries folder; create entries with `cxrbench submit --entries {folder}`")
    root = folder.resolve()
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.resolve().parent != root:
            raise DataError(f"{p}: links outside {folder}; entries must be plain files in the folder")
        e = load_entry(p)
        # One file per model, named by `cxrbench submit` from the card: a renamed or copied entry is refused.
        if p.name != f"{e['slug']}.json":
            raise DataError(f"{p}: holds the entry of {e['name']!r}, which `cxrbench submit` names {e['slug']}.json")
        e["_file"] = p.name
        out.append(e)
    return sorted(out, key=lambda e: e["slug"])
