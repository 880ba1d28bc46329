"""``random-conv``: a small seeded random CNN for tests and quick smoke runs (never comparable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import synthetic_cxr
from .base import FeatureExtractor, FeatureKind, bn_recalibrate


class RandomConvExtractor(FeatureExtractor):
    name = "random-conv"
    version = "1"
    kind = FeatureKind.EMBEDDING
    num_features = 64
    input_size = 32
    resize_filter = "bilinear-antialias (torch)"

    def __init__(self, *, weights: str = "random", seed: int = 0, device: str = "cpu") -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        bn_recalibrate(self.net, self.preprocess(synthetic_cxr(32, 32, seed=seed)))
        self.net.requires_grad_(False)
        self.weights_id = f"random:{seed}"
        self.eval()
        self.to(device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
