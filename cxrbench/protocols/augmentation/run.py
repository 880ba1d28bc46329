"""One run of the protocol (:func:`augment`): the two sets opened and labelled, the classifier's inputs
(frozen features or images), every mode trained for every seed on the same test images, and the metrics.

Each step is a function of its own; :func:`augment` calls them in order, and :func:`run_augmentation` is
what the harness and the registered protocol call.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...config import EvalConfig, resolve_device
from ...data.imageset import ImageSource
from ...data.labels import LABELS
from ...data.sources import open_source
from ...engine.extraction import build_extractors, decoded_batches, default_workers, extract_features
from ...errors import DataError, UsageError
from ...features.base import is_random_weights
from ...features.cache import FeatureCache
from ...features.resize import center_crop_xrv
from ...metrics.base import MetricValue
from .classifiers import AugmentClassifier, _classifier
from .config import MODES, AugmentConfig, AugmentOutcome
from .labels import _attach_labels, _classifier_labels, _has_task_columns, _labeller, binary_labels, parse_task
from .splits import _default_splits, _head, _take_balanced, _test_split
from .stats import CI_METHOD, STATS, resolution_fields, seed_and_test_ci

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What the steps of one run share: the resolved config, the engine's config, feature cache and device,
    and what they collect on the way (built extractors, extractor specs, notes)."""

    cfg: AugmentConfig
    ecfg: EvalConfig
    cache: FeatureCache
    device: str
    notes: list[str]
    extractors: dict = field(default_factory=dict)
    specs: dict[str, dict] = field(default_factory=dict)


def augment(real, synthetic, *, config: AugmentConfig | None = None, real_labels: str | None = None,
            synthetic_labels: str | None = None, real_features: np.ndarray | None = None,
            synthetic_features: np.ndarray | None = None) -> AugmentOutcome:
    """Run the protocol; ``real`` / ``synthetic`` are folders, arrays or ``ImageSource``s.

    ``real_features`` / ``synthetic_features`` (rows in each source's canonical order) skip extraction for
    the linear probe, e.g. when the harness has already extracted them.
    """
    cfg = config or AugmentConfig()
    clf = _classifier(cfg.classifier)
    _check_sizes(cfg)
    pos, neg = parse_task(cfg.task)
    device = resolve_device(cfg.device)
    notes: list[str] = []

    real_src, syn_src, y_real = _open_sets(real, synthetic, real_labels, synthetic_labels, pos, neg)
    given = cfg
    cfg = _default_splits(cfg, real_src)
    if cfg is not given:
        notes.append(f"cxr64 extractor on NIH labels: real training images from {cfg.train_split}, test images "
                     f"from {cfg.test_split} (the cxr64 protocol's patient splits; neither seen by the generators "
                     "nor by the cxr64 network's weights)")

    ecfg = EvalConfig(extractors=(cfg.extractor,), weights=cfg.weights, weights_seed=cfg.weights_seed, device=device,
                      batch_size=cfg.batch_size, num_workers=cfg.num_workers, cache_dir=cfg.cache_dir,
                      use_cache=cfg.use_cache, progress=cfg.progress)
    run = _Run(cfg, ecfg, FeatureCache(cfg.cache_dir, enabled=cfg.use_cache), device, notes)
    y_syn, label_source = _synthetic_labels(run, syn_src, pos, neg)

    test, pool = _test_split(real_src, y_real, cfg, (pos, neg))
    syn_usable = np.flatnonzero(y_syn >= 0)
    hints = (
        (f"real pool after the test draw: {int((y_real[pool] == 1).sum())} {pos}, "
         f"{int((y_real[pool] == 0).sum())} {neg}"),
        (f"synthetic: {int((y_syn == 1).sum())} {pos}, {int((y_syn == 0).sum())} {neg}, "
         f"{int((y_syn < 0).sum())} neither/both (labels from {label_source})"),
    )
    x_real, x_syn = _classifier_inputs(run, clf, real_src, syn_src, (test, pool), syn_usable, real_features,
                                       synthetic_features)
    scores, sizes = _train_every_seed(run, clf, (real_src, x_real, y_real), (syn_src, x_syn, y_syn), test, pool,
                                      syn_usable, hints)
    y_test = y_real[test]
    metrics, per_seed = _metrics(scores, sizes, y_test, cfg)

    details = {
        "task": {"positive": pos, "negative": neg, "string": cfg.task},
        "classifier": cfg.classifier,
        "synthetic_label_source": label_source,
        "n_test": len(test), "test_class_counts": {pos: int((y_test == 1).sum()), neg: int((y_test == 0).sum())},
        "real_pool": {"n": len(pool), pos: int((y_real[pool] == 1).sum()), neg: int((y_real[pool] == 0).sum())},
        "patient_disjoint": real_src.patient_ids is not None,
        "splits": {"test": cfg.test_split, "train": cfg.train_split},
        "synthetic_usable": {pos: int((y_syn == 1).sum()), neg: int((y_syn == 0).sum())},
        "training_sizes": sizes,
        "training_seeds": [cfg.seed + 1 + s for s in range(cfg.seeds)],
        "per_seed": per_seed,
        "test_ids": [real_src.ids[i] for i in test],
    }
    if real_src.patient_ids is None:
        notes.append("the real images have no patient ids: the test set is image-disjoint, not patient-disjoint")
    cache = run.cache
    cache_info = {"dir": str(cache.root) if cache.enabled else None, "hits": cache.hits, "misses": cache.misses}
    return AugmentOutcome(metrics=metrics, details=details, notes=notes, extractors=run.specs, real=real_src,
                          synthetic=syn_src, device=device, cache=cache_info)


def _check_sizes(cfg: AugmentConfig) -> None:
    if cfg.seeds < 1 or cfg.n_real < 4 or cfg.n_test < 4 or (cfg.n_synthetic is not None and cfg.n_synthetic < 2):
        raise UsageError("--seeds must be >= 1, --n-real and --n-test >= 4, --n-synthetic >= 2")
    if cfg.seeds < 3:
        log.warning("augmentation: %d seed(s); the protocol asks for >= 3 to show seed-to-seed spread", cfg.seeds)


def _open_sets(real, synthetic, real_labels: str | None, synthetic_labels: str | None, pos: str,
               neg: str) -> tuple[ImageSource, ImageSource, np.ndarray]:
    """(real source, synthetic source, the real images' task labels): labels files attached, and the real
    images refused unless they carry labels for both classes."""
    real_src = open_source(real, role="real")
    syn_src = open_source(synthetic, role="synthetic")
    _attach_labels(real_src, real_labels, "real")
    _attach_labels(syn_src, synthetic_labels, "synthetic")
    if not _has_task_columns(real_src, pos, neg):
        have = [] if real_src.labels is None else [c for c in real_src.labels.columns if c in LABELS]
        raise DataError(f"{real_src.name}: the real images need labels for {pos!r} and {neg!r} (labels.csv in the "
                        f"folder or --real-labels CSV); label columns found: {have or 'none'}")
    return real_src, syn_src, binary_labels(real_src.label_matrix(), pos, neg)


def _synthetic_labels(run: _Run, syn_src: ImageSource, pos: str, neg: str) -> tuple[np.ndarray, str]:
    """(task labels of the synthetic images, where they came from)."""
    # synthetic labels: manifest / labels table, else a label classifier: the probe extractor's own head when it
    # has one that predicts the task's labels (cxr64 -> cxr64-classifier, offline), else the XRV classifier
    if _has_task_columns(syn_src, pos, neg):
        return binary_labels(syn_src.label_matrix(), pos, neg), "manifest"
    cfg, device = run.cfg, run.device
    base, head = _labeller(cfg.extractor, (pos, neg))
    lcfg = dataclasses.replace(run.ecfg, extractors=(base, head))
    lx = build_extractors([base, head], lcfg, device)
    f, bad = extract_features(syn_src, lx, lcfg, run.cache, device, desc=f"synthetic labels ({head})")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in synthetic {syn_src.name}: {bad[0][1]}; remove them")
    y_syn = _classifier_labels(f[head], lx[head].feature_names, pos, neg)
    run.specs[head] = lx[head].spec()
    weights_note = " (RANDOM weights: these labels are meaningless)" if is_random_weights(cfg.weights) else ""
    run.notes.append(f"synthetic labels were not given (no {pos!r}/{neg!r} columns in a manifest.csv); they come "
                     f"from the {head} classifier (probability > 0.5 = present, No Finding = nothing present)"
                     f"{weights_note}")
    return y_syn, head


def _features(run: _Run, src: ImageSource, given, role: str) -> np.ndarray:
    """The frozen features of ``src``: ``given`` (checked), else extracted through the engine and its cache."""
    if given is not None:
        given = np.asarray(given, dtype=np.float32)
        if given.ndim != 2 or len(given) != len(src):
            raise UsageError(f"{role}_features: expected ({len(src)}, D) rows in {src.name}'s canonical order, "
                             f"got shape {given.shape}")
        return given
    cfg = run.cfg
    if not run.extractors:
        run.extractors.update(build_extractors([cfg.extractor], run.ecfg, run.device))
    f, bad = extract_features(src, run.extractors, run.ecfg, run.cache, run.device, desc=f"{role} features")
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s) in {role} {src.name}: {bad[0][1]}; remove them")
    return f[cfg.extractor]


def _classifier_inputs(run: _Run, clf: AugmentClassifier, real_src: ImageSource, syn_src: ImageSource,
                       test_pool: tuple[np.ndarray, np.ndarray], syn_usable: np.ndarray, real_features,
                       synthetic_features):
    """(x_real, x_syn), one row per image of each source: frozen features, or images (of the real set, the
    test images and the training pool)."""
    cfg = run.cfg
    if clf.inputs == "features":
        x_real = _features(run, real_src, real_features, "real")
        x_syn = _features(run, syn_src, synthetic_features, "synthetic")
        if run.extractors:
            run.specs[cfg.extractor] = run.extractors[cfg.extractor].spec()
        else:
            run.specs[cfg.extractor] = {"name": cfg.extractor, "given": "features passed in by the caller"}
        return x_real, x_syn
    size = cfg.image_size or clf.image_size
    x_real = torch.zeros(len(real_src), 1, size, size)
    x_syn = torch.zeros(len(syn_src), 1, size, size)
    # only decode images that can be used
    keep_real = np.union1d(*test_pool)
    workers = default_workers(run.ecfg)
    x_real[keep_real] = _load_images(real_src, keep_real, size, batch_size=cfg.batch_size, workers=workers)
    x_syn[syn_usable] = _load_images(syn_src, syn_usable, size, batch_size=cfg.batch_size, workers=workers)
    return x_real, x_syn


def _load_images(src: ImageSource, idx: np.ndarray, size: int, *, batch_size: int = 64,
                 workers: int = 0) -> torch.Tensor:
    """(len(idx), 1, size, size) float32 [0, 1]: center-cropped square, antialiased resize; decoded by the
    engine's one decode loop."""

    out = torch.empty(len(idx), 1, size, size)
    pos = {int(i): k for k, i in enumerate(idx)}
    rows = [int(i) for i in idx]
    batches = [rows[b : b + batch_size] for b in range(0, len(rows), batch_size)]
    for _, groups, bad in decoded_batches(src, batches, device="cpu", workers=workers):
        if bad:
            raise DataError(bad[0][1])  # names the file and the fix
        for ids, x in groups:
            x = center_crop_xrv(x)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out[[pos[i] for i in ids]] = x
    return out


def _training_sets(rng: np.random.Generator, real: tuple, syn: tuple, pool: np.ndarray, syn_usable: np.ndarray,
                   n: int, k: int, hints: tuple[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One seed's training sets: mode -> (real indices, synthetic indices)."""
    (real_src, _, y_real), (syn_src, _, y_syn) = real, syn
    r = _take_balanced(rng, pool, y_real, n, f"{real_src.name} (real training pool)", hints[0])
    syn_n = _take_balanced(rng, syn_usable, y_syn, max(n, k), f"{syn_src.name} (synthetic)", hints[1])
    # nested draws: mixed's halves come from the same real / synthetic draws, augmented adds K of the
    # synthetic draw to exactly the `real` set
    half_r, half_s = _head(r, y_real, n // 2), _head(syn_n, y_syn, n - n // 2)
    syn_k, syn_only = _head(syn_n, y_syn, k), _head(syn_n, y_syn, n)
    return {
        "real": (r, np.array([], dtype=np.int64)),
        "mixed": (half_r, half_s),
        "augmented": (r, syn_k),
        "synthetic": (np.array([], dtype=np.int64), syn_only),
    }


def _train_every_seed(run: _Run, clf: AugmentClassifier, real: tuple, syn: tuple, test: np.ndarray,
                      pool: np.ndarray, syn_usable: np.ndarray, hints: tuple[str, str]):
    """(scores, sizes): every mode trained for every seed and applied to the test images; ``real`` / ``syn``
    are (source, inputs, task labels)."""

    from tqdm.auto import tqdm

    cfg = run.cfg
    n, k = cfg.n_real, cfg.n_synthetic if cfg.n_synthetic is not None else cfg.n_real
    (_, x_real, y_real), (_, x_syn, y_syn) = real, syn

    def cat(a, b):
        return np.concatenate([a, b]) if isinstance(a, np.ndarray) else torch.cat([a, b])

    x_test = x_real[test]
    scores: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    sizes: dict[str, dict] = {}
    for s in tqdm(range(cfg.seeds), desc="augmentation seeds", disable=not cfg.progress, file=sys.stderr, leave=False):
        seed = cfg.seed + 1 + s
        rng = np.random.default_rng(seed)
        train = _training_sets(rng, real, syn, pool, syn_usable, n, k, hints)
        for m, (ri, si) in train.items():
            x_tr = cat(x_real[ri], x_syn[si])
            y_tr = np.concatenate([y_real[ri], y_syn[si]])
            scores[m].append(clf.fit(x_tr, y_tr, x_test, seed=seed, cfg=cfg, device=run.device))
            sizes[m] = {"n_real": len(ri), "n_synthetic": len(si)}
    return scores, sizes


def _metrics(scores: dict[str, list[np.ndarray]], sizes: dict[str, dict], y_test: np.ndarray,
             cfg: AugmentConfig) -> tuple[dict[str, MetricValue], dict[str, dict[str, list[float]]]]:
    """(metrics, per-seed values): every mode's statistics, then the paired differences against ``real``."""
    metrics: dict[str, MetricValue] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    nt = len(y_test)
    n_pos = int((y_test == 1).sum())
    # the smallest step of each statistic's mean over seeds: one test pair (AUROC) or one test image (accuracy)
    step = {"auroc": 1.0 / max(n_pos * (nt - n_pos), 1) / cfg.seeds, "accuracy": 1.0 / max(nt, 1) / cfg.seeds}
    for m in MODES:
        for sname, fn in STATS.items():
            vals = [fn(y_test, sc) for sc in scores[m]]
            per_seed.setdefault(m, {})[sname] = vals
            ci = seed_and_test_ci(lambda idx, k, m=m, fn=fn: fn(y_test[idx], scores[m][k][idx]), nt, cfg.seeds,
                                  n_boot=cfg.n_bootstrap, seed=cfg.seed)
            metrics[f"aug_{m}_{sname}"] = MetricValue(
                value=float(np.mean(vals)), higher_is_better=True, ci=ci, n_gen=sizes[m]["n_synthetic"], n_ref=nt,
                ci_method=CI_METHOD,
                extra={"per_seed": vals, "std_over_seeds": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                       "n_train_real": sizes[m]["n_real"], "n_train_synthetic": sizes[m]["n_synthetic"],
                       **resolution_fields(step[sname])},
            )
    for key, mode in (("gain", "augmented"), ("mixed_delta", "mixed")):
        for sname, fn in STATS.items():
            diffs = [a - b for a, b in zip(per_seed[mode][sname], per_seed["real"][sname])]

            def paired(idx, k, mode=mode, fn=fn):
                return fn(y_test[idx], scores[mode][k][idx]) - fn(y_test[idx], scores["real"][k][idx])

            metrics[f"aug_{key}_{sname}"] = MetricValue(
                value=float(np.mean(diffs)), higher_is_better=True,
                ci=seed_and_test_ci(paired, nt, cfg.seeds, n_boot=cfg.n_bootstrap, seed=cfg.seed),
                n_gen=sizes[mode]["n_synthetic"], n_ref=nt, ci_method=CI_METHOD,
                extra={"per_seed": diffs, "std_over_seeds": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None,
                       "definition": f"{mode} minus real on the same test images and training seed, mean over "
                                     "seeds", **resolution_fields(step[sname])},
            )
    return metrics, per_seed


def run_augmentation(real, synthetic, *, task: str, config: AugmentConfig | None = None,
                     **kwargs) -> dict[str, MetricValue]:
    """The ``aug_*`` metrics for the harness (``cxrbench evaluate --protocol augmentation``).

    ``kwargs`` go to :func:`augment` (``real_labels``, ``synthetic_labels``, ``real_features``,
    ``synthetic_features``). Notes (e.g. labels from the XRV classifier) are emitted as warnings, which the
    harness records in the result.
    """

    cfg = dataclasses.replace(config or AugmentConfig(), task=task)
    out = augment(real, synthetic, config=cfg, **kwargs)
    for note in out.notes:
        warnings.warn(f"augmentation: {note}", UserWarning, stacklevel=2)
    return out.metrics
