"""``EvalConfig``: every knob of an evaluation, with the defaults the CLI flags show, and device resolution.

The bottom layer of the evaluation: imported by the harness, the feature pass, protocols and the commands,
and importing none of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UsageError

DEFAULT_EXTRACTORS = ("inception", "xrv", "xrv-classifier", "pixels")
#: what ``evaluate`` runs when given no reference (its reference, network and metrics ship with cxrbench)
DEFAULT_PROTOCOL = "cxr128"
PRECISIONS = ("fp32", "tf32", "bf16")
#: ``protocol`` of an evaluation against the user's own reference, under no registered protocol (the value
#: results record as the protocol name)
OWN_REFERENCE = "default"


@dataclass
class EvalConfig:
    """Every knob of an evaluation; the CLI flags mirror these fields and the resolved copy goes in results."""

    extractors: tuple[str, ...] = DEFAULT_EXTRACTORS
    metrics: tuple[str, ...] | None = None  # None: every registered metric whose inputs are available
    weights: str = "auto"  # auto | random | a folder of weights files
    weights_seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    num_workers: int | None = None  # None: min(4, CPU count); 0 decodes in the main process
    chunk_size: int = 512
    seed: int = 0
    n_bootstrap: int = 200  # replicates for 95% CIs; coverage measured at 200 (tests/benchmarks/coverage.py)
    cache_dir: str | None = None
    use_cache: bool = True
    samples_split: str | None = None
    reference_split: str | None = None
    train_reference: str | None = None
    moco_checkpoint: str | None = None
    skip_bad: bool = False
    protocol: str = OWN_REFERENCE  # OWN_REFERENCE, or a registered protocol ("cxr64", "augmentation")
    augment_task: str | None = None  # protocol augmentation: "A vs B"; labels come from the reference
    augment_n_real: int = 1000
    augment_n_test: int = 300
    augment_seeds: int = 3
    progress: bool = True
    precision: str = "fp32"  # fp32 | tf32 | bf16 (extractor forward only; published numbers are fp32)
    fast_kernels: bool = True  # BatchNorm folded into convs + channels_last (features move ~1e-6 relative)
    #: torch.compile each network's forward (opt-in: on 2 CPU cores it compiles for 1-2 min and is not faster;
    #: meant for GPUs); recorded in the extractor spec ("kernels": "...,compiled"), so it keys the cache
    compile: bool = False
    xrv_resize: str = "xrv"  # xrv (torchxrayvision's XRayResizer) | torch-antialias
    inception_resize: str = "tf1"  # tf1 (torch-fidelity / TF1 FID) | clean (clean-fid's PIL bicubic)
    #: processor (RadDino's image processor) | chexgenbench (CheXGenBench's 299 px PIL squash first)
    raddino_resize: str = "processor"
    #: overrides of ``cxrbench.metrics.common.MetricSettings`` fields (kid_subset_size, prdc_k, ...);
    #: CLI ``--metric-setting KEY=VALUE``; under a protocol they make the result not comparable
    metric_settings: dict = dataclasses.field(default_factory=dict)

    @property
    def under_protocol(self) -> bool:
        return self.protocol != OWN_REFERENCE

    def resolved(self, **over) -> EvalConfig:
        return dataclasses.replace(self, **over)


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
