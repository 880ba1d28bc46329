"""Downstream augmentation gain (Malik & Humair 2023, Table I;
Kumar & Triana 2023): do synthetic images help a real classifier?

A binary task ``"A vs B"`` (label names, ``No Finding`` allowed) is learned from four training sets and
tested on the same held-out real images:

``real``       N real images                      ``mixed``      N/2 real + N/2 synthetic (Malik & Humair)
``augmented``  the N real images + K synthetic    ``synthetic``  N synthetic images only

Every training set is class-balanced. The test set is drawn once (patient-disjoint from the training pool
when patient ids exist; exact file copies of test images are removed from the pool too); each seed redraws
the training subsets and re-initialises the classifier. Reported per mode: accuracy and AUROC (mean over
seeds, bootstrap CI over test images and training seeds, per-seed values and their std); and the paired
differences ``aug_gain_*`` (augmented - real) and ``aug_mixed_delta_*`` (mixed - real), whose CIs resample the
same test images and seeds for both modes.

Classifiers: ``linear`` (logistic regression on frozen features, extracted once through the harness and its
feature cache), ``cnn`` (a small CNN on 64 px images) and ``densenet`` (torchxrayvision DenseNet121
fine-tuned; published weights when ``weights`` finds them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ..config import EvalConfig, resolve_device
from ..data.imageset import ImageSource, _align_table, _read_csv
from ..data.labels import LABELS, NO_FINDING, canonical_label
from ..data.sources import open_source
from ..engine.extraction import build_extractors, decoded_batches, default_workers, extract_features
from ..engine.protocol import Protocol
from ..errors import DataError, UsageError
from ..features.base import FeatureKind, is_random_weights
from ..features.cache import FeatureCache
from ..metrics.base import MetricValue
from ..registry import CLASSIFIERS

log = logging.getLogger(__name__)

PROTOCOL_NAME = "augmentation"
# 2: CIs resample training seeds too; partial-patient test draw. 3: the linear probe solved to convergence, so its
# AUROCs no longer depend on the CPU's BLAS kernels (an entry verified on one machine verifies on every other)
PROTOCOL_VERSION = "3"
MODES = ("real", "mixed", "augmented", "synthetic")
#: output key -> higher_is_better (the leaderboard reads this, never a hard-coded direction)
OUTPUTS = {
    **{f"aug_{m}_{s}": True for m in MODES for s in ("auroc", "accuracy")},
    "aug_gain_auroc": True, "aug_gain_accuracy": True,
    "aug_mixed_delta_auroc": True, "aug_mixed_delta_accuracy": True,
}


@dataclass
class AugmentConfig:
    """Every knob of the protocol; ``cxrbench augment`` flags mirror these fields."""

    task: str = "Edema vs No Finding"
    n_real: int = 1000
    n_test: int = 300
    n_synthetic: int | None = None  # K added in `augmented`; None: K = n_real
    seeds: int = 3
    seed: int = 0  # test-set draw and bootstrap; training seeds are seed+1 .. seed+seeds
    # test / training images only from these splits (comma-separated labels.csv `split` values or cxr64-*);
    # None with --extractor cxr64 on NIH labels: cxr64-heldout,cxr64-reference / cxr64-train
    test_split: str | None = None
    train_split: str | None = None
    classifier: str = "linear"
    extractor: str = "xrv"  # frozen features for `linear`
    weights: str = "auto"  # auto | random | a folder of weights files (extractor, and densenet init)
    weights_seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    num_workers: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True
    n_bootstrap: int = 200
    c: float = 1.0  # inverse L2 strength of the linear probe (features are standardised first)
    epochs: int | None = None  # cnn / densenet; None: 15 (cnn), 5 (densenet)
    lr: float | None = None  # None: 1e-3 (cnn), 1e-4 (densenet)
    image_size: int | None = None  # None: 64 (cnn), 224 (densenet)
    progress: bool = True

    @classmethod
    def from_eval(cls, config, *, extractor: str, device: str) -> AugmentConfig:
        """The protocol's knobs under ``cxrbench evaluate --protocol augmentation``: the ``augment_*`` fields of
        an ``EvalConfig`` and the settings the evaluation shares (weights, cache, bootstrap, ...)."""
        return cls(
            task=config.augment_task, n_real=config.augment_n_real, n_test=config.augment_n_test,
            seeds=config.augment_seeds, seed=config.seed, extractor=extractor, weights=config.weights,
            weights_seed=config.weights_seed, device=device, batch_size=config.batch_size,
            num_workers=config.num_workers, cache_dir=config.cache_dir, use_cache=config.use_cache,
            n_bootstrap=config.n_bootstrap, progress=config.progress,
        )


@dataclass
class AugmentOutcome:
    metrics: dict[str, MetricValue]
    details: dict = field(default_factory=dict)  # sizes, per-seed tables, label sources
    notes: list[str] = field(default_factory=list)
    extractors: dict[str, dict] = field(default_factory=dict)
    real: ImageSource | None = None
    synthetic: ImageSource | None = None
    device: str = "cpu"
    cache: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- task + labels

def parse_task(task: str) -> tuple[str, str]:
    """``"A vs B"`` -> (positive label A, negative label B), NIH spelling."""
    parts = [p.strip() for p in task.replace(" VS ", " vs ").split(" vs ")]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--task {task!r}: expected 'A vs B', e.g. 'Edema vs No Finding'")
    out = []
    for p in parts:
        lab = canonical_label(p)
        if lab is None:
            raise UsageError(f"--task {task!r}: unknown label {p!r}; known labels: {', '.join(LABELS)}")
        out.append(lab)
    if out[0] == out[1]:
        raise UsageError(f"--task {task!r}: the two classes must differ")
    return out[0], out[1]


def binary_labels(matrix: np.ndarray, pos: str, neg: str) -> np.ndarray:
    """1 (pos), 0 (neg) or -1 (neither, or both: left out) from an (N, 15) LABELS-order matrix (NaN unknown)."""
    a = matrix[:, LABELS.index(pos)] == 1
    b = matrix[:, LABELS.index(neg)] == 1
    return np.where(a & ~b, 1, np.where(b & ~a, 0, -1)).astype(np.int64)


def _attach_labels(src: ImageSource, csv: str | None, role: str) -> None:
    if csv is None:
        return
    from pathlib import Path

    p = Path(csv)
    if not p.is_file():
        raise DataError(f"{p}: no such labels file for --{role}-labels")
    if src.root is None or src._array is not None:
        raise UsageError(f"--{role}-labels needs --{role} to be a folder (array files carry no paths)")
    table = _align_table(_read_csv(p), src.ids, p, src.root)
    if "manifest" in p.name:
        src.manifest = table
    src.labels = table


def _has_task_columns(src: ImageSource, pos: str, neg: str) -> bool:
    return src.labels is not None and pos in src.labels.columns and neg in src.labels.columns


def _labeller(extractor: str, task: tuple[str, str]) -> tuple[str, str]:
    """(base, head) extractors that label synthetic images: ``extractor``'s own registered label head when it
    predicts every label of ``task`` (No Finding = none present), else the XRV classifier."""
    from ..registry import EXTRACTORS

    for name in EXTRACTORS.names():
        cls = EXTRACTORS.get(name)
        if getattr(cls, "derived_from", None) == extractor and cls.kind == FeatureKind.PROBABILITIES:
            try:
                names = cls().feature_names or []
            except Exception:  # noqa: BLE001 - a head that cannot be built here labels nothing; fall back to xrv
                break
            if all(lab == NO_FINDING or lab in names for lab in task):
                return extractor, name
            break
    return "xrv", "xrv-classifier"


def _classifier_labels(probs: np.ndarray, names: list[str], pos: str, neg: str) -> np.ndarray:
    """Task labels from classifier probabilities (> 0.5 = present; No Finding = nothing present)."""
    col = {canonical_label(n) or n: j for j, n in enumerate(names)}
    present = probs > 0.5

    def has(lab):
        if lab == NO_FINDING:
            return ~present.any(1)
        if lab not in col:
            raise UsageError(f"the label classifier has no output for {lab!r}; give --synthetic-labels (a manifest.csv)")
        return present[:, col[lab]]

    a, b = has(pos), has(neg)
    return np.where(a & ~b, 1, np.where(b & ~a, 0, -1)).astype(np.int64)


# --------------------------------------------------------------------------------------------- splits

def _take_balanced(rng: np.random.Generator, idx: np.ndarray, y: np.ndarray, n: int, what: str,
                   counts_hint: str) -> np.ndarray:
    """``n`` indices from ``idx`` (n//2 of class 0, the rest of class 1), without replacement."""
    want = {0: n // 2, 1: n - n // 2}
    out = []
    for cls, k in want.items():
        pool = idx[y[idx] == cls]
        if len(pool) < k:
            raise DataError(
                f"{what}: needs {k} images of class {cls} but has {len(pool)} ({counts_hint}); "
                "lower --n-real / --n-test / --n-synthetic or add images"
            )
        out.append(rng.permutation(pool)[:k])
    return np.concatenate(out)


def _head(idx: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """The first n//2 class-0 and n - n//2 class-1 entries of a balanced draw (the same split as above)."""
    return np.concatenate([idx[y[idx] == 0][: n // 2], idx[y[idx] == 1][: n - n // 2]])


#: the label columns that make a folder NIH-layout (patient ids, views), where named splits such as the cxr64
#: protocol's (``cxr64_splits``; an extractor's ``augmentation_splits``) can be drawn
_NIH_COLUMNS = {"patient_id", "view_position", "No Finding"}


def _split_mask(src: ImageSource, spec: str, flag: str) -> np.ndarray:
    """Images whose split is one of ``spec`` (comma-separated): a labels.csv ``split`` value, or ``cxr64-*``
    (the cxr64 protocol's patient split of the NIH thumbnails, computed from the labels)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UsageError(f"{flag} {spec!r}: name a split")
    mask = np.zeros(len(src), dtype=bool)
    cxr64 = plain = None
    for name in names:
        if name.startswith("cxr64-"):
            from .cxr64_splits import SPLITS, image_splits

            if name.removeprefix("cxr64-") not in SPLITS:
                raise UsageError(f"{flag} {name}: the cxr64 splits are {', '.join('cxr64-' + s for s in SPLITS)}")
            if src.labels is None or not _NIH_COLUMNS <= set(src.labels.columns):
                raise UsageError(f"{flag} {name}: {src.name} needs labels.csv columns {sorted(_NIH_COLUMNS)} "
                                 "(the NIH nih1000_64px layout) for the cxr64 patient split")
            if cxr64 is None:
                cxr64 = np.array(image_splits(src.labels))
            mask |= cxr64 == name.removeprefix("cxr64-")
        else:
            if src.labels is None or "split" not in src.labels.columns:
                raise UsageError(f"{src.name}: {flag} {name} needs a 'split' column in the real labels")
            if plain is None:
                plain = src.labels["split"].astype(str).to_numpy()
            if not (plain == name).any():
                raise UsageError(f"{src.name}: no images with split {name!r}; splits present: {sorted(set(plain))}")
            mask |= plain == name
    return mask


def _default_splits(cfg: AugmentConfig, src: ImageSource) -> AugmentConfig:
    """No split given, NIH-layout labels, and an extractor whose weights were trained on named splits
    (``augmentation_splits``: cxr64): train the probe on its training split, test on the splits it never saw."""
    from ..registry import EXTRACTORS

    splits = getattr(EXTRACTORS.get(cfg.extractor), "augmentation_splits", None)
    if (splits and cfg.test_split is None and cfg.train_split is None and src.labels is not None
            and _NIH_COLUMNS <= set(src.labels.columns)):
        train, test = splits
        return dataclasses.replace(cfg, test_split=test, train_split=train)
    return cfg


def _test_split(src: ImageSource, y: np.ndarray, cfg: AugmentConfig, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, training-pool indices): balanced test, patient-disjoint, no file copies across.

    Patients are visited in a seeded hash order, twice: first whole patients that fit the per-class quotas,
    then, for what is still missing, part of a patient's images (the rest of that patient leaves the training
    pool). Whole patients alone cannot always fill the quotas exactly (NIH's Effusion images come a dozen per
    patient), which made a 60-image draw fail with 170 Effusion images available.
    """
    usable = np.flatnonzero(y >= 0)
    candidates = usable
    in_test_split = np.zeros(len(src), dtype=bool)
    if cfg.test_split is not None:
        in_test_split = _split_mask(src, cfg.test_split, "--test-split")
        candidates = usable[in_test_split[usable]]
    patients = src.patient_ids or [f"img:{i}" for i in range(len(src))]
    groups: dict[str, list[int]] = {}
    for i in candidates:
        groups.setdefault(str(patients[i]), []).append(int(i))
    order = sorted(groups, key=lambda p: hashlib.sha256(f"{cfg.seed}:{p}".encode()).hexdigest())
    quota = {0: cfg.n_test // 2, 1: cfg.n_test - cfg.n_test // 2}
    taken: dict[str, list[int]] = {}
    for whole in (True, False):
        for p in order:
            if quota[0] == 0 and quota[1] == 0:
                break
            if p in taken:
                continue
            by_class = {c: [i for i in groups[p] if y[i] == c] for c in (0, 1)}
            if whole and any(len(by_class[c]) > quota[c] for c in (0, 1)):
                continue
            pick = {c: by_class[c][: quota[c]] for c in (0, 1)}
            if pick[0] or pick[1]:
                taken[p] = pick[0] + pick[1]
                for c in (0, 1):
                    quota[c] -= len(pick[c])
    if quota[0] or quota[1]:
        counts = {c: int((y[candidates] == c).sum()) for c in (0, 1)}
        raise DataError(
            f"{src.name}: cannot draw {cfg.n_test} balanced test images for {names[0]} vs {names[1]}; "
            f"{counts[1]} {names[0]} and {counts[0]} {names[1]} images available for the test set; lower --n-test"
        )
    test_arr = np.sort(np.array([i for imgs in taken.values() for i in imgs], dtype=np.int64))
    test_patients = set(taken)
    test_hashes = {src.hashes[i] for i in test_arr}
    in_train_split = np.ones(len(src), dtype=bool)
    if cfg.train_split is not None:
        in_train_split = _split_mask(src, cfg.train_split, "--train-split")
    pool = np.array([i for i in usable if str(patients[i]) not in test_patients and src.hashes[i] not in test_hashes
                     and not in_test_split[i] and in_train_split[i]], dtype=np.int64)
    return test_arr, pool


# --------------------------------------------------------------------------------------------- metrics

def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count 1/2); NaN when only one class is present."""
    y = np.asarray(y)
    n1 = int((y == 1).sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    # average ranks of tied scores (what scipy.stats.rankdata does, without its per-call overhead)
    _, inv, counts = np.unique(np.asarray(s), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def accuracy(y: np.ndarray, s: np.ndarray) -> float:
    return float(((s > 0.5).astype(np.int64) == y).mean())


STATS = {"auroc": auroc, "accuracy": accuracy}
#: how many resolution steps ``cxrbench verify`` lets a recomputed rank statistic move: a test pair whose two
#: scores tie to the last digits can order either way when the features come from another CPU's kernels
VERIFY_STEPS = 1


def resolution_fields(step: float) -> dict[str, float]:
    """``resolution`` (one test pair or image, averaged over seeds) and ``verify_atol`` (what verify allows)."""
    return {"resolution": step, "verify_atol": VERIFY_STEPS * step}
CI_METHOD = "percentile bootstrap over test images and training seeds"


def seed_and_test_ci(stat, n_test: int, n_seeds: int, *, n_boot: int, seed: int,
                     alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile CI of the mean over seeds of ``stat(test_idx, k)`` (seed k's statistic on those test images).

    Each replicate resamples the test images and, independently, the training seeds (both with replacement):
    the training draw varies as much as the test set (with the NIH Effusion pool a seed's gain moves by
    ~0.04 AUROC), and an interval over test images alone excluded 0 for copies of real training images.
    Paired statistics stay paired: one test resample and one seed index serve both modes.
    """
    if n_boot <= 0 or n_test < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n_test, size=n_test)
        ks = rng.integers(0, n_seeds, size=n_seeds) if n_seeds > 1 else np.zeros(1, dtype=np.int64)
        per = {int(k): stat(idx, int(k)) for k in np.unique(ks)}
        vals.append(float(np.mean([per[int(k)] for k in ks])))
    v = np.array(vals, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))


# --------------------------------------------------------------------------------------------- classifiers

class AugmentClassifier:
    """A classifier the protocol trains for every mode and seed; registered in ``registry.CLASSIFIERS``.

    ``inputs``: ``"features"`` (rows of the frozen extractor) or ``"images"`` (``image_size`` px squares);
    ``fit`` returns P(class 1) for each test input. ``uses_weights``: initialised from ``weights``, so random
    weights make the result incomparable.
    """

    inputs: ClassVar[str] = "images"
    image_size: ClassVar[int] = 64
    uses_weights: ClassVar[bool] = False

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        raise NotImplementedError


class LinearProbe(AugmentClassifier):
    """Logistic regression on standardised frozen features (``CLASSIFIERS["linear"]``)."""

    inputs = "features"

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(x_tr)
        # Newton steps to a gradient of 1e-8 (quadratic convergence puts the scores ~1e-11 from the optimum; at
        # 1e-12 the line search runs out of float precision and falls back to lbfgs): the L2-penalised loss has
        # one minimum, and reaching it makes the scores a function of the data alone. lbfgs stopped at its default
        # tol 1e-4, where the path (and so the CPU's BLAS kernel) decides the last digits, and one near-tied test
        # pair flipped an entry's AUROC on another CPU.
        clf = LogisticRegression(C=cfg.c, solver="newton-cholesky", tol=1e-8, max_iter=200, random_state=seed)
        clf.fit(scaler.transform(x_tr), y_tr)
        return clf.predict_proba(scaler.transform(x_te))[:, 1]


class SmallCNN(torch.nn.Module):
    """Four stride-2 conv blocks, global average pool, one logit: a from-scratch baseline at 64 px."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers, c = [], 1
        for k in (width, 2 * width, 4 * width, 4 * width):
            layers += [torch.nn.Conv2d(c, k, 3, stride=2, padding=1), torch.nn.BatchNorm2d(k), torch.nn.ReLU()]
            c = k
        self.body = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(c, 1)

    def forward(self, x):
        return self.head(self.body(x * 2 - 1)).squeeze(1)


class _XRVBinary(torch.nn.Module):
    """torchxrayvision DenseNet121 body (published weights when available) with a fresh one-logit head."""

    def __init__(self, weights: str, seed: int):
        super().__init__()
        from ..features.xrv import build_densenet

        self.net, self.weights_id, _ = build_densenet(weights, seed)
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(1024, 1)

    def forward(self, x):
        return self.head(self.net.features2(x * 2048.0 - 1024.0)).squeeze(1)


class TorchClassifier(AugmentClassifier):
    """A network trained from ``build`` with Adam and BCE; ``epochs`` / ``lr`` unless the config sets them."""

    epochs: ClassVar[int] = 15
    lr: ClassVar[float] = 1e-3

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, x_tr, y_tr, x_te, *, seed: int, cfg: AugmentConfig, device: str) -> np.ndarray:
        return _train_torch(self, x_tr, y_tr, x_te, seed=seed, cfg=cfg, device=device)


class CNNClassifier(TorchClassifier):
    """``CLASSIFIERS["cnn"]``: ``SmallCNN`` from scratch at 64 px."""

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        return SmallCNN()


class DenseNetClassifier(TorchClassifier):
    """``CLASSIFIERS["densenet"]``: torchxrayvision DenseNet121 fine-tuned at 224 px."""

    image_size = 224
    uses_weights = True
    epochs = 5
    lr = 1e-4

    def build(self, cfg: AugmentConfig, seed: int) -> torch.nn.Module:
        return _XRVBinary(cfg.weights, seed)


def _classifier(name: str) -> AugmentClassifier:
    if name not in CLASSIFIERS:
        raise UsageError(f"--classifier {name!r}: expected one of {', '.join(CLASSIFIERS.names())}")
    return CLASSIFIERS.get(name)()


def _fit_torch(x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, *, seed: int, cfg: AugmentConfig,
               device: str) -> np.ndarray:
    """``cfg.classifier`` (an image classifier) trained on ``x_tr`` and applied to ``x_te``."""
    return _classifier(cfg.classifier).fit(x_tr, y_tr, x_te, seed=seed, cfg=cfg, device=device)


def _train_torch(clf: TorchClassifier, x_tr: torch.Tensor, y_tr: np.ndarray, x_te: torch.Tensor, *, seed: int,
                 cfg: AugmentConfig, device: str) -> np.ndarray:
    from ..seeding import torch_generator

    epochs = cfg.epochs if cfg.epochs is not None else clf.epochs
    lr = cfg.lr if cfg.lr is not None else clf.lr
    torch.manual_seed(seed)
    model = clf.build(cfg, seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch_generator(seed)
    yt = torch.as_tensor(y_tr, dtype=torch.float32)
    bs = cfg.batch_size
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        for b in range(0, len(perm), bs):
            j = perm[b : b + bs]
            if len(j) < 2:  # BatchNorm cannot train on one image
                continue
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x_tr[j].to(device)), yt[j].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = [torch.sigmoid(model(x_te[b : b + 2 * bs].to(device))).cpu() for b in range(0, len(x_te), 2 * bs)]
    return torch.cat(out).numpy().astype(np.float64)


def _load_images(src: ImageSource, idx: np.ndarray, size: int, *, batch_size: int = 64,
                 workers: int = 0) -> torch.Tensor:
    """(len(idx), 1, size, size) float32 [0, 1]: center-cropped square, antialiased resize; decoded by the
    engine's one decode loop."""
    import torch.nn.functional as F

    from ..features.resize import center_crop_xrv

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


# --------------------------------------------------------------------------------------------- protocol

def augment(real, synthetic, *, config: AugmentConfig | None = None, real_labels: str | None = None,
            synthetic_labels: str | None = None, real_features: np.ndarray | None = None,
            synthetic_features: np.ndarray | None = None) -> AugmentOutcome:
    """Run the protocol; ``real`` / ``synthetic`` are folders, arrays or ``ImageSource``s.

    ``real_features`` / ``synthetic_features`` (rows in each source's canonical order) skip extraction for
    the linear probe, e.g. when the harness has already extracted them.
    """
    cfg = config or AugmentConfig()
    clf = _classifier(cfg.classifier)
    if cfg.seeds < 1 or cfg.n_real < 4 or cfg.n_test < 4 or (cfg.n_synthetic is not None and cfg.n_synthetic < 2):
        raise UsageError("--seeds must be >= 1, --n-real and --n-test >= 4, --n-synthetic >= 2")
    if cfg.seeds < 3:
        log.warning("augmentation: %d seed(s); the protocol asks for >= 3 to show seed-to-seed spread", cfg.seeds)
    pos, neg = parse_task(cfg.task)
    device = resolve_device(cfg.device)
    notes: list[str] = []

    real_src = open_source(real, role="real")
    syn_src = open_source(synthetic, role="synthetic")
    _attach_labels(real_src, real_labels, "real")
    _attach_labels(syn_src, synthetic_labels, "synthetic")
    if not _has_task_columns(real_src, pos, neg):
        have = [] if real_src.labels is None else [c for c in real_src.labels.columns if c in LABELS]
        raise DataError(f"{real_src.name}: the real images need labels for {pos!r} and {neg!r} (labels.csv in the "
                        f"folder or --real-labels CSV); label columns found: {have or 'none'}")
    y_real = binary_labels(real_src.label_matrix(), pos, neg)
    given = cfg
    cfg = _default_splits(cfg, real_src)
    if cfg is not given:
        notes.append(f"cxr64 extractor on NIH labels: real training images from {cfg.train_split}, test images "
                     f"from {cfg.test_split} (the cxr64 protocol's patient splits; neither seen by the generators "
                     "nor by the cxr64 network's weights)")

    ecfg = EvalConfig(extractors=(cfg.extractor,), weights=cfg.weights, weights_seed=cfg.weights_seed, device=device,
                      batch_size=cfg.batch_size, num_workers=cfg.num_workers, cache_dir=cfg.cache_dir,
                      use_cache=cfg.use_cache, progress=cfg.progress)
    cache = FeatureCache(cfg.cache_dir, enabled=cfg.use_cache)
    extractors: dict = {}
    specs: dict[str, dict] = {}

    def features(src, given, role):
        if given is not None:
            given = np.asarray(given, dtype=np.float32)
            if given.ndim != 2 or len(given) != len(src):
                raise UsageError(f"{role}_features: expected ({len(src)}, D) rows in {src.name}'s canonical order, "
                                 f"got shape {given.shape}")
            return given
        if not extractors:
            extractors.update(build_extractors([cfg.extractor], ecfg, device))
        f, bad = extract_features(src, extractors, ecfg, cache, device, desc=f"{role} features")
        if bad:
            raise DataError(f"{len(bad)} unreadable image(s) in {role} {src.name}: {bad[0][1]}; remove them")
        return f[cfg.extractor]

    # synthetic labels: manifest / labels table, else a label classifier: the probe extractor's own head when it
    # has one that predicts the task's labels (cxr64 -> cxr64-classifier, offline), else the XRV classifier
    if _has_task_columns(syn_src, pos, neg):
        y_syn = binary_labels(syn_src.label_matrix(), pos, neg)
        label_source = "manifest"
    else:
        base, head = _labeller(cfg.extractor, (pos, neg))
        lcfg = dataclasses.replace(ecfg, extractors=(base, head))
        lx = build_extractors([base, head], lcfg, device)
        f, bad = extract_features(syn_src, lx, lcfg, cache, device, desc=f"synthetic labels ({head})")
        if bad:
            raise DataError(f"{len(bad)} unreadable image(s) in synthetic {syn_src.name}: {bad[0][1]}; remove them")
        y_syn = _classifier_labels(f[head], lx[head].feature_names, pos, neg)
        label_source = head
        specs[head] = lx[head].spec()
        weights_note = " (RANDOM weights: these labels are meaningless)" if is_random_weights(cfg.weights) else ""
        notes.append(f"synthetic labels were not given (no {pos!r}/{neg!r} columns in a manifest.csv); they come "
                     f"from the {head} classifier (probability > 0.5 = present, No Finding = nothing present)"
                     f"{weights_note}")

    test, pool = _test_split(real_src, y_real, cfg, (pos, neg))
    n, k = cfg.n_real, cfg.n_synthetic if cfg.n_synthetic is not None else cfg.n_real
    syn_usable = np.flatnonzero(y_syn >= 0)
    hint_real = f"real pool after the test draw: {int((y_real[pool] == 1).sum())} {pos}, {int((y_real[pool] == 0).sum())} {neg}"
    hint_syn = f"synthetic: {int((y_syn == 1).sum())} {pos}, {int((y_syn == 0).sum())} {neg}, " \
               f"{int((y_syn < 0).sum())} neither/both (labels from {label_source})"

    # inputs of the classifier: frozen features, or images
    if clf.inputs == "features":
        x_real = features(real_src, real_features, "real")
        x_syn = features(syn_src, synthetic_features, "synthetic")
        if extractors:
            specs[cfg.extractor] = extractors[cfg.extractor].spec()
        else:
            specs[cfg.extractor] = {"name": cfg.extractor, "given": "features passed in by the caller"}
    else:
        size = cfg.image_size or clf.image_size
        x_real = torch.zeros(len(real_src), 1, size, size)
        x_syn = torch.zeros(len(syn_src), 1, size, size)
        # only decode images that can be used
        keep_real = np.union1d(test, pool)
        workers = default_workers(ecfg)
        x_real[keep_real] = _load_images(real_src, keep_real, size, batch_size=cfg.batch_size, workers=workers)
        x_syn[syn_usable] = _load_images(syn_src, syn_usable, size, batch_size=cfg.batch_size, workers=workers)

    def cat(a, b):
        return np.concatenate([a, b]) if isinstance(a, np.ndarray) else torch.cat([a, b])

    y_test = y_real[test]
    x_test = x_real[test]
    scores: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    sizes: dict[str, dict] = {}
    import sys

    from tqdm.auto import tqdm

    for s in tqdm(range(cfg.seeds), desc="augmentation seeds", disable=not cfg.progress, file=sys.stderr, leave=False):
        seed = cfg.seed + 1 + s
        rng = np.random.default_rng(seed)
        r = _take_balanced(rng, pool, y_real, n, f"{real_src.name} (real training pool)", hint_real)
        syn_n = _take_balanced(rng, syn_usable, y_syn, max(n, k), f"{syn_src.name} (synthetic)", hint_syn)
        # nested draws: mixed's halves come from the same real / synthetic draws, augmented adds K of the
        # synthetic draw to exactly the `real` set
        half_r, half_s = _head(r, y_real, n // 2), _head(syn_n, y_syn, n - n // 2)
        syn_k, syn_only = _head(syn_n, y_syn, k), _head(syn_n, y_syn, n)
        train = {
            "real": (r, np.array([], dtype=np.int64)),
            "mixed": (half_r, half_s),
            "augmented": (r, syn_k),
            "synthetic": (np.array([], dtype=np.int64), syn_only),
        }
        for m, (ri, si) in train.items():
            x_tr = cat(x_real[ri], x_syn[si])
            y_tr = np.concatenate([y_real[ri], y_syn[si]])
            scores[m].append(clf.fit(x_tr, y_tr, x_test, seed=seed, cfg=cfg, device=device))
            sizes[m] = {"n_real": len(ri), "n_synthetic": len(si)}

    metrics: dict[str, MetricValue] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    nt = len(test)
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

    details = {
        "task": {"positive": pos, "negative": neg, "string": cfg.task},
        "classifier": cfg.classifier,
        "synthetic_label_source": label_source,
        "n_test": nt, "test_class_counts": {pos: int((y_test == 1).sum()), neg: int((y_test == 0).sum())},
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
    cache_info = {"dir": str(cache.root) if cache.enabled else None, "hits": cache.hits, "misses": cache.misses}
    return AugmentOutcome(metrics=metrics, details=details, notes=notes, extractors=specs, real=real_src,
                          synthetic=syn_src, device=device, cache=cache_info)


def run_augmentation(real, synthetic, *, task: str, config: AugmentConfig | None = None, **kwargs) -> dict[str, MetricValue]:
    """The ``aug_*`` metrics for the harness (``cxrbench evaluate --protocol augmentation``).

    ``kwargs`` go to :func:`augment` (``real_labels``, ``synthetic_labels``, ``real_features``,
    ``synthetic_features``). Notes (e.g. labels from the XRV classifier) are emitted as warnings, which the
    harness records in the result.
    """
    import warnings

    cfg = dataclasses.replace(config or AugmentConfig(), task=task)
    out = augment(real, synthetic, config=cfg, **kwargs)
    for note in out.notes:
        warnings.warn(f"augmentation: {note}", UserWarning, stacklevel=2)
    return out.metrics


class AugmentationProtocol(Protocol):
    """Registry entry ``PROTOCOLS["augmentation"]``: metadata plus :func:`run_augmentation`."""

    name = PROTOCOL_NAME
    version = PROTOCOL_VERSION
    adds_metrics = True
    outputs = OUTPUTS
    Config = AugmentConfig

    def run(self, real, synthetic, *, task: str, config: AugmentConfig | None = None, **kwargs):
        return run_augmentation(real, synthetic, task=task, config=config, **kwargs)

    def after_metrics(self, ctx, sources: dict[str, ImageSource]) -> dict[str, MetricValue]:
        """The harness's hook (``evaluate --protocol augmentation``): the reference is the real set, the samples
        the synthetic one; the linear probe reuses the harness's features of the first embedding extractor."""
        config = ctx.config
        if not config.augment_task:
            raise UsageError("--protocol augmentation needs --augment-task 'A vs B' (labels come from the reference)")
        emb = next((e for e in config.extractors if ctx.extractors[e].get("kind") == FeatureKind.EMBEDDING), None)
        if emb is None:
            raise UsageError("--protocol augmentation needs an embedding extractor (e.g. xrv) in --extractors")
        return self.run(sources["reference"], sources["samples"], task=config.augment_task,
                        config=AugmentConfig.from_eval(config, extractor=emb, device=ctx.device),
                        real_features=ctx.ref.features[emb], synthetic_features=ctx.gen.features[emb])


def figure(outcome: AugmentOutcome, path) -> None:
    """Per-mode AUROC and accuracy: one dot per seed, mean with the bootstrap 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, stat in zip(axes, ("auroc", "accuracy")):
        for j, m in enumerate(MODES):
            mv = outcome.metrics[f"aug_{m}_{stat}"]
            seeds = mv.extra["per_seed"]
            ax.scatter(np.full(len(seeds), j) + np.linspace(-0.12, 0.12, len(seeds)), seeds, s=14, alpha=0.6,
                       color="tab:gray", zorder=2)
            lo, hi = mv.ci if mv.ci else (mv.value, mv.value)
            ax.errorbar([j], [mv.value], yerr=[[mv.value - lo], [hi - mv.value]], fmt="o", color="tab:blue",
                        capsize=4, zorder=3)
        ax.axhline(outcome.metrics[f"aug_real_{stat}"].value, color="tab:blue", lw=0.8, ls="--")
        ax.set_xticks(range(len(MODES)), MODES)
        ax.set_ylabel(stat.upper() if stat == "auroc" else stat)
        g = outcome.metrics[f"aug_gain_{stat}"]
        ci = f" [{g.ci[0]:+.3f}, {g.ci[1]:+.3f}]" if g.ci else ""
        ax.set_title(f"gain (augmented - real) {g.value:+.3f}{ci}", fontsize=9)
    t = outcome.details["task"]
    fig.suptitle(f"{t['positive']} vs {t['negative']}: {outcome.details['classifier']} classifier, "
                 f"{len(outcome.metrics['aug_real_auroc'].extra['per_seed'])} seeds, "
                 f"{outcome.details['n_test']} real test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
