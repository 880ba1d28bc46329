"""The reconstruction block of a leaderboard entry (``entry["reconstruction"]``, optional).

A model that reconstructs (vae, gmvae, fs-gmvae, diffusevae: ``cxrbench sample RUN --reconstruct``) is scored
on real images it never saw: the ``cxr128`` protocol's held-out split (``cxr128-heldout`` of
``nih_extra_256px``, patients in neither the generators' training split nor the reference). The score is the
reconstructed-representation score of Selvadeepa et al., "Synthetic Chest X-ray Image Generator" (Mphasis
white paper, 2023), ``rrs_moco`` in paired mode: each reconstruction against the image its manifest.csv
``source`` names, ``1 - cos`` in the MoCo embedding; its real-vs-real level is each held-out image against its
nearest held-out image of another patient.

The MoCo-CXR model has no published weights, and none ship with cxrbench: the ``moco`` extractor offline is
either a folder written by ``cxrbench train moco`` or seeded random weights. The block uses the seeded random
ones (``random:<seed>``, BatchNorm calibrated on synthetic radiographs), so that anyone can recompute it from
the repository alone, and says so: ``comparable`` is false and ``note`` explains that the scale is not the
white paper's (0.03-0.045 with a trained MoCo model). ``submit --reconstructions DIR`` writes it;
``cxrbench verify`` re-hashes the reconstructions and recomputes the score when the held-out images are found
(``$CXRBENCH_SHARED_DATA`` or ``../shared/data``), else says so in one line::

    protocol     {name: "rrs", version}: this block's layout and setting
    metric       "rrs_moco"
    real         {folder, split, n, sha256}: the held-out real images (sha256 over their sorted file sha256s)
    samples      {n, sha256, files: [{path, sha256}], side_files: [manifest.csv], location}: the reconstructions,
                 ``location`` relative to the entry's folder
    config       {extractor, weights, seed, n_bootstrap}: what decides the numbers
    weights      {moco: weights id}
    comparable   false unless the MoCo weights are a published, pinned file (none exists)
    metrics      {rrs_moco: metric dict as in a result (value, ci, real_vs_real, n_gen, n_ref, extra)}
    note         one line: which MoCo weights, and what the number can be compared with
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import OWN_REFERENCE, config_default
from ..data.imageset import open_folder, set_sha256
from ..data.io import sha256_file
from ..engine.evaluate import evaluate
from ..errors import DataError, UsageError
from ..protocols.cxr128_splits import select_cxr128_split
from .compare import file_differences, metric_differences

KEY = "reconstruction"
PROTOCOL = {"name": "rrs", "version": "1"}
METRIC = "rrs_moco"
FOLDER = "nih_extra_256px"
SPLIT = "cxr128-heldout"
#: the setting that decides the numbers; weights "random": no MoCo-CXR weights can be had offline
SETTING = {"extractor": "moco", "weights": "random"}
LOCAL_FIELDS = ("device", "batch_size", "num_workers", "cache_dir", "use_cache", "progress")
BLOCK_KEYS = ("protocol", "metric", "real", "samples", "config", "weights", "comparable", "metrics", "note")
RANDOM_NOTE = ("moco weights: seeded random ({wid}); MoCo-CXR has no published weights and none ship with "
               "cxrbench, so this rrs_moco is not on the white paper's scale (0.03-0.045) and is not comparable; "
               "it orders reconstructions of one set of held-out images only")


def default_real() -> Path:
    """``nih_extra_256px`` under ``$CXRBENCH_SHARED_DATA``, else under ``../shared/data`` (the project layout)."""
    return Path(os.environ.get("CXRBENCH_SHARED_DATA", Path("..") / "shared" / "data")) / FOLDER


def heldout_images(root: str | os.PathLike):
    """The cxr128 protocol's held-out real images in ``root`` (an ImageSource; ids relative to ``root``)."""
    root = Path(root)
    if not (root / "labels.csv").is_file():
        raise UsageError(f"{root}: no labels.csv; the held-out real images are the {SPLIT} split of {FOLDER} "
                         "(set CXRBENCH_SHARED_DATA to the folder holding it)")
    src = select_cxr128_split(open_folder(root, role="reference", index=False), SPLIT)
    if len(src) == 0:
        raise DataError(f"{root}: holds none of the {SPLIT} images; point CXRBENCH_SHARED_DATA at the data folder "
                        f"that holds {FOLDER}")
    return src


def _reconstructions(folder: str | os.PathLike):
    """(source, files, side files) of a reconstructions folder; refused unless its manifest names sources."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root}: no such reconstructions folder; make it with `cxrbench sample RUN --reconstruct "
                         f"../shared/data/{FOLDER} --reconstruct-split {SPLIT} --out {root}`")
    src = open_folder(root, role="samples", index=False)  # every byte re-read: a hash index is not evidence
    if src.manifest is None or "source" not in src.manifest.columns:
        raise UsageError(f"{root}: manifest.csv has no `source` column; these are not reconstructions (write them "
                         "with `cxrbench sample RUN --reconstruct DIR`)")
    side = {"manifest.csv": sha256_file(root / "manifest.csv")}
    return src, dict(zip(src.ids, src.hashes)), side


def preflight(reconstructions: str | os.PathLike) -> None:
    """Refuse, before any evaluation, a reconstructions folder without sources or missing held-out images."""
    import pandas as pd

    root = Path(reconstructions)
    manifest = root / "manifest.csv"
    if not root.is_dir():
        _reconstructions(root)  # the message that says how to make the folder
    try:
        columns = pd.read_csv(manifest, nrows=0).columns if manifest.is_file() else ()
    except Exception as e:
        raise DataError(f"{manifest}: cannot be read as CSV ({e.__class__.__name__})") from None
    if "source" not in columns:
        raise UsageError(f"{root}: manifest.csv has no `source` column; these are not reconstructions (write them "
                         "with `cxrbench sample RUN --reconstruct DIR`)")
    real = default_real()
    if not (real / "labels.csv").is_file():
        raise UsageError(f"{real}: the held-out real images are not there; set CXRBENCH_SHARED_DATA to the data "
                         f"folder that holds {FOLDER}")


def _score(samples, real, *, seed: int, n_bootstrap: int, weights: str, **local) -> dict:
    kw = {k: v for k, v in local.items() if k in LOCAL_FIELDS and v is not None}
    result = evaluate(samples, real, extractors=(SETTING["extractor"],), metrics=(METRIC,), weights=weights,
                      seed=seed, n_bootstrap=n_bootstrap, protocol=OWN_REFERENCE, **kw)
    m = dict(result["metrics"][METRIC])
    wid = str(result["extractors"][SETTING["extractor"]]["weights"])
    return {"metric": m, "weights": wid, "comparable": bool(result["comparable"]), "real_sha256": result["reference"]["sha256"]}


def compute(reconstructions: str | os.PathLike, entry_dir: str | os.PathLike, *, real: str | os.PathLike | None = None,
            seed: int = 0, n_bootstrap: int = config_default("n_bootstrap"), **local) -> dict:
    """The block for ``reconstructions`` (a folder written by ``sample --reconstruct`` from the held-out images),
    its location recorded relative to ``entry_dir``."""
    samples, files, side = _reconstructions(reconstructions)
    real_root = Path(real) if real else default_real()
    held = heldout_images(real_root)
    s = _score(samples, held, seed=seed, n_bootstrap=n_bootstrap, weights=SETTING["weights"], **local)
    location = Path(os.path.relpath(Path(reconstructions).resolve(), Path(entry_dir).resolve())).as_posix()
    return {
        "protocol": dict(PROTOCOL),
        "metric": METRIC,
        "real": {"folder": FOLDER, "split": SPLIT, "n": len(held), "sha256": s["real_sha256"]},
        "samples": {"n": len(files), "sha256": set_sha256(files.values()),
                    "files": [{"path": p, "sha256": h} for p, h in sorted(files.items())],
                    "side_files": [{"path": p, "sha256": h} for p, h in sorted(side.items())],
                    "location": location},
        "config": {**SETTING, "seed": seed, "n_bootstrap": n_bootstrap},
        "weights": {SETTING["extractor"]: s["weights"]},
        "comparable": s["comparable"],
        "metrics": {METRIC: s["metric"]},
        "note": RANDOM_NOTE.format(wid=s["weights"]) if s["weights"].startswith("random") else
        f"moco weights {s['weights'][:16]}... (not a published file: not comparable)",
    }


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _relative(p: Any) -> bool:
    """A relative POSIX path (no absolute path, backslash or NUL)."""
    return isinstance(p, str) and bool(p) and "\\" not in p and "\x00" not in p and not PurePosixPath(p).is_absolute()


def _inside(p: str) -> bool:
    """A relative path that stays inside its folder (no ``..``)."""
    return _relative(p) and not any(part in ("..", ".", "") for part in p.split("/"))


def folder_of(block: dict, entry_path: str | os.PathLike) -> Path:
    """The reconstructions folder, relative to the entry's folder; refused when it leads outside the tree that
    holds the entry (the repository: the nearest folder above with ``.git``, else the entries' parent), so
    that verify never hashes an arbitrary folder an untrusted entry names."""
    entries_dir = Path(entry_path).resolve().parent
    root = next((p for p in (entries_dir, *entries_dir.parents) if (p / ".git").exists()), entries_dir.parent)
    folder = entries_dir / block["samples"]["location"]
    if not folder.resolve().is_relative_to(root):
        raise DataError(f"{entry_path}: {KEY}.samples.location leads to {folder.resolve()}, outside {root}")
    return folder


def validate(block: Any, source: str) -> None:
    """Schema-check an entry's (untrusted) reconstruction block."""
    where = f"{source}: {KEY}"
    if not isinstance(block, dict) or set(block) != set(BLOCK_KEYS):
        got = sorted(block) if isinstance(block, dict) else type(block).__name__
        raise DataError(f"{where} must hold exactly {list(BLOCK_KEYS)}, got {got}; re-create it with "
                        "`cxrbench submit --reconstructions DIR`")
    if block["metric"] != METRIC or not isinstance(block["metrics"], dict) or set(block["metrics"]) != {METRIC}:
        raise DataError(f"{where}: metrics must be exactly {{{METRIC!r}}}")
    m = block["metrics"][METRIC]
    ci = m.get("ci") if isinstance(m, dict) else None
    if not isinstance(m, dict) or not _num(m.get("value")) or not (
            ci is None or (isinstance(ci, list) and len(ci) == 2 and all(_num(c) for c in ci))) or not (
            m.get("real_vs_real") is None or _num(m.get("real_vs_real"))):
        raise DataError(f"{where}: {METRIC} must have a finite value, ci [lo, hi] or null and real_vs_real")
    cfg = block["config"]
    if not isinstance(cfg, dict) or not isinstance(cfg.get("seed"), int) or not isinstance(cfg.get("n_bootstrap"), int) \
            or cfg.get("weights") not in ("random", "auto") or cfg.get("extractor") != SETTING["extractor"]:
        raise DataError(f"{where}: config must be {{extractor: moco, weights: random|auto, seed, n_bootstrap}}")
    if not isinstance(block["comparable"], bool) or not isinstance(block["weights"], dict) or \
            not all(isinstance(v, str) for v in block["weights"].values()):
        raise DataError(f"{where}: comparable must be true/false and weights map extractor names to ids")
    s = block["samples"]
    if not isinstance(s, dict) or not isinstance(s.get("files"), list) or not isinstance(s.get("side_files"), list) \
            or not _relative(s.get("location")):
        raise DataError(f"{where}: samples must hold files, side_files and a relative POSIX location")
    for f in s["files"] + s["side_files"]:
        if not isinstance(f, dict) or set(f) != {"path", "sha256"} or not isinstance(f["sha256"], str) \
                or not _inside(f["path"]):
            raise DataError(f"{where}: every samples file must be {{path, sha256}} inside its folder, got {f!r}")
    if not isinstance(block["real"], dict) or not isinstance(block["real"].get("sha256"), str):
        raise DataError(f"{where}: real must be {{folder, split, n, sha256}}")


def recheck(entry: dict, entry_path: str | os.PathLike, *, rtol: float, atol: float,
            **local) -> tuple[list[tuple[str, str, str, str]], str | None]:
    """(differences, note): re-hash the entry's reconstructions and recompute ``rrs_moco``; without the held-out
    real images, only the hashes are checked and the note says so."""
    block = entry.get(KEY)
    if block is None:
        return [], None
    folder = folder_of(block, entry_path)
    if not folder.is_dir():
        return [(f"{KEY} samples", block["samples"]["location"], "missing", "folder")], None
    samples, files, side = _reconstructions(folder)
    rows = file_differences({f["path"]: f["sha256"] for f in block["samples"]["files"]}, files)
    rows += file_differences({f["path"]: f["sha256"] for f in block["samples"]["side_files"]}, side)
    rows = [(f"{KEY}: {what}", *rest) for what, *rest in rows]
    if rows:
        return rows, None
    root = default_real()
    if not (root / "labels.csv").is_file():
        return [], (f"{KEY} block: reconstructions match by sha256; {METRIC} not recomputed: held-out real images "
                    f"{root} not found (set CXRBENCH_SHARED_DATA)")
    cfg = block["config"]
    local = {k: v for k, v in local.items() if k in LOCAL_FIELDS}  # verify's --weights is the entry's, not ours
    local.setdefault("use_cache", False)
    s = _score(samples, heldout_images(root), seed=cfg["seed"], n_bootstrap=cfg["n_bootstrap"],
               weights=cfg["weights"], **local)
    if s["real_sha256"] != block["real"]["sha256"]:
        rows.append((f"{KEY} real sha256", block["real"]["sha256"][:16], s["real_sha256"][:16], "hash"))
    for name, wid in sorted(block["weights"].items()):
        if wid != s["weights"]:
            rows.append((f"{KEY} weights {name}", wid[:16], s["weights"][:16], "hash"))
    rows += metric_differences(block["metrics"], {METRIC: s["metric"]}, rtol, atol, prefix=f"{KEY}.")
    return rows, None
