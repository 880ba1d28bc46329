"""The downstream-augmentation block of a leaderboard entry (``entry["augmentation"]``, optional).

The augmentation protocol (``cxrbench.protocols.augmentation``) with a linear probe on the entry's protocol
network, in one of two settings chosen by the entry's protocol:

- ``cxr128`` (the default protocol): the task of Malik & Humair ("Evaluating the feasibility of using Generative
  Models to generate Chest X-Ray Data", 2023, Table I: Edema vs No Finding, 1,000 real against 500 real + 500
  synthetic), real images ``nih_extra_256px``, probe trained on the
  ``cxr128-train`` split and tested on ``cxr128-heldout`` + ``cxr128-reference`` (patient-disjoint, never seen by
  the generators), N = the most real images per class the training split holds (or ``--augment-n-per-class``,
  capped by it) and the same count of synthetic images per class. Its synthetic images are a samples folder of
  their own (``--augment-samples DIR``: images requested per class, with ``manifest.csv``), since an entry's
  samples follow the training labels (Edema ~6%); the block records it as the entry records its samples, and
  ``verify`` re-hashes it.
- ``cxr64`` (the retired protocol, and entries under one's own reference): Effusion vs No Finding, 50 real, on
  the NIH thumbnails' cxr64 splits, with the entry's own samples; added automatically for conditional samples.

``cxrbench verify`` recomputes the block when the real images are there and says, in one line, that it did
not otherwise::

    protocol    {name: "augmentation", version}
    task        "Edema vs No Finding"
    config      the AugmentConfig fields that decide the numbers (no device, cache or worker settings)
    real        {path, n, sha256}: the real images (sha256 over their sorted per-file sha256s)
    weights     {extractor: weights id} of the probe's extractor
    metrics     {aug_*: metric dict as in a result (value, ci, n_gen, n_ref, per_seed ...)}
    details     test/pool/synthetic class counts, splits, training sizes and seeds, label source
    notes       the protocol's notes
    samples     optional: the block's own synthetic images, {location, n, sha256, files, side_files} as in the
                entry's ``samples`` (``location`` relative to the entry's folder)
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from ..data.labels import LABELS
from ..data.precomputed import PrecomputedSet
from ..data.sources import open_source
from ..errors import DataError, UsageError
from ..protocols.augmentation.config import OUTPUTS, PROTOCOL_NAME, PROTOCOL_VERSION, AugmentConfig
from ..protocols.augmentation.labels import binary_labels, parse_task
from ..protocols.augmentation.run import augment
from ..protocols.augmentation.splits import capacity
from .compare import metric_differences

KEY = "augmentation"
DEFAULT_TASK = "Effusion vs No Finding"
CXR128_TASK = "Edema vs No Finding"

#: the cxr64 leaderboard setting. The cxr64 splits hold 82 Effusion / 224 No Finding images in train and 88 / 275 in
#: heldout + reference; 200 conditional samples drawn from the training labels carry ~36 Effusion (18%), so
#: N = 50 (25 per class, real and synthetic) fits, and 160 test images use most held-out Effusion patients.
SETTING = {"extractor": "cxr64", "classifier": "linear", "n_real": 50, "n_test": 160, "seeds": 5,
           "weights": "auto"}
#: the cxr128 setting. nih_extra_256px holds 43 Edema / 258 No Finding images in cxr128-train and 68 / 341 in
#: cxr128-heldout + cxr128-reference: n_real and n_test None mean the most the real images supply (43 per class
#: to train, 136 balanced test images: every held-out Edema image), resolved at submit and stored.
SETTING_CXR128 = {"extractor": "cxr128", "classifier": "linear", "n_real": None, "n_test": None, "seeds": 5,
                  "weights": "auto", "train_split": "cxr128-train", "test_split": "cxr128-heldout,cxr128-reference"}
#: protocol -> (AugmentConfig fields, default task, real images folder under the shared data)
SETTINGS = {"cxr64": (SETTING, DEFAULT_TASK, "nih1000_64px"),
            "cxr128": (SETTING_CXR128, CXR128_TASK, "nih_extra_256px")}
#: AugmentConfig fields that describe the machine, not the evaluation: never stored, never reused
LOCAL_FIELDS = ("device", "batch_size", "num_workers", "cache_dir", "use_cache", "progress")
BLOCK_KEYS = ("protocol", "task", "config", "real", "weights", "metrics", "details", "notes")
OPTIONAL_KEYS = ("samples",)
#: protocols whose conditional entries get the block without --augment (cxr128's recipes ask for it each)
AUTOMATIC = frozenset({"cxr64"})


def setting_for(protocol: str) -> tuple[dict, str, str]:
    """(config fields, default task, real folder name) of the block under an entry's ``protocol``: ``cxr128``
    has its own; every other protocol keeps the cxr64 setting its entries were made with."""
    return SETTINGS["cxr128" if protocol == "cxr128" else "cxr64"]


def default_real(protocol: str = "cxr64") -> Path:
    """Where submit and verify look for the real images without --augment-real: the project's data layout,
    ``../shared/data/<folder>`` (nih1000_64px, or nih_extra_256px under cxr128), or under
    ``$CXRBENCH_SHARED_DATA`` when set (as the tests do)."""
    return Path(os.environ.get("CXRBENCH_SHARED_DATA", Path("..") / "shared" / "data")) / setting_for(protocol)[2]


def conditional_on(source, task: str) -> bool:
    """Whether the samples carry both labels of ``task`` (a conditional model's manifest.csv)."""
    if isinstance(source, PrecomputedSet):
        return False  # a reference row of real images: its labels are findings, not requests to a generator
    return source.labels is not None and all(lab in source.labels.columns for lab in parse_task(task))


def requested(source, task: str) -> tuple[int, int]:
    """(positive, negative): how many samples were requested as each class of ``task`` (one label, not both)."""
    y = binary_labels(source.label_matrix(), *parse_task(task))
    return int((y == 1).sum()), int((y == 0).sum())


def _sample_hint(pos: str, neg: str, k: int | str = "K") -> str:
    return (f"request both classes from the model, e.g. `cxrbench sample RUN --labels-csv requests.csv --out DIR` "
            f"with {k} rows of {pos} = 1 and {k} of {neg} = 1 (or `--labels '{pos}' --n {k}` and "
            f"`--labels '{neg}' --n {k}` into two folders, their manifests joined)")


def plan(source, *, task: str | None, real: str | None, protocol: str, enabled: bool = True,
         separate: bool = False) -> tuple[Path | None, str, str | None]:
    """(real folder or None, task, note): whether submit adds the block, and why not when it does not.

    ``source``: the block's synthetic images (``separate``: a samples folder of its own, which asks for the
    block as ``task`` does). Asked for: the real folder must exist and the samples must request both classes.
    Otherwise automatic: cxr64 protocol, conditional samples, real folder found; anything missing is a note,
    not an error.
    """
    _, default_task, folder = setting_for(protocol)
    asked = task is not None or separate
    task = task or default_task
    if not enabled:
        return None, task, None
    root = Path(real) if real else default_real(protocol)
    if asked:
        if not (root / "labels.csv").is_file():
            raise UsageError(f"--augment: {root} holds no labels.csv; pass --augment-real the NIH folder "
                             f"({folder}) the block trains and tests on")
        if not conditional_on(source, task):
            raise UsageError(f"--augment {task!r}: the samples' manifest.csv has no columns for both labels; the "
                             "augmentation block is for conditional models")
        pos, neg = parse_task(task)
        n_pos, n_neg = requested(source, task)
        if not (n_pos and n_neg):
            raise UsageError(f"--augment {task!r}: {source.name}'s manifest.csv requests {n_pos} {pos} and {n_neg} "
                             f"{neg} images; the block needs both classes: {_sample_hint(pos, neg)}")
        return root, task, None
    if protocol not in AUTOMATIC or not conditional_on(source, task):
        return None, task, None
    if not (root / "labels.csv").is_file():
        return None, task, (f"augmentation block not computed: real images {root} not found "
                            "(pass --augment-real FOLDER, or --no-augment)")
    return root, task, None


def config_for(task: str, stored: dict | None = None, *, setting: dict | None = None, **local):
    """The AugmentConfig: the block's setting (default cxr64's; or an entry's stored, type-checked config) plus
    local fields. ``n_real`` / ``n_test`` stay None where the setting leaves them to the data."""
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    defaults = AugmentConfig()
    kw: dict[str, Any] = {"task": task, **(SETTING if setting is None else setting), "progress": False}
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


def _resolve_sizes(cfg, real_src, samples_source, real: Path, n_per_class: int | None, notes: list[str]):
    """``cfg`` with ``n_real`` / ``n_test`` decided by the data: the largest balanced test set of the test
    splits, and N per class the most the training split holds (``n_per_class``, when asked, capped by it, and
    said so); refused when the synthetic images request fewer than N of a class."""
    pos, neg = parse_task(cfg.task)
    if real_src.labels is None or not {pos, neg} <= set(real_src.labels.columns):
        have = [] if real_src.labels is None else [c for c in real_src.labels.columns if c in LABELS]
        raise DataError(f"{real_src.name}: the real images need labels for {pos!r} and {neg!r} (labels.csv in the "
                        f"folder); label columns found: {have or 'none'}")
    y = binary_labels(real_src.label_matrix(), pos, neg)
    n_test = cfg.n_test if cfg.n_test is not None else 10**9
    n_test, pool = capacity(real_src, y, dataclasses.replace(cfg, n_test=n_test))
    most = min(pool.values())
    train = cfg.train_split or "training pool"
    if n_test < 4 or most < 2:
        raise DataError(f"{real}: too few real images for {cfg.task}: {n_test // 2} per class for the test set "
                        f"({cfg.test_split or 'all'}), {pool[1]} {pos} and {pool[0]} {neg} in {train}; the block "
                        "needs at least 2 per class and split")
    n = most if n_per_class is None else min(n_per_class, most)
    if n_per_class is not None and n_per_class > most:
        notes.append(f"N capped at {most} real images per class (asked {n_per_class}): {train} of {real} holds "
                     f"{pool[1]} {pos} and {pool[0]} {neg} images")
    n_pos, n_neg = requested(samples_source, cfg.task)
    if min(n_pos, n_neg) < n:
        raise DataError(f"{samples_source.name}: the block needs {n} synthetic images of each class (N = {n} real "
                        f"per class) but manifest.csv requests {n_pos} {pos} and {n_neg} {neg}; "
                        + _sample_hint(pos, neg, n))
    return dataclasses.replace(cfg, n_real=2 * n, n_test=n_test)


def compute(samples_source, real: Path, task: str, *, protocol: str = "cxr64", stored_config: dict | None = None,
            n_per_class: int | None = None, **local) -> dict:
    """Run the protocol in ``protocol``'s setting and return the block (metrics as plain JSON-ready dicts).

    ``n_per_class``: N real (and synthetic) images per class, capped by what the real training split holds;
    None: the setting's (cxr128: the most there is)."""
    setting = setting_for(protocol)[0]
    cfg = config_for(task, stored_config, setting=setting, **local)
    if n_per_class is not None:
        if n_per_class < 2:
            raise UsageError(f"--augment-n-per-class {n_per_class}: give at least 2")
        cfg = dataclasses.replace(cfg, n_real=None)
    notes: list[str] = []
    real_src = open_source(str(real), role="real", cache_dir=cfg.cache_dir)
    if cfg.n_real is None or cfg.n_test is None:
        cfg = _resolve_sizes(cfg, real_src, samples_source, real, n_per_class, notes)
    if cfg.train_split and cfg.train_split.startswith("cxr128-"):
        notes.append(f"real images: probe trained on {cfg.train_split} (what the generators train on) and tested "
                     f"on {cfg.test_split} (the cxr128 protocol's patient-disjoint splits that no generator saw); "
                     f"N = {cfg.n_real // 2} real images per class")
    out = augment(real_src, samples_source, config=cfg)
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
        "notes": notes + list(out.notes),
    }


def validate(block: Any, source: str) -> None:
    """Schema-check an entry's (untrusted) augmentation block."""
    where = f"{source}: augmentation"
    if not isinstance(block, dict) or not set(BLOCK_KEYS) <= set(block) <= set(BLOCK_KEYS + OPTIONAL_KEYS):
        got = sorted(block) if isinstance(block, dict) else type(block).__name__
        raise DataError(f"{where} must hold exactly {list(BLOCK_KEYS)} (and optionally {list(OPTIONAL_KEYS)}), got "
                        f"{got}; re-create it with `cxrbench submit`")
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
    block = entry.get(KEY)
    if block is None:
        return [], None
    protocol = entry["protocol"]["name"]
    root = Path(real) if real else Path(block["real"]["path"])
    if not (root / "labels.csv").is_file() and not real:
        root = default_real(protocol)
    if not (root / "labels.csv").is_file():
        return [], (f"augmentation block not rechecked: real images {block['real']['path']} not found here "
                    "(pass --augment-real FOLDER)")
    local.setdefault("use_cache", False)
    new = compute(samples_source, root, block["task"], protocol=protocol, stored_config=block["config"],
                  **{k: v for k, v in local.items() if k in LOCAL_FIELDS})
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
