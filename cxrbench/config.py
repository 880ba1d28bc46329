"""``EvalConfig``: every knob of an evaluation, with the defaults the CLI flags show, and device resolution.

The bottom layer of the evaluation: imported by the harness, the feature pass, protocols and the commands,
and importing none of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
    seed: int = field(default=0, metadata=_flag("seed for bootstrap, splits and subsets"))
    #: coverage measured at 200 replicates (tests/benchmarks/coverage.py)
    n_bootstrap: int = field(default=200, metadata=_flag("bootstrap replicates for CIs"))
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
    augment_task: str | None = field(default=None, metadata=_flag(
        'protocol augmentation: "A vs B", e.g. "Pneumonia vs No Finding"'))
    augment_n_real: int = field(default=1000, metadata=_flag("protocol augmentation: N real training images"))
    augment_n_test: int = field(default=300, metadata=_flag("protocol augmentation: held-out real test images"))
    augment_seeds: int = field(default=3, metadata=_flag("protocol augmentation: training seeds (use >= 3)"))
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
    #: overrides of ``cxrbench.metrics.common.MetricSettings`` fields (kid_subset_size, prdc_k, ...);
    #: CLI ``--metric-setting KEY=VALUE``; under a protocol they make the result not comparable
    metric_settings: dict = field(default_factory=dict)

    @property
    def under_protocol(self) -> bool:
        return self.protocol != OWN_REFERENCE

    def resolved(self, **over) -> EvalConfig:
        return dataclasses.replace(self, **over)


def config_default(name: str):
    """The default of ``EvalConfig.<name>`` (read from the field, so a changed default reaches every reader)."""
    fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    if name not in fields:
        raise KeyError(f"EvalConfig has no field {name!r}")
    f = fields[name]
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
