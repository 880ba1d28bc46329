"""VAE of Kumar & Triana, "Generating Synthetic Chest X-Rays with generative modeling" (Stanford course
report; undated, it cites the CS 236 course of fall 2023).

Architecture (the report's Figure 4), at its configuration (the defaults: ``image_size=128``, ``z_dim=1024``):

- encoder: five VGG-style blocks of two 3x3 convolutions (stride 1, padding 1, with bias) and LeakyReLU(0.2),
  each followed by MaxPool(2, 2); channels 32, 64, 128, 256, 512 -> a 512 x 4 x 4 map;
- mean and log-variance: two ``Linear(512*4*4, z)`` layers, ``z = 1024``;
- decoder: ``Linear(z, 512*4*4)``, then ConvTranspose2d(k=4, s=2, p=1) 512->256->128->64->32 each with
  BatchNorm and ReLU, then ConvTranspose2d 32->1 and a sigmoid (the image contract is [0, 1]);
- loss: MSE reconstruction (mean over pixels, as the report states "MSE between tensors") + beta * KL
  (summed over z, mean over the batch); beta is a config (the report: 1, 0.1, 0.002); Adam lr 1e-4, batch 64.

The report's loss weighs a per-pixel *mean* error against a KL *summed* over z, so against the summed squared
error of the ELBO the KL weight is ``beta * H * W``: beta = 0.002 is an effective beta of 8.2 at 64 px and
32.8 at 128 px, and the same beta pulls a larger image harder toward the prior (blurrier samples, fewer
active latents). ``reconstruction = "sum"`` sums the squared error over the pixels instead: the negative log
likelihood of a Gaussian decoder with variance 1/2 up to a constant, so ``beta = 1`` is the ELBO and beta
means the same at every image size (``"sum"`` with beta b equals ``"mean"`` with beta b / (H * W), times H * W).

Parameter counts at the report's configuration, computed from the built model, equal its Table 5 exactly
(tests/baselines/test_baselines_classic.py):

- encoder 4,711,648. The OCR'd Figure 4 marks only the 256-channel block "x 2"; the stated total is met
  exactly when *every* block has two convolutions (as in VGG16, which the report took as inspiration), so
  that is what is built (``convs_per_block=2``).
- mean and logvar 8,389,632 each (8192 x 1024 + 1024); the 512 x 4 x 4 map fixes the input to 128 px (the
  report resized to 224 for its other models; 224 px would give a 512 x 7 x 7 map).
- decoder 11,184,033 = 8,396,800 (the z -> 512x4x4 linear layer, 1024 x 8192 + 8192) + 2,787,233 (the
  transposed-convolution stack of Figure 4, BatchNorm(256/128/64/32) after each: the OCR repeats
  "BatchNorm2D (256)" where the layer has 128/64/32 channels).
- total 32,674,945 = 4,711,648 + 2 x 8,389,632 + 11,184,033.

Only ``z = 1024`` gives all four numbers. z = 512 (this file's earlier default) reads "Mean and Logvar:
8,389,632" as the pair's total (2 x (8192 x 512 + 512) is the same number), but then the decoder is 4,194,304
short of Table 5 and the total counts the pair twice.

For other image sizes the same blocks apply (``image_size`` must be a multiple of 2**len(channels)); the
tiny test configs use fewer, narrower blocks.

``label_dim`` (a constructor argument, not a Config field: the VAE on its own is unconditional) makes it a
conditional VAE: the label vector y joins the encoder features before the mean and logvar layers and z
before the decoder. DiffuseVAE's stage 1 (``baselines/diffusevae.py``) uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.errors import UsageError
from cxrbench.generator import Generator
from cxrbench.seeding import torch_generator

from .trainer import Batch, Trainable


@dataclass
class VAEConfig:
    image_size: int = 128
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    convs_per_block: int = 2
    z_dim: int = 1024  # Table 5's counts hold only with z = 1024
    beta: float = 0.002  # the report: 1, 0.1, 0.002; the smallest collapses the posterior least
    reconstruction: str = "mean"  # "mean" over pixels (the report's; KL weight beta*H*W) | "sum" (the ELBO's)
    lr: float = 1e-4
    batch_size: int = 64

    def __post_init__(self):
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**{len(self.channels)} "
                f"(one max-pool per block of channels {tuple(self.channels)})"
            )
        if self.reconstruction not in ("mean", "sum"):
            raise ValueError(f"reconstruction must be mean or sum, got {self.reconstruction!r}")


# ---------------------------------------------------------------------------------------------------------
# networks


class Encoder(nn.Module):
    def __init__(self, channels, convs_per_block: int):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(c_in, c, 3, 1, 1), nn.LeakyReLU(0.2)]
                c_in = c
            layers.append(nn.MaxPool2d(2, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(1)


class Decoder(nn.Module):
    def __init__(self, channels, z_dim: int, map_size: int):
        super().__init__()
        chans = list(channels)[::-1]
        self.shape = (chans[0], map_size, map_size)
        self.fc = nn.Linear(z_dim, chans[0] * map_size * map_size)
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.fc(z).view(-1, *self.shape))


def squared_error(x_hat, x, reconstruction: str) -> torch.Tensor:
    """Mean squared error over channels and pixels ("mean"), or that times H * W ("sum": summed over the
    pixels of an image, channels averaged), averaged over the batch."""
    rec = F.mse_loss(x_hat, x.expand_as(x_hat))
    return rec * (x.shape[-2] * x.shape[-1]) if reconstruction == "sum" else rec


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, the closed form of the report's section 3.1."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)


# ---------------------------------------------------------------------------------------------------------
# model


class VAE(Trainable, Generator):
    name = "vae"
    Config = VAEConfig

    def __init__(self, config: VAEConfig, *, label_dim: int = 0):
        super().__init__(config)
        c = config
        self.label_dim = label_dim
        map_size = c.image_size // 2 ** len(c.channels)
        flat = c.channels[-1] * map_size * map_size
        self.encoder = Encoder(c.channels, c.convs_per_block)
        self.fc_mu = nn.Linear(flat + label_dim, c.z_dim)
        self.fc_logvar = nn.Linear(flat + label_dim, c.z_dim)
        self.decoder = Decoder(c.channels, c.z_dim + label_dim, map_size)

    def _with_labels(self, h, y):
        if not self.label_dim:
            return h
        if y is None:
            raise UsageError(f"this VAE is conditional on {self.label_dim} labels: give them")
        return torch.cat([h, y.to(h)], dim=1)

    def encode(self, x, y=None):
        h = self._with_labels(self.encoder(x), y)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z, y=None):
        return self.decoder(self._with_labels(z, y))

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        rec = squared_error(self.decode(z, y), x, self.config.reconstruction)
        kl = gaussian_kl(mu, logvar).mean()
        return {"loss": rec + self.config.beta * kl, "rec": rec, "kl": kl}

    def configure_optimizers(self):
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        opt = optimizers["adam"]
        losses = self.loss(batch.images)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        return {k: v.item() for k, v in losses.items()}

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None) -> torch.Tensor:
        if labels is not None and not self.label_dim:
            raise UsageError("vae is unconditional: sample without labels")
        dev = next(self.parameters()).device
        g = torch_generator(seed) if seed is not None else None
        z = torch.randn(n, self.config.z_dim, generator=g).to(dev)
        y = None if labels is None else torch.as_tensor(labels, dtype=torch.float32).to(dev)
        was_training = self.training
        self.eval()
        x = self.decode(z, y)
        self.train(was_training)
        return x.float().clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, labels=None, seed: int | None = None) -> torch.Tensor:
        """Paired mode (``cxrbench sample --reconstruct``): each image -> posterior mean -> decoder.

        The posterior mean, not a sample: a reconstruction is then a function of the image alone (``seed`` is
        accepted for the common interface and unused), as DiffuseVAE's stage 1 reconstructs."""
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
            raise UsageError(f"reconstruct needs (N, 1, {size}, {size}) images, got {tuple(images.shape)}")
        if labels is not None and not self.label_dim:
            raise UsageError("vae is unconditional: reconstruct without labels")
        dev = next(self.parameters()).device
        y = None if labels is None else torch.nan_to_num(torch.as_tensor(labels, dtype=torch.float32)).to(dev)
        was_training = self.training
        self.eval()
        mu, _ = self.encode(images.to(dev, torch.float32), y)
        x = self.decode(mu, y)
        self.train(was_training)
        return x.float().clamp(0, 1)
