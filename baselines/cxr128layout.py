"""A chest-layout network for ``cxr128``: is this chest upright, turned, mirrored, or two chests joined?

``cxrbench train cxr128-layout`` trains it on the images ``cxr128-net`` trains on (``training_tables``: no
reference or held-out patient of the protocol), as a plain classifier of the orientation pretext's classes
(Gidaris et al., "Unsupervised representation learning by predicting image rotations", ICLR 2018): upright,
turned 90 / 180 / 270 degrees, upside down, mirrored left to right (heart on the right), two chests joined along
a line of any direction, two chests' halves joined at the midline.

Why a second network. ``cxr128``'s FD is blind to arrangement: a mirrored chest or two spliced ones keep every
local patch real, and its embedding, though its pretext was shown both, puts such sets at 1.6-1.9x the real row
(``leaderboard/validity/README.md``). A layout class is one direction among the embedding's many, and FD sums them
all, so a linear probe that names 88% of mirrored chests adds about 5 to FD against a floor of 17. Since
``cxr128`` version 4 its 8 logits follow the embedding (whitened, weighted by ``LAYOUT_GAIN``). This network
exists to name them confidently whatever the image quality: each view is degraded at random *after* its class
is applied (low resolution, blur, contrast, gamma, noise, each often strong), so quality carries no information
about the class and the logits read layout, not sharpness. It reads 64 px, because layout is coarse and what a
64 px thumbnail loses (fine texture) is what it should not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrbench.features.cxr128 import LAYOUT_CLASSES, LAYOUT_SIZE, CXR128Net
from cxrbench.generator import PretrainedMixin

from .cxr64net import _gauss_blur
from .cxr128net import ORIENTATION_EXTRA, ORIENTATIONS, CXR128NetTrainer, _lowres, orient
from .moco import augment
from .trainer import Batch, Trainable, set_cosine_lr

#: the layout classes after ``ORIENTATIONS`` (``baselines.cxr128net.ORIENTATION_EXTRA``), as the extractor names them
LAYOUT_EXTRA = LAYOUT_CLASSES[len(ORIENTATIONS):]


@dataclass
class Config:
    image_size: int = 128  # the cxr128 contract it is given (it reads a 64 px thumbnail of it)
    classes_extra: tuple[str, ...] = LAYOUT_EXTRA
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    schedule_steps: int = 4000  # cosine decay length in steps
    # the view before its class is applied (``baselines.moco.augment``; never mirrored: that is a class)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    rotation_deg: float = 8.0
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.3
    hflip_prob: float = 0.0
    # degradation after the class is applied: probability and the strongest setting of each
    lowres_prob: float = 0.4
    lowres_factor: float = 8.0
    blur_prob: float = 0.5
    blur_sigma: float = 3.0  # px at 128 px
    fade_prob: float = 0.3  # contrast towards the image mean, kept share U(fade_min, 1)
    fade_min: float = 0.25
    gamma_prob: float = 0.3  # x ** gamma, log gamma U(-log gamma_max, log gamma_max)
    gamma_max: float = 2.0
    noise_prob: float = 0.5
    noise_std: float = 0.12

    def __post_init__(self):
        self.crop_scale = tuple(float(s) for s in self.crop_scale)
        self.classes_extra = tuple(self.classes_extra)
        unknown = set(self.classes_extra) - set(ORIENTATION_EXTRA)
        if unknown:
            raise ValueError(f"classes_extra {sorted(unknown)}: expected among {', '.join(ORIENTATION_EXTRA)}")


def degrade(x: torch.Tensor, c: Config) -> torch.Tensor:
    """Each image degraded at random by ``c``'s families, drawn per image from the global RNG."""
    n = x.shape[0]

    def pick(p: float, draw: torch.Tensor, off: float) -> torch.Tensor:
        return torch.where(torch.rand(n) < p, draw, torch.full((n,), off))

    f = pick(c.lowres_prob, 1 + (c.lowres_factor - 1) * torch.rand(n), 1.0)
    x = torch.cat([_lowres(x[i:i + 1], float(f[i])) for i in range(n)])
    x = _gauss_blur(x, pick(c.blur_prob, c.blur_sigma * torch.rand(n), 0.0).to(x))
    keep = pick(c.fade_prob, c.fade_min + (1 - c.fade_min) * torch.rand(n), 1.0).to(x).view(-1, 1, 1, 1)
    m = x.mean((1, 2, 3), keepdim=True)
    x = (m + (x - m) * keep).clamp(0, 1)
    log_g = pick(c.gamma_prob, (2 * torch.rand(n) - 1) * math.log(c.gamma_max), 0.0)
    x = x.clamp_min(1e-4) ** log_g.exp().to(x).view(-1, 1, 1, 1)
    std = pick(c.noise_prob, c.noise_std * torch.rand(n), 0.0).to(x).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape).to(x)).clamp(0, 1)


def layout_input(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 128, 128)`` in [0, 1] (the ``cxr128`` contract) -> the network's 64 px input in [-1, 1]."""
    return F.interpolate(x, size=(LAYOUT_SIZE, LAYOUT_SIZE), mode="area") * 2 - 1


class CXR128LayoutTrainer(Trainable, PretrainedMixin, torch.nn.Module):
    """``CXR128Net``'s architecture with one logit per layout class as its head (no embedding heads to drop)."""

    name = "cxr128-layout"
    Config = Config

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.net = CXR128Net(num_labels=len(ORIENTATIONS) + len(config.classes_extra))

    @classmethod
    def training_dataset(cls, data_root, config: Config, *, split: str | None = None):
        """The images ``cxr128-net`` trains on, decoded once to 128 px."""
        return CXR128NetTrainer.training_dataset(data_root, None, split=split)

    def configure_optimizers(self):
        c = self.config
        return {"adamw": torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)}

    def losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        k = torch.randint(0, len(ORIENTATIONS) + len(c.classes_extra), (images.shape[0],))
        x = degrade(orient(augment(images, c), k, c.classes_extra), c)
        logits = self.net(layout_input(x))
        loss = F.cross_entropy(logits, k)
        return {"loss": loss, "acc": (logits.argmax(1) == k).float().mean()}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c, opt = self.config, optimizers["adamw"]
        lr = set_cosine_lr(opt, c.lr, step, c.schedule_steps)
        out = self.losses(batch.images)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {"lr": lr, **{k: float(v.detach()) for k, v in out.items()}}

