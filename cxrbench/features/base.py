"""Feature extractor interface.

An extractor takes the image contract (float32 ``(N, 1, H, W)`` in ``[0, 1]``) and returns ``(N, D)``
features. ``preprocess`` is the only place where size, channels and range change; ``resize_filter`` names
the filter it uses, and ``spec()`` (which keys the feature cache and goes into every result) records it.
Extractors are eval-only: ``train(True)`` is refused, as torchmetrics' NoTrainInceptionV3 does.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class FeatureKind(StrEnum):
    """What an extractor's features are, and so which metrics apply (a ``str``: specs and results hold the value)."""

    EMBEDDING = "embedding"  # FID, KID, PRDC, memorization, KS over features
    PROBABILITIES = "probabilities"  # label metrics
    STATISTICS = "statistics"  # pixel-intensity KS


#: ``--weights random`` and the weights id prefix (``random:<seed>``) of seeded random initialisation
RANDOM_WEIGHTS = "random"


def is_random_weights(weights) -> bool:
    """Whether a weights setting or a weights id (``random:<seed>``) means seeded random initialisation."""
    return str(weights).split(":")[0] == RANDOM_WEIGHTS


class FeatureExtractor(nn.Module):
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    kind: ClassVar[FeatureKind] = FeatureKind.EMBEDDING
    num_features: int = 0
    input_size: int = 0
    resize_filter: str = "none"
    #: sha256 of the published weights file(s), or a hex prefix of it (as torch.hub file names carry); a
    #: result is comparable with published numbers only when every extractor's weights match its own pins.
    #: Empty: the extractor has no published weights (only weightless extractors, weights "none", pass).
    published_sha256: ClassVar[tuple[str, ...]] = ()
    #: constructor keyword -> EvalConfig field the harness passes it from (e.g. {"resize": "xrv_resize"})
    config_kwargs: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.weights_id = "none"
        #: optional name of each output dimension (pathologies, statistics); None means "dim_<i>"
        self.feature_names: list[str] | None = None
        #: set by ``prepare_inference``: the inference rewrites applied (features move by ~1e-6 relative)
        self.inference_kernels: str | None = None

    @staticmethod
    def weights_from_config(config) -> str:
        """The weights this extractor loads under ``config``: ``--weights``, unless an extractor whose weights come
        from elsewhere says so itself (moco: ``--moco-checkpoint``)."""
        return config.weights

    # --- to implement -------------------------------------------------------------------------------

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    # --- provided -------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"feature extractor {self.name!r} is eval-only")
        return super().train(False)

    @torch.no_grad()
    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """Image contract in, float32 features out (on the extractor's device)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.name}: expected (N, 1, H, W) images, got {tuple(x.shape)}")
        device = next((p.device for p in self.parameters()), x.device)
        return self.forward(self.preprocess(x.to(device, torch.float32))).float()

    def fold_batchnorm(self) -> int:
        """Fold every BatchNorm that directly follows a Conv2d into the conv; returns how many were folded.

        Generic over ``nn.Sequential`` containers (conv then norm as consecutive children); extractors whose
        conv/norm pairs live in custom blocks override this.
        """
        return fold_sequential_batchnorm(self)

    @torch.no_grad()
    def prepare_inference(self) -> FeatureExtractor:
        """Rewrite the network for fast evaluation: BatchNorm folded into convolutions and channels_last.

        On CPU this makes Inception-v3 ~1.7x and DenseNet121 ~1.2x faster (oneDNN's NHWC kernels); the
        features move by ~1e-6 relative, so the rewrite is part of ``spec()`` and keys the cache.
        """
        if self.inference_kernels is not None or next(iter(self.parameters()), None) is None:
            return self
        folded = self.fold_batchnorm()
        has_conv = any(isinstance(m, nn.Conv2d) for m in self.modules())
        if has_conv:
            self.to(memory_format=torch.channels_last)
        kernels = [f"bn-folded:{folded}"] if folded else []
        kernels += ["channels_last"] if has_conv else []
        self.inference_kernels = ",".join(kernels) or "plain"
        return self

    def compile_forward(self) -> FeatureExtractor:
        """``torch.compile`` the network's forward (inference only, static shapes per input size); recorded as
        ``compiled`` in ``inference_kernels``, so compiled features get their own cache entries."""
        if next(iter(self.parameters()), None) is None or "compiled" in (self.inference_kernels or ""):
            return self
        self.forward = torch.compile(self.forward, dynamic=False)  # instance attribute: __call__ and run_extractor use it
        self.inference_kernels = f"{self.inference_kernels or 'plain'},compiled"
        return self

    def spec(self) -> dict:
        """Everything that determines the features: keys the cache, recorded in results."""
        spec = {
            "name": self.name,
            "version": self.version,
            "weights": self.weights_id,
            "num_features": int(self.num_features),
            "input_size": int(self.input_size),
            "resize_filter": self.resize_filter,
            "kind": self.kind,
        }
        if self.inference_kernels is not None:
            spec["kernels"] = self.inference_kernels
        return spec

    @classmethod
    def weights_problem(cls, weights_id: str) -> str | None:
        """None when ``weights_id`` (a sha256, ``random:<seed>``, ``none``) is a published file of this
        extractor, or it has nothing learned; else why results made with it are not comparable."""
        w = str(weights_id)
        if w == "none":
            return None
        if is_random_weights(w):
            return f"{cls.name}: {w} weights"
        if len(w) == 64 and any(w.startswith(p) for p in cls.published_sha256):
            return None
        if not cls.published_sha256:
            return f"{cls.name}: weights {w[:16]} (no published weights to compare with)"
        pins = " or ".join(p[:16] for p in cls.published_sha256)
        return f"{cls.name}: weights sha256 {w[:16]}... is not the published file (sha256 {pins}...)"

    def unpublished_weights(self) -> str | None:
        """``weights_problem`` of the weights this instance loaded (None: published, results comparable)."""
        return self.weights_problem(self.weights_id)

    def dimension_names(self) -> list[str]:
        return self.feature_names or [f"dim_{i}" for i in range(self.num_features)]


def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A Conv2d equal to ``bn(conv(x))`` in eval mode (running statistics folded into weight and bias)."""

    fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
    fused.requires_grad_(False)
    return fused


def fold_sequential_batchnorm(model: nn.Module) -> int:
    """Fold each Conv2d -> BatchNorm2d pair of consecutive children of any ``nn.Sequential`` in ``model``."""
    n = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (a, conv), (b, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(seq, a, fold_conv_batchnorm(conv, bn))
                setattr(seq, b, nn.Identity())
                n += 1
    return n


def bn_recalibrate(model: nn.Module, batch: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics from one forward pass over ``batch``.

    Randomly initialised deep nets blow activations up layer by layer (a random Inception-v3 gives FDs
    near 3e20 on real images, where the trace term loses all precision). In train mode each BatchNorm
    normalises with the batch statistics, so one pass records statistics under which every layer is
    unit-scale; back in eval mode the features are O(1). Data-independent when ``batch`` is synthetic.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly this batch's statistics
    nn.Module.train(model, True)
    with torch.no_grad():
        model(batch)
    nn.Module.train(model, False)
    for m, mom in zip(bns, saved):
        m.momentum = mom
