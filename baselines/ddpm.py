"""Pixel-space DDPM (Ho et al. 2020), class-conditional with classifier-free guidance; DDIM sampling.

The networks and schedules are diffusers': a ``UNet2DModel`` predicts the noise, a ``DDPMScheduler`` adds
it during training (the usual linear beta schedule over ``num_train_timesteps``), and a ``DDIMScheduler``
with the same betas samples in ``sample_steps`` deterministic steps (eta = 0; "trailing" spacing, so that
even two steps start from pure noise at t = T - 1).

Conditioning: the 15-d label vector (LABELS order) goes through a linear layer together with a "dropped"
flag, and the result is added to the UNet's time embedding (``class_embed_type="identity"``: diffusers adds
``class_labels`` to the time embedding as given). During training the labels are dropped with probability
``cond_drop`` (the flag set, the vector zeroed), so the same network also learns the unconditional score;
sampling mixes the two, ``eps = eps_u + guidance_scale * (eps_c - eps_u)`` (Ho & Salimans 2022; a scale of
1 is plain conditional sampling). Images are trained in [-1, 1] and returned in [0, 1].

As in Ho et al., gradients are clipped to norm ``grad_clip`` (1.0) and ``sample`` uses an exponential moving
average of the weights (``baselines.trainer.EMA``: decay up to ``ema_decay`` = 0.9999 with diffusers' warm-up
``1 - (1 + step) ** -ema_power``, so a short run averages its own latest part; ``ema_decay = 0`` samples
the trained weights). The average is saved with the model and in the checkpoint.

The helpers ``make_unet``, ``make_schedulers``, ``denoise_loss`` and ``ddim_loop`` are shared with
``baselines/diffusevae.py`` (its stage 2 is this DDPM with the VAE reconstruction as a second input channel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import nn

from cxrbench.data.labels import LABELS
from cxrbench.generator import Generator
from cxrbench.seeding import torch_generator

from .trainer import Batch, LabelBankMixin, Trainable, attach_ema, averaged_weights, clip_gradients, label_matrix


@dataclass
class DDPMConfig:
    image_size: int = 64
    block_out_channels: tuple[int, ...] = (64, 128, 128, 256)
    layers_per_block: int = 2
    attention: bool = True  # self-attention in the lowest-resolution blocks (the DDPM paper: at 16 px)
    norm_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    sample_steps: int = 50  # DDIM steps at sampling time
    cond_drop: float = 0.1  # probability of training on the "no label" input (classifier-free guidance)
    guidance_scale: float = 2.0
    lr: float = 2e-4
    grad_clip: float = 1.0  # max global gradient norm (Ho et al.); 0: no clipping
    ema_decay: float = 0.9999  # largest EMA decay (Ho et al.); 0: sample the trained weights
    ema_power: float = 0.75  # EMA warm-up: decay 1 - (1 + step) ** -power, capped at ema_decay
    batch_size: int = 64
    label_bank_size: int = 1024

    def __post_init__(self):
        if self.image_size % (2 ** (len(self.block_out_channels) - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 2**{len(self.block_out_channels) - 1} "
                f"(one downsampling per block after the first; block_out_channels {tuple(self.block_out_channels)})"
            )
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise ValueError(f"every block_out_channels entry must be a multiple of norm_groups {self.norm_groups}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if self.sample_steps < 1:
            raise ValueError("sample_steps must be at least 1")


# ---------------------------------------------------------------------------------------------------------
# shared with diffusevae


def make_unet(cfg, *, in_channels: int = 1, class_conditional: bool = False) -> UNet2DModel:
    n = len(cfg.block_out_channels)
    attn = [cfg.attention and i == n - 1 for i in range(n)]
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=in_channels,
        out_channels=1,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=cfg.norm_groups,
        attention_head_dim=min(8, cfg.block_out_channels[-1]),
        class_embed_type="identity" if class_conditional else None,
    )


def make_schedulers(cfg, *, clip: bool = True) -> tuple[DDPMScheduler, DDIMScheduler]:
    """Training (noising) and sampling schedulers; ``clip``: predicted x0 clipped to [-1, 1] (pixels, not latents)."""
    kw = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, clip_sample=clip)
    return DDPMScheduler(**kw), DDIMScheduler(**kw, timestep_spacing="trailing")


def denoise_loss(model_fn: Callable, x0: torch.Tensor, noise_scheduler: DDPMScheduler):
    """The DDPM "simple" loss on x0; returns (loss, x0_hat, t) with x0_hat the predicted clean image.

    ``model_fn(x_t, t)`` predicts what the scheduler's ``prediction_type`` names: the noise ("epsilon", the
    default here), ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` ("v_prediction", Stable Diffusion 2.x) or x0
    ("sample"); the sampling scheduler built from the same config reads the prediction the same way.
    """
    b = x0.shape[0]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), device=x0.device)
    noise = torch.randn_like(x0)
    xt = noise_scheduler.add_noise(x0, noise, t)
    out = model_fn(xt, t)
    abar = noise_scheduler.alphas_cumprod.to(x0.device)[t].view(b, 1, 1, 1)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target, x0_hat = noise, (xt - (1 - abar).sqrt() * out) / abar.sqrt()
    elif kind == "v_prediction":
        target, x0_hat = noise_scheduler.get_velocity(x0, noise, t), abar.sqrt() * xt - (1 - abar).sqrt() * out
    elif kind == "sample":
        target, x0_hat = x0, out
    else:
        raise ValueError(f"unknown prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    return F.mse_loss(out, target), x0_hat, t


def ddim_loop(eps_fn: Callable, shape, scheduler: DDIMScheduler, steps: int, *, seed, device) -> torch.Tensor:
    """Deterministic DDIM from seeded noise; returns x0. ``eps_fn(x_t, t_batch)`` predicts noise."""
    g = torch_generator(seed) if seed is not None else None
    x = torch.randn(shape, generator=g).to(device)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        tb = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        x = scheduler.step(eps_fn(x, tb), int(t), x, eta=0.0).prev_sample
    return x


# ---------------------------------------------------------------------------------------------------------
# model


class DDPM(LabelBankMixin, Trainable, Generator):
    name = "ddpm"
    Config = DDPMConfig
    conditional = True

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        self.unet = make_unet(config, class_conditional=True)
        emb_dim = config.block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.label_proj = nn.Linear(len(LABELS) + 1, emb_dim)  # +1: the "labels dropped" flag
        self.noise_scheduler, self.sampler = make_schedulers(config)
        self.register_buffer("label_bank", torch.zeros(config.label_bank_size, len(LABELS)))
        attach_ema(self, ("unet", "label_proj"), decay=config.ema_decay, power=config.ema_power)

    def label_embedding(self, labels: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        y = torch.nan_to_num(labels, nan=0.0) * (~dropped).unsqueeze(1)
        return self.label_proj(torch.cat([y, dropped.float().unsqueeze(1)], 1))

    def eps(self, xt, t, labels, dropped):
        return self.unet(xt, t, class_labels=self.label_embedding(labels, dropped)).sample

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # not the EMA copy
        return {"adam": torch.optim.Adam(params, lr=self.config.lr)}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        x0 = batch.images * 2 - 1
        labels = batch.labels[:, : len(LABELS)]
        dropped = torch.rand(x0.shape[0], device=x0.device) < self.config.cond_drop
        loss, _, _ = denoise_loss(lambda xt, t: self.eps(xt, t, labels, dropped), x0, self.noise_scheduler)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.parameters(), self.config.grad_clip)
        opt.step()
        if self.ema is not None:
            self.ema.update()
        return {"loss": loss.item(), "grad_norm": grad_norm}

    @torch.no_grad()
    def sample(
        self, n: int, *, labels=None, seed: int | None = None, steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        dev = next(self.parameters()).device
        y = (self.draw_labels(n, seed=seed) if labels is None else label_matrix(labels, n)).to(dev)
        s = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        keep = torch.zeros(n, dtype=torch.bool, device=dev)

        def eps_fn(xt, t):
            eps_c = self.eps(xt, t, y, keep)
            if s == 1.0:
                return eps_c
            eps_u = self.eps(xt, t, y, ~keep)
            return eps_u + s * (eps_c - eps_u)

        was_training = self.training
        self.eval()
        size = self.config.image_size
        steps = steps or self.config.sample_steps
        with averaged_weights(self):
            x = ddim_loop(eps_fn, (n, 1, size, size), self.sampler, steps, seed=seed, device=dev)
        x = x.clamp(-1, 1)
        self.train(was_training)
        return ((x + 1) / 2).float().clamp(0, 1)
