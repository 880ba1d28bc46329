"""The MoCo-CXR representation (the Mphasis white paper, Selvadeepa et al. 2023) as a feature extractor: every embedding metric runs in its space.

There are no published weights: the extractor loads a folder written by ``cxrbench train moco`` (or
``MoCoCXR.save_pretrained``): ``config.json`` + ``model.pt``. ``weights`` is that folder (or its
``model.pt``); ``None`` looks in ``$CXRBENCH_WEIGHTS/moco``; ``"random"`` builds the default architecture
with seeded random weights and BatchNorm statistics from synthetic radiographs (smoke runs and tests).
Features are the pooled backbone output (the projection head is a training device, as in MoCo's linear
evaluation); ``weights_id`` is the sha256 of ``model.pt``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..data.io import sha256_file
from ..data.synthetic import synthetic_cxr
from ..errors import UsageError, WeightsError
from ..registry import REPRESENTATIONS
from .base import RANDOM_WEIGHTS, FeatureExtractor, FeatureKind, bn_recalibrate, is_random_weights


class MoCoExtractor(FeatureExtractor):
    name = "moco"
    version = "1"
    kind = FeatureKind.EMBEDDING
    resize_filter = "short side + center crop, bilinear-antialias (torch)"

    def __init__(self, *, weights: str | os.PathLike | None = None, seed: int = 0,
                 device: str | torch.device = "cpu", model=None) -> None:
        """``weights``: checkpoint folder (or its model.pt), None ($CXRBENCH_WEIGHTS/moco) or "random" (seeded
        by ``seed``); ``model``: an in-memory ``MoCoCXR`` to wrap instead (weights_id hashes its state)."""
        super().__init__()
        cls = REPRESENTATIONS.get("moco")
        if model is not None:
            self.weights_id = "memory:" + _state_sha256(model)
        elif weights is not None and is_random_weights(weights):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(cls.Config())
            batch = synthetic_cxr(16, model.config.image_size, seed=seed)
            bn_recalibrate(model.encoder_q.backbone, model.preprocess(batch))
            self.weights_id = f"random:{seed}"
        else:
            folder = _resolve_folder(weights)
            model = cls.from_pretrained(folder)
            self.weights_id = sha256_file(folder / "model.pt")
        self.image_size = int(model.config.image_size)
        self.input_size = self.image_size
        self.num_features = int(model.num_features)
        self.model = model
        self.to(device)
        self.eval()

    @staticmethod
    def weights_from_config(config) -> str:
        """``--moco-checkpoint DIR``, or "random" under ``--weights random``; nothing else names MoCo weights."""
        weights = config.moco_checkpoint or (RANDOM_WEIGHTS if is_random_weights(config.weights) else None)
        if weights is None:
            raise UsageError("extractor 'moco' needs --moco-checkpoint DIR (a folder saved by `cxrbench train moco`)")
        return weights

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.preprocess(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder_q.backbone(x)


def _resolve_folder(weights) -> Path:
    if weights is None or str(weights) in ("", "auto"):
        env = os.environ.get("CXRBENCH_WEIGHTS")
        if env and (Path(env) / "moco" / "model.pt").is_file():
            return Path(env) / "moco"
        raise WeightsError(
            "moco: no trained checkpoint given; pass --moco-checkpoint DIR (a folder written by "
            "`cxrbench train moco`, holding config.json and model.pt), place one in $CXRBENCH_WEIGHTS/moco/, "
            "or use --weights random for a smoke run"
        )
    path = Path(weights)
    if path.is_file() and path.name == "model.pt":
        path = path.parent
    if not (path / "model.pt").is_file() or not (path / "config.json").is_file():
        raise WeightsError(
            f"{path}: not a MoCo checkpoint folder (expected config.json and model.pt there); "
            "train one with `cxrbench train moco --data DIR --out DIR` and pass that DIR"
        )
    return path


def _state_sha256(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
