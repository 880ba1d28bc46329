"""The downstream-augmentation block of a leaderboard entry (``entry["augmentation"]``, optional).

``cxrbench submit`` adds it for a conditional model (the samples' manifest.csv has both label columns of the
task) under the cxr64 protocol when the NIH thumbnails are found, or whenever ``--augment TASK`` asks: the
augmentation protocol (``cxrbench.protocols.augmentation``) with a linear probe on cxr64 features, trained
on the cxr64 protocol's ``train`` split and tested on its ``heldout`` + ``reference`` splits. ``cxrbench
verify`` recomputes it when the real images are there and says, in one line, that it did not otherwise::

    protocol    {name: "augmentation", version}
    task        "Effusion vs No Finding"
    config      the AugmentConfig fields that decide the numbers (no device, cache or worker settings)
    real        {path, n, sha256}: the real images (sha256 over their sorted per-file sha256s)
    weights     {extractor: weights id} of the probe's extractor
    metrics     {aug_*: metric dict as in a result (value, ci, n_gen, n_ref, per_seed ...)}
    details     test/pool/synthetic class counts, splits, training sizes and seeds, label source
    notes       the protocol's notes
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError

KEY = "augmentation"
DEFAULT_TASK = "Effusion vs No Finding"
def default_real() -> Path:
    """Where submit and verify look for the real images without --augment-real: the project's data layout,
    ``../shared/data/nih1000_64px``, or under ``$CXRBENCH_SHARED_DATA`` when set (as the tests do)."""
    return Path(os.environ.get("CXRBENCH_SHARED_DATA", Path("..") / "shared" / "data")) / "nih1000_64px"


#: the leaderboard setting. The cxr64 splits hold 82 Effusion / 224 No Finding images in train and 88 / 275 in
#: heldout + reference; 200 conditional samples drawn from the training labels carry ~36 Effusion (18%), so
#: N = 50 (25 per class, real and synthetic) fits, and 160 test images use most held-out Effusion patients.
SETTING = {"extractor": "cxr64", "classifier": "linear", "n_real": 50, "n_test": 160, "seeds": 5,
           "weights": "auto"}
#: AugmentConfig fields that describe the machine, not the evaluation: never stored, never reused
LOCAL_FIELDS = ("device", "batch_size", "num_workers", "cache_dir", "use_cache", "progress")
BLOCK_KEYS = ("protocol", "task", "config", "real", "weights", "metrics", "details", "notes")


def conditional_on(source, task: str) -> bool:
    """Whether the samples carry both labels of ``task`` (a conditional model's manifest.csv)."""
    from ..data.precomputed import PrecomputedSet
    from ..protocols.augmentation.labels import parse_task

    if isinstance(source, PrecomputedSet):
        return False  # a reference row of real images: its labels are findings, not requests to a generator
    return source.labels is not None and all(lab in source.labels.columns for lab in parse_task(task))


def plan(source, *, task: str | None, real: str | None, protocol: str, enabled: bool = True) -> tuple[Path | None, str, str | None]:
    """(real folder or None, task, note): whether submit adds the block, and why not when it does not.

    Asked for (``task`` given): the real folder must exist. Otherwise automatic: cxr64 protocol, conditional
    samples, real folder found; anything missing is a note, not an error.
    """
    asked = task is not None
    task = task or DEFAULT_TASK
    if not enabled:
        return None, task, None
    root = Path(real) if real else default_real()
    if asked:
        if not (root / "labels.csv").is_file():
            raise UsageError(f"--augment: {root} holds no labels.csv; pass --augment-real the NIH thumbnails "
                             "folder (nih1000_64px)")
        if not conditional_on(source, task):
            raise UsageError(f"--augment {task!r}: the samples' manifest.csv has no columns for both labels; the "
                             "augmentation block is for conditional models")
        return root, task, None
    if protocol != "cxr64" or not conditional_on(source, task):
        return None, task, None
    if not (root / "labels.csv").is_file():
        return None, task, (f"augmentation block not computed: real images {root} not found "
                            "(pass --augment-real FOLDER, or --no-augment)")
    return root, task, None


def config_for(task: str, stored: dict | None = None, **local):
    """The AugmentConfig: the leaderboard setting (or an entry's stored, type-checked config) plus local fields."""
    from ..protocols.augmentation.config import AugmentConfig

    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    defaults = AugmentConfig()
    kw: dict[str, Any] = {"task": task, **SETTING, "progress": False}
    for name, value in (stored or {}).items():
        if name not in fields or name in LOCAL_FIELDS:
            continue
        default = getattr(defaults, name)
        ok = (value is None or isinstance(value, (str, int, float))) if default is None else \
            (type(value) is type(default) or (isinstance(default, float) and type(value) is int))
        if not ok or isinstance(value, bool) is not isinstance(default, bool):
            raise DataError(f"entry augmentation.config.{name} has an unexpected value {value!r}")
        kw[name] = value
    if kw.get("weights") not in ("auto", "random"):
        kw["weights"] = "auto"  # a folder on the submitter's machine; the weights hashes are compared instead
    kw.update({k: v for k, v in local.items() if k in LOCAL_FIELDS and v is not None})
    return AugmentConfig(**kw)


def compute(samples_source, real: Path, task: str, *, stored_config: dict | None = None, **local) -> dict:
    """Run the protocol and return the block (metrics as plain JSON-ready dicts)."""
    from ..protocols.augmentation.config import PROTOCOL_NAME, PROTOCOL_VERSION
    from ..protocols.augmentation.run import augment

    cfg = config_for(task, stored_config, **local)
    out = augment(str(real), samples_source, config=cfg)
    d = out.details
    keep = ("task", "classifier", "synthetic_label_source", "n_test", "test_class_counts", "real_pool",
            "patient_disjoint", "splits", "synthetic_usable", "training_sizes", "training_seeds")
    return {
        "protocol": {"name": PROTOCOL_NAME, "version": PROTOCOL_VERSION},
        "task": task,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LOCAL_FIELDS},
        "real": {"path": str(real), "n": len(out.real), "sha256": out.real.sha256},
        "weights": {k: str(s.get("weights")) for k, s in sorted(out.extractors.items())},
        "metrics": {k: v.to_dict() for k, v in sorted(out.metrics.items())},
        "details": {k: d[k] for k in keep if k in d},
        "notes": list(out.notes),
    }


def validate(block: Any, source: str) -> None:
    """Schema-check an entry's (untrusted) augmentation block."""
    from ..protocols.augmentation.config import OUTPUTS

    where = f"{source}: augmentation"
    if not isinstance(block, dict) or set(block) != set(BLOCK_KEYS):
        got = sorted(block) if isinstance(block, dict) else type(block).__name__
        raise DataError(f"{where} must hold exactly {list(BLOCK_KEYS)}, got {got}; re-create it with `cxrbench submit`")
    if not isinstance(block["task"], str) or not isinstance(block["config"], dict) or \
            not isinstance(block["protocol"], dict) or not isinstance(block["weights"], dict):
        raise DataError(f"{where}: task must be a string; config, protocol and weights objects")
    real = block["real"]
    if not isinstance(real, dict) or not isinstance(real.get("sha256"), str) or not isinstance(real.get("path"), str):
        raise DataError(f"{where}: real must be {{path, n, sha256}}")
    metrics = block["metrics"]
    if not isinstance(metrics, dict) or set(metrics) != set(OUTPUTS):
        raise DataError(f"{where}: metrics must be exactly the protocol's {sorted(OUTPUTS)}")
    for key, m in metrics.items():
        ci = m.get("ci") if isinstance(m, dict) else None
        if not isinstance(m, dict) or not _num(m.get("value")) or not (
                ci is None or (isinstance(ci, list) and len(ci) == 2 and all(_num(c) for c in ci))):
            raise DataError(f"{where}: metric {key!r} must have a finite value and ci [lo, hi] or null")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def recheck(entry: dict, samples_source, *, real: str | os.PathLike | None = None, rtol: float, atol: float,
            **local) -> tuple[list[tuple[str, str, str, str]], str | None]:
    """(differences, note): recompute the entry's block; without the real images, no rows and a note."""
    from .compare import metric_differences

    block = entry.get(KEY)
    if block is None:
        return [], None
    root = Path(real) if real else Path(block["real"]["path"])
    if not (root / "labels.csv").is_file() and not real:
        root = default_real()
    if not (root / "labels.csv").is_file():
        return [], (f"augmentation block not rechecked: real images {block['real']['path']} not found here "
                    "(pass --augment-real FOLDER)")
    local.setdefault("use_cache", False)
    new = compute(samples_source, root, block["task"], stored_config=block["config"], **local)
    rows = []
    if new["protocol"] != block["protocol"]:
        a, b = block["protocol"], new["protocol"]
        rows.append(("augmentation protocol", f"{a.get('name')} v{a.get('version')}", f"{b['name']} v{b['version']}",
                     "protocol"))
    if new["real"]["sha256"] != block["real"]["sha256"]:
        rows.append(("augmentation real sha256", block["real"]["sha256"][:16], new["real"]["sha256"][:16], "hash"))
    for name in sorted(set(block["weights"]) | set(new["weights"])):
        a, b = block["weights"].get(name), new["weights"].get(name)
        if a != b:
            rows.append((f"augmentation weights {name}", str(a)[:16], str(b)[:16], "hash"))
    rows += metric_differences(block["metrics"], new["metrics"], rtol, atol, prefix="augmentation.")
    return rows, None
