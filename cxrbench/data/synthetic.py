"""Procedural chest-like radiographs for tests, calibration and smoke runs.

``synthetic_cxr(n, size, shift, seed)`` draws images with a body outline, two lung fields with rib
texture, a mediastinum and heart shadow, and noise. ``shift`` moves the distribution continuously (larger
heart, hazier lower lungs, lower contrast), so distances must grow monotonically with it.
"""

from __future__ import annotations

import torch

from ..seeding import torch_generator


def _ellipse(xx, yy, cx, cy, rx, ry):
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2


def synthetic_cxr(n: int, size: int = 32, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``n`` float32 images ``(n, 1, size, size)`` in ``[0, 1]``."""
    g = torch_generator(seed)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    xx, yy = xx.expand(n, size, size), yy.expand(n, size, size)

    body = torch.sigmoid((1 - _ellipse(xx, yy, u(-0.05, 0.05), u(0.0, 0.1), u(0.85, 0.95), u(1.0, 1.2))) * 8)
    img = 0.05 + 0.55 * body

    lung_rx, lung_ry = u(0.28, 0.34), u(0.5, 0.6)
    lung_cy = u(-0.1, 0.0)
    ribs_freq = u(9.0, 12.0)
    ribs_phase = u(0.0, 6.28)
    for side in (-1.0, 1.0):
        lung = torch.sigmoid((1 - _ellipse(xx, yy, side * u(0.38, 0.45), lung_cy, lung_rx, lung_ry)) * 10)
        ribs = 0.5 + 0.5 * torch.sin(ribs_freq * (yy + 0.25 * xx.abs()) + ribs_phase)
        # shift: haze filling the lower lung fields (effusion-like), growing continuously
        haze = shift * torch.sigmoid((yy - 0.15) * 6)
        img = img - lung * (0.35 - 0.12 * ribs - 0.3 * haze).clamp(min=0.0)

    mediastinum = torch.sigmoid((0.12 + 0.03 * shift - xx.abs()) * 25) * torch.sigmoid((0.9 - yy.abs()) * 6)
    heart_r = u(0.22, 0.27) * (1 + 0.35 * shift)
    heart = torch.sigmoid((1 - _ellipse(xx, yy, u(0.05, 0.12), u(0.25, 0.35), heart_r * 1.2, heart_r)) * 8)
    img = img + 0.25 * torch.maximum(mediastinum, heart)

    contrast = 1.0 / (1.0 + 0.3 * shift)
    img = 0.5 + (img - 0.5) * contrast
    img = img + 0.03 * torch.randn(n, size, size, generator=g)
    return img.clamp(0, 1).unsqueeze(1).float()
