"""DCGAN-style least-squares GAN of Kumar & Triana ("Generating Synthetic Chest X-Rays with Generative
Modeling", Stanford), generator and discriminator of Figure 7.

- generator: ConvTranspose2d(z, 512, k=4, s=1, p=0) on z as a 1x1 map, then ConvTranspose2d(k=4, s=2, p=1)
  512->256->128->64->32, each with BatchNorm and ReLU, then ConvTranspose2d 32->1 and tanh;
- discriminator: Conv2d(k=4, s=2, p=1) 1->32 (LeakyReLU 0.2, no BatchNorm), 32->64->128->256->512 with
  BatchNorm and LeakyReLU(0.2), then the classifier Conv2d 512->1 (k=4, s=2, p=1; its 2x2 output map is
  averaged: the figure gives no pooling);
- no convolution biases (BatchNorm follows every layer but the classifier and the output, and the seed's
  counts are met exactly without them): with z = 100 the discriminator has 2,795,904 and the generator
  3,606,976 parameters, as the seed's Table 5 states (tests/baselines/test_baselines_classic.py builds and counts);
- least-squares losses (Mao et al.): D minimises 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2], G minimises
  1/2 E[(D(G(z)) - 1)^2]; Adam lr 2e-4, beta1 0.5, batch 64, and 3 generator updates per discriminator
  update ("to help the generator converge faster"). One trainer step is one D update and its G updates.

The figure's six generator layers map 1x1 -> 128x128, so the seed configuration is ``image_size=128``
(the text resizes to 224, which this stack cannot produce). Other sizes ``4 * 2**L`` use ``L`` up/down
layers whose widths double from ``width`` (32) up to ``max_channels`` (512), so 128 px is the figure exactly.
Images are scaled to [-1, 1] for training (tanh output) and back to [0, 1] by ``sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from cxrbench.errors import UsageError
from cxrbench.generator import Generator
from cxrbench.seeding import torch_generator

from .trainer import Batch, Trainable


@dataclass
class LSGANConfig:
    image_size: int = 128
    z_dim: int = 100
    width: int = 32  # channels of the first D layer and the last G hidden layer
    max_channels: int = 512
    lr: float = 2e-4
    beta1: float = 0.5
    g_steps_per_d_step: int = 3
    batch_size: int = 64

    def __post_init__(self):
        levels = math.log2(self.image_size / 4) if self.image_size >= 8 else 0
        if levels < 1 or levels != int(levels):
            raise ValueError(f"image_size must be 4 * 2**L with L >= 1 (8, 16, 32, ...), got {self.image_size}")


def _widths(cfg: LSGANConfig) -> list[int]:
    levels = int(math.log2(cfg.image_size // 4))
    return [min(cfg.width * 2**i, cfg.max_channels) for i in range(levels)]


class LSGANGenerator(nn.Module):
    def __init__(self, cfg: LSGANConfig):
        super().__init__()
        chans = _widths(cfg)[::-1]  # 512, 256, ..., 32
        layers = [nn.ConvTranspose2d(cfg.z_dim, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU()]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class LSGANDiscriminator(nn.Module):
    def __init__(self, cfg: LSGANConfig):
        super().__init__()
        chans = _widths(cfg)
        layers = [nn.Conv2d(1, chans[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, 2, 1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).mean(dim=(1, 2, 3))


def _dcgan_init(m: nn.Module) -> None:
    # DCGAN initialisation (normal(0, 0.02) convolutions, BatchNorm gamma ~ N(1, 0.02))
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class LSGAN(Trainable, Generator):
    name = "lsgan"
    Config = LSGANConfig

    def __init__(self, config: LSGANConfig):
        super().__init__(config)
        self.generator = LSGANGenerator(config)
        self.discriminator = LSGANDiscriminator(config)
        self.apply(_dcgan_init)

    def configure_optimizers(self):
        c = self.config
        return {
            "g": torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=(c.beta1, 0.999)),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=(c.beta1, 0.999)),
        }

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        real = batch.images * 2 - 1
        b = real.shape[0]
        opt_g, opt_d = optimizers["g"], optimizers["d"]

        z = torch.randn(b, self.config.z_dim, device=real.device)
        with torch.no_grad():
            fake = self.generator(z)
        d_loss = 0.5 * ((self.discriminator(real) - 1) ** 2).mean() + 0.5 * (self.discriminator(fake) ** 2).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_losses = []
        for _ in range(self.config.g_steps_per_d_step):
            z = torch.randn(b, self.config.z_dim, device=real.device)
            g_loss = 0.5 * ((self.discriminator(self.generator(z)) - 1) ** 2).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            g_losses.append(g_loss.item())
        return {"d_loss": d_loss.item(), "g_loss": sum(g_losses) / len(g_losses)}

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None) -> torch.Tensor:
        if labels is not None:
            raise UsageError("lsgan is unconditional: sample without labels")
        dev = next(self.parameters()).device
        g = torch_generator(seed) if seed is not None else None
        z = torch.randn(n, self.config.z_dim, generator=g).to(dev)
        was_training = self.generator.training
        self.generator.eval()
        x = self.generator(z)
        self.generator.train(was_training)
        return ((x.float() + 1) / 2).clamp(0, 1)
