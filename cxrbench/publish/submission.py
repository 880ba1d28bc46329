"""Submitting, verifying and regression-checking samples against leaderboard entries.

``submit`` evaluates a samples folder itself (self-reported numbers are never accepted) and writes an entry
(``cxrbench.entry/1``, see ``cxrbench.publish.entry``). ``verify`` re-hashes the samples and recomputes every
number with the entry's resolved config. ``check`` evaluates new samples with the entry's config and
reports the metrics that got worse than the entry by more than their noise.

An entry's config is untrusted input: it is type-checked field by field against ``EvalConfig``, and the
fields that name things on the submitter's machine (cache folder, workers, device, weights folder) are
replaced by the local ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import results
from ..config import OWN_REFERENCE, EvalConfig
from ..data.imageset import open_folder
from ..data.io import sha256_file
from ..engine.evaluate import evaluate
from ..engine.protocol import protocol_samples
from ..errors import DataError, UsageError
from ..fileio import write_output
from ..registry import PROTOCOLS
from ..results import _json_default
from . import augment_block, learning_curve, reconstruction_block
from .card import ModelCard, card_from_dict
from .compare import (
    ATOL,
    RTOL,
    CheckRow,
    Tolerance,
    file_differences,
    metric_differences,
    regressions,
    verify_differences,
)
from .entry import MAX_ENTRY_BYTES, load_entry, located_folder, make_entry, samples_folder
from .entry import SCHEMA as ENTRY_SCHEMA

# Fields of a stored config that describe the submitter's machine, not the evaluation: never reused.
LOCAL_FIELDS = ("device", "num_workers", "cache_dir", "use_cache", "progress")


@dataclass
class Snapshot:
    """A samples folder by content: the source the harness evaluates, and its per-file hashes."""

    source: Any  # cxrbench.data.sources.ImageSource
    files: dict[str, str]  # relative path -> sha256 (images the harness reads)
    side_files: dict[str, str]  # labels.csv / manifest.csv -> sha256 (they change label metrics)


def sample_count(protocol: str) -> int | None:
    """How many samples ``protocol`` evaluates (its first N in canonical order); None: every one."""
    return None if protocol == OWN_REFERENCE else PROTOCOLS.get(protocol).sample_count


def snapshot(samples: str | os.PathLike, limit: int | None = None) -> Snapshot:
    """Hash a samples folder once; the harness then evaluates this very ``ImageSource`` (no second read).

    ``limit``: a protocol's sample count. A larger folder's submission is its first ``limit`` files in
    canonical (sha256) order, the ones the protocol evaluates: the entry lists exactly those, so that its
    hash is the result's and ``verify`` of the same folder picks the same files.

    A protocol's shipped real-image set (``cxr64:heldout``, ``cxr64:train``: the leaderboard's reference rows)
    is its features, pinned by sha256, with the hashes of the images they were computed from."""
    pre = protocol_samples(str(samples))
    if pre is not None:
        return Snapshot(pre, dict(zip(pre.ids, pre.hashes)), {})
    root = Path(samples)
    if not root.is_dir():
        raise UsageError(f"{root}: no such samples folder; a submission is a folder of generated images")
    src = open_folder(root, role="samples", index=False)  # every byte re-read: a hash index is not evidence
    if limit and len(src) > limit:
        n = len(src)
        src = src.subset(range(limit))
        src.notes.append(f"the submission is the first {limit} of the folder's {n} images in canonical (sha256) "
                         f"order, the protocol's sample count; the other {n - limit} are not part of it")
    side = {fn: sha256_file(root / fn) for fn in ("labels.csv", "manifest.csv") if (root / fn).is_file()}
    return Snapshot(src, dict(zip(src.ids, src.hashes)), side)


def weights_of(result: dict) -> dict[str, str]:
    """extractor -> weights id (sha256 of the weights file, or ``random:<seed>``), from a result."""
    return {name: str(spec["weights"]) for name, spec in sorted(result["extractors"].items())}


def config_from_entry(entry: dict, **local) -> Any:
    """The entry's resolved ``EvalConfig``, type-checked, with the machine-local fields from ``local``."""
    stored = entry["result"]["config"]
    if not isinstance(stored, dict):
        raise DataError(f"entry {entry['slug']}: result.config must be an object")
    defaults = EvalConfig().record()  # the stored layout: nested settings flat, metric_settings as overrides
    kw: dict[str, Any] = {}
    for name, value in stored.items():
        if name not in defaults or name in LOCAL_FIELDS:
            continue  # device_resolved and the like are records, not knobs
        default = defaults[name]
        if name in ("extractors", "metrics"):
            if value is None and name == "metrics":
                kw[name] = None
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"entry {entry['slug']}: config.{name} must be a list of names, got {value!r}")
            kw[name] = tuple(value)
        elif default is None:
            if value is not None and not isinstance(value, (str, int)):
                raise DataError(f"entry {entry['slug']}: config.{name} has an unexpected value {value!r}")
            kw[name] = value
        elif type(value) is not type(default):
            raise DataError(
                f"entry {entry['slug']}: config.{name} must be {type(default).__name__}, got {value!r}"
            )
        else:
            kw[name] = value
    if kw.get("weights") not in ("auto", "random"):
        kw["weights"] = "auto"  # a folder on the submitter's machine; the weights hashes are compared instead
    kw["samples_split"] = None  # a submission is the whole folder
    kw.update({k: v for k, v in local.items() if v is not None})
    return EvalConfig.from_record(kw)


def load_baseline(path: str | os.PathLike) -> dict:
    """What ``check --against`` compares with: a leaderboard entry (``cxrbench.entry/1``) as it is, or a result
    file (``cxrbench.result/1``, from ``cxrbench evaluate --out``) in the shape of an entry, so that a CI
    baseline needs neither a model card nor ``submit``."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            raise DataError(f"{path}: larger than {MAX_ENTRY_BYTES >> 20} MiB; not an entry or a result file")
        schema = json.loads(path.read_bytes().decode("utf-8")).get("schema")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; pass an entry (leaderboard/entries/NAME.json) or a result "
                        "file (cxrbench evaluate --out FILE)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; pass an entry or a result file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError) as e:
        raise DataError(f"{path}: not a JSON object ({type(e).__name__}); pass an entry or a result file") from None
    if schema == ENTRY_SCHEMA:
        return load_entry(path)
    if schema != results.SCHEMA:
        raise DataError(f"{path}: schema is {schema!r}; expected an entry ({ENTRY_SCHEMA!r}) or a result "
                        f"({results.SCHEMA!r})")
    result = dict(results.load(path))
    return {"slug": path.name, "result": result, "weights": weights_of(result),
            "protocol": {"name": result["protocol"]["name"], "version": result["protocol"]["version"]}}


def reference_of(entry: dict) -> str | None:
    """Where the entry's reference is: its recorded path, or None for a protocol's shipped reference."""
    ref = entry["result"]["reference"]
    if isinstance(ref, dict) and ref.get("kind") == "features":
        return None  # the protocol (config.protocol) ships it; evaluate() loads and hash-checks it
    if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
        raise DataError(f"entry {entry['slug']}: result.reference.path is missing; pass --reference")
    return ref["path"]


def _augmentation(snap, path: Path, *, config: Any, augment: bool, augment_task: str | None,
                  augment_real: str | os.PathLike | None, augment_samples: str | os.PathLike | None,
                  augment_n_per_class: int | None, notes: list[str] | None) -> dict | None:
    """The entry's augmentation block, or None (why is appended to ``notes``); computed before the evaluation,
    so that an asked-for block that cannot be made fails in seconds."""
    aug_snap = None
    if augment_samples is not None:
        if not augment:
            raise UsageError("--augment-samples and --no-augment contradict each other; drop one")
        if not Path(augment_samples).is_dir():
            raise UsageError(f"--augment-samples {augment_samples}: no such folder; give the folder of images "
                             "sampled per class for the augmentation block (with its manifest.csv)")
        aug_snap = snapshot(augment_samples)
    real, task, note = augment_block.plan(aug_snap.source if aug_snap else snap.source, task=augment_task,
                                          real=augment_real, protocol=config.protocol, enabled=augment,
                                          separate=aug_snap is not None)
    if note and notes is not None:
        notes.append(note)
    block = None
    if real is not None:
        try:
            block = augment_block.compute(
                aug_snap.source if aug_snap else snap.source, real, task, protocol=config.protocol,
                stored_config={"weights": config.weights, "seed": config.seed, "n_bootstrap": config.n_bootstrap},
                n_per_class=augment_n_per_class, **{k: getattr(config, k) for k in augment_block.LOCAL_FIELDS})
        except DataError as e:
            if augment_task is not None or aug_snap is not None:  # asked for: its failure is the submission's
                raise
            if notes is not None:  # automatic: e.g. too few samples of a class; the entry goes without it
                notes.append(f"augmentation block not computed: {e}")
    if block is not None and aug_snap is not None:
        block["samples"] = {
            "n": len(aug_snap.files), "sha256": aug_snap.source.sha256,
            "files": [{"path": p, "sha256": h} for p, h in sorted(aug_snap.files.items())],
            "side_files": [{"path": p, "sha256": h} for p, h in sorted(aug_snap.side_files.items())],
            "location": samples_location(augment_samples, path.parent),
        }
    return block


def submit(
    samples: str | os.PathLike,
    reference: str | None,
    card: ModelCard,
    out_dir: str | os.PathLike,
    *,
    config: Any,
    force: bool = False,
    augment_task: str | None = None,
    augment_real: str | os.PathLike | None = None,
    augment: bool = True,
    augment_samples: str | os.PathLike | None = None,
    augment_n_per_class: int | None = None,
    notes: list[str] | None = None,
    curve: dict | None = None,
    reconstructions: str | os.PathLike | None = None,
) -> tuple[Path, dict]:
    """Evaluate ``samples`` and write ``out_dir/<card slug>.json``; returns (path, entry).

    The augmentation block (``augment_block``) is added when ``augment_task`` or ``augment_samples`` (its own
    synthetic images, requested per class; recorded by hash and location like the entry's samples) asks for
    it, or by default for conditional samples under the cxr64 protocol when the real images are found; why it
    was not is appended to ``notes``. ``augment_n_per_class``: N real and synthetic images per class, capped by
    the real training split (default: the setting's). ``curve``: the ``learning_curve`` block of the training
    checkpoints; the entry itself is appended as its last point. ``reconstructions``: the model's
    reconstructions of the held-out real images, scored into the ``reconstruction`` block
    (``reconstruction_block``)."""
    path = Path(out_dir) / f"{card.slug}.json"
    if path.exists() and not force:
        raise UsageError(f"{path}: an entry for {card.name!r} exists; pass --force to replace it")
    if config.samples_split:
        raise UsageError("a submission is a whole samples folder; drop --samples-split")
    snap = snapshot(samples, sample_count(config.protocol))
    block = _augmentation(snap, path, config=config, augment=augment, augment_task=augment_task,
                          augment_real=augment_real, augment_samples=augment_samples,
                          augment_n_per_class=augment_n_per_class, notes=notes)
    result = evaluate(snap.source, reference, config=config)
    if curve is not None:
        curve = learning_curve.with_final_point(curve, result, card.training, len(snap.files))
    entry = make_entry(result, card, sorted(snap.files.items()), weights_of(result), side_files=snap.side_files,
                       location=samples_location(samples, path.parent), augmentation=block, curve=curve)
    if reconstructions is not None:
        entry[reconstruction_block.KEY] = reconstruction_block.compute(
            reconstructions, path.parent, seed=config.seed, n_bootstrap=config.n_bootstrap,
            **{k: getattr(config, k) for k in reconstruction_block.LOCAL_FIELDS})
        reconstruction_block.validate(entry[reconstruction_block.KEY], str(path))
    if path.exists() and not force:  # created while we evaluated
        raise UsageError(f"{path}: an entry for {card.name!r} appeared meanwhile; pass --force to replace it")

    text = json.dumps(entry, indent=2, sort_keys=True, allow_nan=False, default=_json_default) + "\n"
    write_output(path, text.encode())
    return path, entry


def _checkpoint_results(entry: dict, entry_path: str | os.PathLike, config: Any):
    """``(location, sha256, points, result)`` per learning-curve folder the entry records: the folder evaluated
    with ``config``, only the metrics its points name (``result`` None when the folder is missing)."""
    for loc, sha, points in learning_curve.recorded(entry):
        folder = located_folder(loc, Path(entry_path).parent, str(entry_path), what="learning_curve samples")
        if folder is None or not folder.is_dir():
            yield loc, sha, points, None
            continue
        keys = {p["metric"] for p in points}
        names = tuple(sorted(n for n in entry["result"].get("metric_versions", {})
                             if any(k == n or k.startswith(n + "_") for k in keys)))
        yield loc, sha, points, evaluate(str(folder), reference_of(entry),
                                         config=dataclasses.replace(config, metrics=names or None))


def _is_final(p: dict, entry: dict) -> bool:
    """The curve's last point is the entry itself (``learning_curve.with_final_point``): no samples of its own."""
    return learning_curve.SAMPLES not in p and p["cpu_minutes"] == (entry["card"].get("training") or {}).get("cpu_minutes")


def recomputed_curve(entry: dict, entry_path: str | os.PathLike, config: Any) -> dict | None:
    """The entry's learning curve with every checkpoint re-evaluated from its recorded samples under ``config``
    (the current version of the entry's protocol); the final point is left out (``submit`` appends the new
    entry's own). A checkpoint that records no samples cannot be recomputed: refused, naming it."""
    block = entry.get("learning_curve")
    if block is None:
        return None
    for p in block["checkpoints"]:
        if learning_curve.SAMPLES not in p and not _is_final(p, entry):
            raise UsageError(f"{entry_path}: its learning-curve point at {p['cpu_minutes']} CPU minutes records no "
                             "samples, so it cannot be recomputed; re-make the entry with `cxrbench reproduce`")
    fresh = {}
    for loc, sha, points, r in _checkpoint_results(entry, entry_path, config):
        if r is None:
            raise UsageError(f"{entry_path}: its learning-curve samples {loc} are missing; restore them (git checkout)")
        if r["samples"]["sha256"] != sha:
            raise UsageError(f"{entry_path}: the learning-curve samples {loc} changed since the entry was made "
                             "(sha256 differs); restore them (git checkout)")
        for p in points:
            m = r["metrics"][p["metric"]]
            fresh[id(p)] = {**p, "value": m["value"], "ci": m.get("ci"), "n_samples": int(m.get("n_gen", p["n_samples"]))}
    return {"checkpoints": [fresh[id(p)] for p in block["checkpoints"] if id(p) in fresh]}


def resubmit(entry_path: str | os.PathLike, **local) -> tuple[Path, dict]:
    """Re-make an entry from what it records: its samples, card, learning-curve checkpoints, augmentation samples
    and reconstructions, evaluated under the current version of its protocol (after a protocol's new version, the
    board is re-made without training or sampling anything again). The entry file is replaced."""
    entry = load_entry(entry_path)
    samples = recorded_samples(entry, entry_path, fix="resubmit the entry file where it was made (its recorded "
                                                        "samples beside it)")
    samples = samples if protocol_samples(samples) is not None else os.path.normpath(samples)  # as a user names it
    card = card_from_dict(entry["card"], f"{entry_path}: card")
    config = config_from_entry(entry, **local)
    curve = recomputed_curve(entry, entry_path, config)
    aug, kwargs = entry.get("augmentation"), {}
    if aug is not None:
        kwargs = {"augment_task": aug["task"], "augment_n_per_class": int(aug["config"]["n_real"]) // 2,
                  "augment_samples": _recorded_augment_samples(entry, entry_path) if aug.get("samples") else None}
    rec = entry.get(reconstruction_block.KEY)
    reconstructions = reconstruction_block.folder_of(rec, entry_path) if rec is not None else None
    return submit(samples, reference_of(entry), card, Path(entry_path).parent, config=config, force=True, curve=curve, reconstructions=reconstructions,
                  augment=aug is not None, **kwargs)


def samples_location(samples: str | os.PathLike, entry_dir: Path) -> str:
    """The samples as the entry records them: a shipped set's name, or the folder relative to the entry."""
    if protocol_samples(str(samples)) is not None:
        return str(samples)
    return Path(os.path.relpath(Path(samples).resolve(), Path(entry_dir).resolve())).as_posix()


def recorded_samples(entry: dict, entry_path: str | os.PathLike, fix: str = "pass --samples FOLDER") -> str:
    """Where ``entry_path``'s samples are by its own record (``verify ENTRY`` with no ``--samples``); ``fix``
    ends the message when they are not there."""
    loc = entry["samples"].get("location")
    if loc is None:
        raise UsageError(f"{entry_path}: the entry does not record where its samples are; {fix}")
    if protocol_samples(loc) is not None:
        return loc
    folder = samples_folder(entry, Path(entry_path).parent, str(entry_path), hint=f"; {fix}")
    if folder is None:
        raise UsageError(f"{entry_path}: its samples.location {loc!r} names no protocol's shipped sample set "
                         f"(such as cxr128:heldout); {fix}")
    if not folder.is_dir():
        raise UsageError(f"{entry_path}: its samples folder {folder} is missing; restore it (git checkout) or {fix}")
    return str(folder)


def verify(
    entry: dict,
    samples: str | os.PathLike,
    *,
    reference: str | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    augment_real: str | os.PathLike | None = None,
    augment_samples: str | os.PathLike | None = None,
    entry_path: str | os.PathLike | None = None,
    notes: list[str] | None = None,
    **local,
) -> tuple[list[tuple[str, str, str, str]], dict | None]:
    """(differences, recomputed result). Sample files are compared first (the augmentation block's own
    samples too): when any differs, the metrics are not recomputed (they cannot match, and a recomputation can
    take hours). An augmentation block is recomputed when its real images are found (``augment_real``, as
    recorded, or the default place); when they are not, ``notes`` says so and the rest is still checked. Its
    own samples are ``augment_samples``, else where the block records them relative to ``entry_path``."""
    snap = snapshot(samples, sample_count(entry["protocol"]["name"]))
    stored_side = {f["path"]: f["sha256"] for f in entry["samples"]["side_files"]}
    rows = file_differences({f["path"]: f["sha256"] for f in entry["samples"]["files"]}, snap.files)
    rows += file_differences(stored_side, snap.side_files)
    aug_snap = None
    listing = (entry.get("augmentation") or {}).get("samples")
    if listing is not None:
        aug_snap = snapshot(augment_samples or _recorded_augment_samples(entry, entry_path))
        diff = file_differences({f["path"]: f["sha256"] for f in listing["files"]}, aug_snap.files)
        diff += file_differences({f["path"]: f["sha256"] for f in listing["side_files"]}, aug_snap.side_files)
        rows += [(f"augmentation samples {what}", a, b, note) for what, a, b, note in diff]
    if rows:
        return rows, None
    local.setdefault("use_cache", False)  # recompute: a feature cache is not evidence
    config = config_from_entry(entry, **local)
    result = evaluate(snap.source, reference or reference_of(entry), config=config)
    rows = verify_differences(entry, result, snap.files, weights_of(result), rtol=rtol, atol=atol)
    aug_rows, note = augment_block.recheck(entry, aug_snap.source if aug_snap else snap.source, real=augment_real,
                                           rtol=rtol, atol=atol, **config.record())
    if note and notes is not None:
        notes.append(note)
    return rows + aug_rows, result


def verify_curve(entry: dict, entry_path: str | os.PathLike, *, rtol: float = RTOL, atol: float = ATOL,
                 **local) -> tuple[list[tuple[str, str, str, str]], int]:
    """(differences, points recomputed): each learning-curve checkpoint that records its samples is re-hashed
    and re-evaluated with the entry's config (only the metrics its points name), its value and interval
    compared as the entry's own. Points without recorded samples are not checked (the trainer's word)."""
    rows, checked = [], 0
    local.setdefault("use_cache", False)
    for loc, sha, points, result in _checkpoint_results(entry, entry_path, config_from_entry(entry, **local)):
        what = f"learning_curve {loc}"
        if result is None:
            rows.append((what, "folder", "missing", "restore it (git checkout)"))
            continue
        if result["samples"]["sha256"] != sha:
            rows.append((f"{what} sha256", sha[:16], result["samples"]["sha256"][:16], "hash"))
            continue
        for p in points:
            m = result["metrics"].get(p["metric"]) or {}
            stored = {p["metric"]: {"value": p["value"], "ci": p["ci"], "n_gen": p["n_samples"]}}
            fresh = {p["metric"]: {"value": m.get("value"), "ci": m.get("ci"), "n_gen": m.get("n_gen", p["n_samples"])}}
            rows += metric_differences(stored, fresh, rtol, atol, prefix=f"{what}: ")
            checked += 1
    # the final point is the entry itself: it must state the entry's numbers
    for p in (entry.get("learning_curve") or {}).get("checkpoints", []):
        if not _is_final(p, entry) or p["metric"] not in entry["result"]["metrics"]:
            continue
        m = entry["result"]["metrics"][p["metric"]]
        rows += metric_differences({p["metric"]: {"value": p["value"], "ci": p["ci"]}},
                                   {p["metric"]: {"value": m["value"], "ci": m.get("ci")}}, rtol, atol,
                                   prefix="learning_curve final point (the entry): ")
        checked += 1
    return rows, checked


def _recorded_augment_samples(entry: dict, entry_path: str | os.PathLike | None) -> Path:
    """Where the augmentation block's own samples are by its record, relative to the entry file."""
    loc = entry["augmentation"]["samples"].get("location")
    hint = "; pass --augment-samples FOLDER"
    if entry_path is None or not loc:
        raise UsageError(f"entry {entry['slug']}: its augmentation block has samples of its own{hint}")
    folder = located_folder(loc, Path(entry_path).parent, str(entry_path), hint, what="augmentation.samples.location")
    if folder is None or not folder.is_dir():
        raise UsageError(f"{entry_path}: its augmentation samples folder {folder or loc} is missing; restore it "
                         f"(git checkout){hint}")
    return folder


def select_keys(metrics: dict, requested: list[str] | None) -> list[str]:
    """Metric keys to check: exact keys, or metric names (``fid`` selects ``fid_inception``, ``fid_xrv``...)."""
    have = sorted(k for k, m in metrics.items() if m["value"] is not None)
    if not requested:
        return have
    out: list[str] = []
    for r in requested:
        hit = [r] if r in metrics else [k for k in sorted(metrics) if k.startswith(r + "_")]
        if not hit:
            raise UsageError(f"--metrics {r}: the entry has no such metric; it has {', '.join(sorted(metrics))}")
        out += [k for k in hit if k not in out]
    return out


def check(
    entry: dict,
    samples: str | os.PathLike,
    *,
    metrics: list[str] | None = None,
    tolerance: Tolerance | None = None,
    reference: str | None = None,
    **local,
) -> tuple[list[CheckRow], dict]:
    """Evaluate ``samples`` with the entry's config; one ``CheckRow`` per selected metric key."""
    tolerance = tolerance or Tolerance("auto")
    keys = select_keys(entry["result"]["metrics"], metrics)
    config = config_from_entry(entry, **local)
    if metrics:  # compute only the metrics that produce the selected keys
        names = sorted(
            n for n in entry["result"].get("metric_versions", {}) if any(k == n or k.startswith(n + "_") for k in keys)
        )
        if names:
            config = dataclasses.replace(config, metrics=tuple(names))
    result = evaluate(samples, reference or reference_of(entry), config=config)
    problems = []
    new_w = weights_of(result)
    for name in sorted(set(entry["weights"]) | set(new_w)):
        if entry["weights"].get(name) != new_w.get(name):
            problems.append(f"weights of {name}: entry {entry['weights'].get(name)}, here {new_w.get(name)}")
    if entry["result"]["reference"]["sha256"] != result["reference"]["sha256"]:
        problems.append("the reference images differ from the entry's (sha256)")
    if entry["protocol"] != result["protocol"]:
        problems.append(f"protocol {entry['protocol']} vs {result['protocol']}")
    if problems:
        raise UsageError(
            "cannot compare with the entry: " + "; ".join(problems) + " (pass the entry's --weights / --reference)"
        )
    return regressions(entry["result"]["metrics"], result["metrics"], keys, tolerance), result
