"""The augmentation protocol's name, version, output keys, its knobs (``AugmentConfig``) and what a run
returns (``AugmentOutcome``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import config_default
from ...data.imageset import ImageSource
from ...metrics.base import MetricValue

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


def _shared(name: str):
    """``EvalConfig``'s default for a knob both configs hold (``augment.n_real`` for the protocol's own, nested in
    it): one source of defaults, so ``cxrbench augment`` and ``cxrbench evaluate --protocol augmentation`` cannot
    drift apart."""
    return config_default(name)


@dataclass
class AugmentConfig:
    """Every knob of the protocol; ``cxrbench augment`` flags mirror these fields."""

    # the standalone command's task when none is given (the board's); under ``evaluate --protocol augmentation`` the
    # task comes from ``EvalConfig.augment.task``, which has none: the labels are the user's reference's
    task: str = "Edema vs No Finding"
    n_real: int = _shared("augment.n_real")
    n_test: int = _shared("augment.n_test")
    n_synthetic: int | None = None  # K added in `augmented`; None: K = n_real
    seeds: int = _shared("augment.seeds")
    seed: int = _shared("seed")  # test-set draw and bootstrap; training seeds are seed+1 .. seed+seeds
    # test / training images only from these splits (comma-separated labels.csv `split` values, cxr64-* or cxr128-*);
    # None with --extractor cxr64 on NIH labels: cxr64-heldout,cxr64-reference / cxr64-train
    test_split: str | None = None
    train_split: str | None = None
    classifier: str = "linear"
    extractor: str = "xrv"  # frozen features for `linear`
    weights: str = _shared("weights")  # auto | random | a folder of weights files (extractor, and densenet init)
    weights_seed: int = _shared("weights_seed")
    device: str = _shared("device")
    batch_size: int = _shared("batch_size")
    num_workers: int | None = _shared("num_workers")
    cache_dir: str | None = _shared("cache_dir")
    use_cache: bool = _shared("use_cache")
    n_bootstrap: int = _shared("n_bootstrap")
    c: float = 1.0  # inverse L2 strength of the linear probe (features are standardised first)
    epochs: int | None = None  # cnn / densenet; None: 15 (cnn), 5 (densenet)
    lr: float | None = None  # None: 1e-3 (cnn), 1e-4 (densenet)
    image_size: int | None = None  # None: 64 (cnn), 224 (densenet)
    progress: bool = _shared("progress")

    @classmethod
    def from_eval(cls, config, *, extractor: str, device: str) -> AugmentConfig:
        """The protocol's knobs under ``cxrbench evaluate --protocol augmentation``: an ``EvalConfig``'s nested
        ``augment`` settings and the settings the evaluation shares (weights, cache, bootstrap, ...)."""
        aug = config.augment
        return cls(
            task=aug.task, n_real=aug.n_real, n_test=aug.n_test, seeds=aug.seeds, seed=config.seed, extractor=extractor, weights=config.weights,
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
