"""``EvalConfig``: every knob of an evaluation, with the defaults the CLI flags show, and device resolution.

The metric suite's knobs (``MetricSettings``) and the augmentation protocol's (``AugmentSettings``) are nested in
it, so every default has this one file as its source: the CLI flags, the functional API, ``AugmentConfig`` and
the metrics all read them from here.

The bottom layer of the evaluation: imported by the harness, the feature pass, protocols and the commands,
and importing none of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import UsageError

DEFAULT_EXTRACTORS = ("inception", "xrv", "xrv-classifier", "pixels")
#: what ``evaluate`` runs when given no reference (its reference, network and metrics ship with cxrbench)
DEFAULT_PROTOCOL = "cxr128"
PRECISIONS = ("fp32", "tf32", "bf16")
#: ``protocol`` of an evaluation against the user's own reference, under no registered protocol (the value
#: results record as the protocol name)
OWN_REFERENCE = "default"


def _flag(help: str, **cli) -> dict:
    """Metadata of a field that is a ``cxrbench evaluate`` flag (``commands/options.add_config_flags`` makes it):
    its help text, and where needed ``flag`` (a name other than ``--field-name``; a switch that turns a True
    default off), ``choices``, or ``cli_default=None`` (resolved from the other flags; the help says how)."""
    return {"help": help, **cli}


#: the evaluation's seed and bootstrap replicates (coverage measured at 200: tests/benchmarks/coverage.py); the
#: metric suite's are always these two (``MetricSettings.from_config``)
SEED = 0
N_BOOTSTRAP = 200


@dataclass(frozen=True)
class MetricSettings:
    """The metric suite's knobs, nested in ``EvalConfig`` as ``metric_settings``.

    ``seed`` and ``n_bootstrap`` are the evaluation's (``EvalConfig.seed`` / ``n_bootstrap``, ``--seed`` /
    ``--n-bootstrap``): ``EvalConfig`` copies them in, and ``from_config`` reads them from the run's config. The
    rest are set by ``--metric-setting KEY=VALUE`` on the CLI or ``metric_settings={"prdc_k": 3}`` in the API
    (a dict of overrides, checked and typed by ``check_overrides``); results record only those overrides.
    """

    seed: int = SEED
    n_bootstrap: int = N_BOOTSTRAP
    alpha: float = 0.05
    #: KID: subsets of min(kid_subset_size, N_gen, N_ref) rows, kid_subsets of them
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    #: subsets whose kernel blocks the bootstrap reweights (4 MB each at subset size 1000)
    kid_boot_subsets: int = 100
    #: FD_inf: FD at fd_inf_points subset sizes from fd_inf_min_fraction * N to N, fit against 1/N
    fd_inf_points: int = 15
    fd_inf_min_fraction: float = 0.2
    #: each FD_inf replicate costs fd_inf_points eigen-decompositions, so it gets fewer replicates
    fd_inf_n_bootstrap: int = 50
    #: PRDC neighbourhood size (Naeem et al.)
    prdc_k: int = 5
    #: candidate balls kept per reference point for the exact-to-e^-K recall/coverage bootstrap
    prdc_boot_candidates: int = 32
    #: memorization: percentile of held-out-real-to-train distances used as the "too close" threshold
    memorization_percentile: float = 5.0
    #: Benjamini-Hochberg false discovery rate for the KS batteries
    ks_q: float = 0.05
    #: MS-SSIM: random pairs per set and the common side length images are resized to
    #: (500 pairs at 192 px cost about a fifth of the CPU time of 1000 pairs at 256 px)
    ms_ssim_pairs: int = 500
    ms_ssim_size: int = 192
    #: re-identification: the verification network ("cxrbench": the shipped one; "random"; or a state dict file of
    #: the published Siamese ResNet-50), how its inputs are made for a published file ("chexgenbench": 224 px, no
    #: normalisation; "packhaeuser": 256 px, ImageNet normalisation), and the same-patient decision threshold
    reid_weights: str = "cxrbench"
    reid_preprocessing: str = "chexgenbench"
    reid_threshold: float = 0.5
    #: largest query x reference distance block for kNN, in elements
    knn_budget: int = 2**24

    #: the settings that are the evaluation's, set through ``EvalConfig``'s fields of the same names
    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ("seed", "n_bootstrap")

    @classmethod
    def from_config(cls, config) -> MetricSettings:
        """The settings a run uses: ``config.metric_settings`` with the run's ``seed`` and ``n_bootstrap``
        (read from the config itself, so a field changed after construction still reaches the metrics)."""
        if isinstance(config, cls):
            return config
        if config is None:
            return cls()
        return dataclasses.replace(config.metric_settings, seed=config.seed, n_bootstrap=config.n_bootstrap)

    @classmethod
    def check_overrides(cls, overrides: dict) -> dict:
        """Overrides typed as the fields' defaults; an unknown key, a wrong type or one of the evaluation's own
        settings is one clear error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for key, value in overrides.items():
            if key in cls.EVAL_FIELDS:
                raise UsageError(f"metric setting {key} is the evaluation's: set it with --{key.replace('_', '-')} "
                                 f"(EvalConfig.{key})")
            if key not in fields:
                raise UsageError(f"metric setting {key!r} does not exist; settings: {', '.join(sorted(fields))}")
            default = fields[key].default
            try:
                if isinstance(value, bool) or (isinstance(value, str) and type(default) is not str):
                    raise ValueError
                out[key] = float(value) if type(default) is float else int(value) if type(default) is int else value
                if type(default) is int and out[key] != value:
                    raise ValueError
            except (TypeError, ValueError):
                raise UsageError(f"metric setting {key} = {value!r}: expected a {type(default).__name__} "
                                 f"(default {default!r})") from None
        return out

    def overrides(self) -> dict:
        """The settings that differ from their defaults (the evaluation's own two left out): what a result
        records, and what makes a result under a protocol not comparable."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in self.EVAL_FIELDS and getattr(self, f.name) != f.default}


@dataclass(frozen=True)
class AugmentSettings:
    """The augmentation protocol's own knobs, nested in ``EvalConfig`` as ``augment`` (``cxrbench evaluate
    --augment-task ...``); ``AugmentConfig`` reads its defaults from here."""

    task: str | None = field(default=None, metadata=_flag(
        'protocol augmentation: "A vs B", e.g. "Pneumonia vs No Finding"'))
    n_real: int = field(default=1000, metadata=_flag("protocol augmentation: N real training images"))
    n_test: int = field(default=300, metadata=_flag("protocol augmentation: held-out real test images"))
    seeds: int = field(default=3, metadata=_flag("protocol augmentation: training seeds (use >= 3)"))


#: nested settings that are flags of their own, under this prefix (``augment.n_real`` is ``--augment-n-real``)
NESTED_FLAGS = {"augment": "augment_"}


@dataclass
class EvalConfig:
    """Every knob of an evaluation, each with its one default; ``cxrbench evaluate``'s flags are made from the
    fields (help text in their metadata), and the resolved copy goes in results."""

    extractors: tuple[str, ...] = field(default=DEFAULT_EXTRACTORS, metadata=_flag(
        "comma-separated; a protocol fixes its own", cli_default=None))
    metrics: tuple[str, ...] | None = field(default=None, metadata=_flag(
        "comma-separated; default: every metric whose inputs exist"))
    weights: str = field(default="auto", metadata=_flag(
        "auto (published weights) | random (offline smoke test, not comparable) | a folder holding the weights files"))
    weights_seed: int = 0
    device: str = field(default="auto", metadata=_flag("auto | cpu | cuda | cuda:N | mps"))
    batch_size: int = field(default=32, metadata=_flag("images per forward pass"))
    num_workers: int | None = field(default=None, metadata=_flag(
        "image decoding processes (default min(4, CPUs); 0 decodes in the main process)"))
    chunk_size: int = field(default=512, metadata=_flag(
        "images per cached feature chunk: an interrupted run redoes at most one chunk per set"))
    seed: int = field(default=SEED, metadata=_flag("seed for bootstrap, splits and subsets"))
    n_bootstrap: int = field(default=N_BOOTSTRAP, metadata=_flag("bootstrap replicates for CIs"))
    cache_dir: str | None = field(default=None, metadata=_flag(
        "feature cache (default $CXRBENCH_CACHE or ~/.cache/cxrbench)"))
    use_cache: bool = field(default=True, metadata=_flag(
        "neither read nor write the feature cache", flag="--no-cache"))
    samples_split: str | None = field(default=None, metadata=_flag(
        "half0 | half1 | a value of labels.csv's split column"))
    reference_split: str | None = field(default=None, metadata=_flag(
        "half0 | half1 | a labels.csv split | nih-cxr14: test, train_val | chexpert: train, valid | hash-train, "
        "hash-valid, hash-test"))
    train_reference: str | None = field(default=None, metadata=_flag(
        "the generator's training images (for memorization and re-identification)"))
    moco_checkpoint: str | None = field(default=None, metadata=_flag(
        "folder saved by `cxrbench train moco` (extractor moco)"))
    skip_bad: bool = field(default=False, metadata=_flag("evaluate without unreadable images (listed in result)"))
    protocol: str = field(default=OWN_REFERENCE, metadata=_flag(
        "cxr128 (embedded, comparable offline; the default without --reference) | cxr64 (retired: its network "
        "ranks blobs above chests) | augmentation (downstream classifier gain) | chexgenbench (CheXGenBench's "
        "RadDino FID/KID/PRDC, torchmetrics, against your --reference) | default (your own --reference)",
        cli_default=None))
    #: the augmentation protocol's knobs; flags --augment-task, --augment-n-real, --augment-n-test, --augment-seeds
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    progress: bool = field(default=True, metadata=_flag("no progress bars", flag="--quiet"))
    #: extractor forward only; published numbers are fp32
    precision: str = field(default="fp32", metadata=_flag(
        "extractor forward precision; anything but fp32 marks the result not comparable", choices=PRECISIONS))
    #: BatchNorm folded into convs + channels_last (features move ~1e-6 relative)
    fast_kernels: bool = field(default=True, metadata=_flag(
        "run the networks as published (no BatchNorm folding, no channels_last): ~1.5x slower on CPU, features "
        "differ from the default by ~1e-6 relative", flag="--plain-kernels"))
    #: opt-in: on 2 CPU cores it compiles for 1-2 min and is not faster; meant for GPUs. Recorded in the
    #: extractor spec ("kernels": "...,compiled"), so it keys the cache
    compile: bool = field(default=False, metadata=_flag(
        "torch.compile every network (features within ~1e-6 relative; recorded in the spec). For GPUs: on CPU it "
        "compiles for minutes and was not faster"))
    xrv_resize: str = field(default="xrv", metadata=_flag(
        "xrv extractors' resize: xrv (torchxrayvision's XRayResizer) or torch-antialias (torch bilinear-antialias)",
        choices=("xrv", "torch-antialias")))
    inception_resize: str = field(default="tf1", metadata=_flag(
        "inception's resize: tf1 (torch-fidelity) or clean (clean-fid's PIL bicubic)", choices=("tf1", "clean")))
    raddino_resize: str = field(default="processor", metadata=_flag(
        "raddino's preprocessing: processor (its image processor) or chexgenbench (CheXGenBench's 8-bit PIL squash "
        "to 299 px first; set by --protocol chexgenbench)", choices=("processor", "chexgenbench")))
    #: the metric suite's knobs (kid_subset_size, prdc_k, ...); a dict of overrides is accepted and checked. CLI
    #: ``--metric-setting KEY=VALUE``; under a protocol an override makes the result not comparable
    metric_settings: MetricSettings = field(default_factory=MetricSettings)

    def __post_init__(self):
        if isinstance(self.augment, dict):
            names = [f.name for f in dataclasses.fields(AugmentSettings)]
            unknown = sorted(set(self.augment) - set(names))
            if unknown:
                raise UsageError(f"augment: unknown setting(s) {', '.join(unknown)}; settings: {', '.join(names)}")
            self.augment = AugmentSettings(**self.augment)
        ms = self.metric_settings
        if ms is None or isinstance(ms, dict):
            # ``asdict`` of a config carries the evaluation's own two: taken when they are this config's values,
            # refused (by check_overrides, naming the flag to use) when they would differ
            ms = MetricSettings(**MetricSettings.check_overrides(
                {k: v for k, v in (ms or {}).items() if getattr(self, k, object()) != v
                 or k not in MetricSettings.EVAL_FIELDS}))
        elif not isinstance(ms, MetricSettings):
            raise UsageError(f"metric_settings must be a dict or a MetricSettings, got {type(ms).__name__}")
        self.metric_settings = dataclasses.replace(ms, seed=self.seed, n_bootstrap=self.n_bootstrap)

    def __setattr__(self, name, value):
        # the nested settings hold a copy of the evaluation's seed and n_bootstrap: a field set after construction
        # updates it too, so no copy is ever stale
        object.__setattr__(self, name, value)
        if name in MetricSettings.EVAL_FIELDS and isinstance(self.__dict__.get("metric_settings"), MetricSettings):
            object.__setattr__(self, "metric_settings", dataclasses.replace(self.metric_settings, **{name: value}))

    def record(self) -> dict:
        """The config as results store it: the ``cxrbench.result/1`` layout, one key per knob, the augmentation
        settings as ``augment_<name>`` and ``metric_settings`` as its overrides only (so a nested default added
        later does not change old records)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in NESTED_FLAGS:
                out.update({NESTED_FLAGS[f.name] + k: v for k, v in dataclasses.asdict(value).items()})
            elif f.name == "metric_settings":
                out[f.name] = value.overrides()
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_record(cls, record: dict) -> EvalConfig:
        """The inverse of ``record``: the flat ``augment_<name>`` keys nested again."""
        kw = dict(record)
        for name, prefix in NESTED_FLAGS.items():
            sub = {f.name: kw.pop(prefix + f.name) for f in dataclasses.fields(cls.__dataclass_fields__[name]
                                                                                 .default_factory())
                   if prefix + f.name in kw}
            kw[name] = sub
        return cls(**kw)

    @property
    def under_protocol(self) -> bool:
        return self.protocol != OWN_REFERENCE

    def resolved(self, **over) -> EvalConfig:
        return dataclasses.replace(self, **over)


def config_field(name: str) -> dataclasses.Field:
    """The field of ``EvalConfig.<name>``, or of a nested setting by its dotted name (``augment.n_real``):
    its default and its CLI metadata (help text, flag name)."""
    head, _, rest = name.partition(".")
    fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    if head not in fields:
        raise KeyError(f"EvalConfig has no field {head!r}")
    if not rest:
        return fields[head]
    nested = fields[head].default_factory
    inner = {g.name: g for g in dataclasses.fields(nested)} if dataclasses.is_dataclass(nested) else {}
    if rest not in inner:
        raise KeyError(f"EvalConfig has no setting {name!r}")
    return inner[rest]


def config_default(name: str):
    """The default of ``EvalConfig.<name>``, or of a nested setting by its dotted name (``augment.n_real``,
    ``metric_settings.prdc_k``), read from the field, so a changed default reaches every reader."""
    f = config_field(name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def resolve_device(device: str) -> str:
    import torch  # here, so that reading the defaults (CLI --help) does not import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device auto or cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")
    return device
