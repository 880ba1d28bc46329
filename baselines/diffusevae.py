"""DiffuseVAE (Pandey et al. 2022) with the representation fine-tuning of seed 002 (Mphasis whitepaper).

- stage 1: the VAE of ``baselines/vae.py`` (imported; its own config fields are prefixed ``vae_`` here);
- stage 2: the DDPM of ``baselines/ddpm.py`` (diffusers UNet2DModel) conditioned on the VAE reconstruction
  by concatenation: the UNet sees ``[x_t, x_vae]`` (in_channels = 2) and predicts the noise of x_t;
- sampling: z ~ N(0, I) -> VAE decoder -> x_vae, then DDIM from noise conditioned on x_vae;
- ``reconstruct(images)``: the VAE posterior mean of each image -> x_vae -> DDIM; the paired mode that
  ``cxrbench sample RUN --reconstruct DIR`` writes (manifest column ``source``), for ``rrs_moco``;
- seed 002's fine-tune: ``L = L_diffusion + rep_lambda * mean_i ||f(x0_i) - f(x0_hat_i)||_2`` with x0_hat the
  clean image the UNet's noise prediction implies, and f a frozen representation encoder
  (:func:`load_representation`; its outputs L2-normalised, so the term is in [0, 2] like the cosine-based
  ``rrs_moco``). ``rep_lambda = 0`` (the default) is plain DiffuseVAE.

The paper trains the stages one after the other; here they train side by side from the trainer's single
budget (separate losses, one optimiser): the DDPM conditions on the current VAE's *detached*
reconstruction of a reparameterised posterior sample ``z = mu + sigma * eps`` (as the reference
implementation does; the posterior mean would train the DDPM on smoother conditions than the decoded prior
samples it refines at sampling time), which is the stage-2 objective once the VAE has settled, and keeps
one resumable run.

Seed 002's representation fine-tune as a second stage: train plain DiffuseVAE, then start a new run (a new
``--out``: a resumed run refuses a changed config) with ``rep_lambda > 0`` and ``init_from`` naming the
first run's folder; its weights start the second run (the EMA restarts its warm-up there). The
representation term is taken only at ``t < rep_max_t * num_train_timesteps``: at large t,
x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies the noise-prediction error by 1 / sqrt(abar)
and is mostly clamped, so f(x0_hat) says nothing about the image (linear schedule: abar = 0.39 at t = 0.3 T,
0.08 at 0.5 T, 4e-5 at T).

As in ``baselines/ddpm.py``: gradients clipped to ``grad_clip``; sampling and ``reconstruct`` use the EMA of
the VAE and UNet weights (``ema_decay``; 0 samples the trained weights), saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.errors import CxrbenchError, UsageError, WeightsError
from cxrbench.generator import Generator

from .ddpm import ddim_loop, denoise_loss, make_schedulers, make_unet
from .trainer import Batch, Trainable, attach_ema, averaged_weights, clip_gradients
from .vae import VAE, VAEConfig


@dataclass
class DiffuseVAEConfig:
    image_size: int = 64
    # stage 1 (baselines/vae.py)
    vae_channels: tuple[int, ...] = (32, 64, 128, 256)
    vae_z_dim: int = 128
    vae_beta: float = 0.002
    # stage 2
    block_out_channels: tuple[int, ...] = (64, 128, 128, 256)
    layers_per_block: int = 2
    attention: bool = True
    norm_groups: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    sample_steps: int = 50
    # seed 002's representation term
    rep_lambda: float = 0.0
    rep_checkpoint: str = "random"  # see load_representation
    rep_max_t: float = 0.3  # the representation term only at t < rep_max_t * num_train_timesteps
    init_from: str = ""  # a saved diffusevae folder whose weights start a fresh run (the fine-tune stage)
    lr: float = 2e-4
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    ema_decay: float = 0.9999  # largest EMA decay; 0: sample the trained weights
    ema_power: float = 0.75  # EMA warm-up: decay 1 - (1 + step) ** -power, capped at ema_decay
    batch_size: int = 64

    def __post_init__(self):
        VAEConfig(image_size=self.image_size, channels=tuple(self.vae_channels))  # its size check
        if self.image_size % (2 ** (len(self.block_out_channels) - 1)):
            n = len(self.block_out_channels) - 1
            raise ValueError(f"image_size {self.image_size} must be a multiple of 2**{n} (UNet downsamplings)")
        if self.rep_lambda < 0:
            raise ValueError("rep_lambda must be >= 0")
        if not 0 < self.rep_max_t <= 1:
            raise ValueError(f"rep_max_t must be in (0, 1], got {self.rep_max_t}")


# ---------------------------------------------------------------------------------------------------------
# representation encoders


class RandomResNet18(nn.Module):
    """A ResNet18 trunk with seeded random weights (offline stand-in for a trained MoCo encoder); 512-d output."""

    def __init__(self, seed: int = 0):
        super().__init__()
        from torchvision.models import resnet18

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = resnet18(weights=None, num_classes=1)
        net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):  # x: (B, 1, H, W) in [0, 1]
        return self.net((x - 0.5) / 0.25)


def load_representation(source: str | Path | nn.Module) -> nn.Module:
    """A frozen encoder ``f(images (B, 1, H, W) in [0, 1]) -> (B, D)``.

    ``source``: an ``nn.Module`` (used as is); ``"random"`` (a seeded random ResNet18 trunk, offline);
    ``"random:SEED"``; or a folder saved by ``cxrbench train moco`` (``baselines.moco.MoCoCXR``, whose
    ``encode`` gives the embedding).
    """
    if isinstance(source, nn.Module):
        enc = source
    elif str(source).startswith("random"):
        _, _, seed = str(source).partition(":")
        enc = RandomResNet18(int(seed) if seed else 0)
    else:
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise WeightsError(
                f"{folder}: not a saved MoCo folder (config.json + model.pt); train one with "
                "`cxrbench train moco`, or set rep_checkpoint = \"random\" for an offline run"
            )
        try:
            from baselines.moco import MoCoCXR
        except ImportError:
            raise WeightsError(f"{folder}: baselines.moco is not installed in this checkout") from None
        moco = MoCoCXR.from_pretrained(folder)
        enc = _Encode(moco)
    return enc.eval().requires_grad_(False)


def representation_loss(f: nn.Module, images, x0_hat, t, t_max: int) -> torch.Tensor:
    """Seed 002's term ``mean_i ||f(x0_i) - f(x0_hat_i)||`` (L2-normalised embeddings) over the items with
    ``t < t_max``; zero when none has."""
    keep = t < t_max
    if not bool(keep.any()):
        return x0_hat.sum() * 0.0
    with torch.no_grad():
        target = F.normalize(f(images[keep]), dim=1)
    pred = F.normalize(f((x0_hat[keep].clamp(-1, 1) + 1) / 2), dim=1)
    return (target - pred).norm(dim=1).mean()


class _Encode(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.encode(x)


# ---------------------------------------------------------------------------------------------------------
# model


class DiffuseVAE(Trainable, Generator):
    name = "diffusevae"
    Config = DiffuseVAEConfig

    def __init__(self, config: DiffuseVAEConfig):
        super().__init__(config)
        c = config
        self.vae = VAE(VAEConfig(image_size=c.image_size, channels=tuple(c.vae_channels), z_dim=c.vae_z_dim,
                                 beta=c.vae_beta, lr=c.lr, batch_size=c.batch_size))
        self.unet = make_unet(c, in_channels=2)
        self.noise_scheduler, self.sampler = make_schedulers(c)
        self._rep = None  # loaded on first use; frozen and kept out of the state dict (it is not ours)
        attach_ema(self, ("vae", "unet"), decay=c.ema_decay, power=c.ema_power)

    def on_train_start(self, dataset) -> None:
        if not self.config.init_from:
            return
        try:
            first = DiffuseVAE.from_pretrained(self.config.init_from)
            self.load_state_dict(first.state_dict())
        except (CxrbenchError, RuntimeError) as e:
            raise UsageError(
                f"init_from {self.config.init_from}: {str(e).splitlines()[0][:200]}; it must be a diffusevae "
                "folder with the same architecture fields (only rep_*, lr, grad_clip, ema_* and init_from "
                "may differ)"
            ) from None
        if self.ema is not None:  # the average restarts its warm-up, so that it follows the fine-tune
            self.ema.steps.zero_()

    def representation(self, device) -> nn.Module:
        if self._rep is None:
            object.__setattr__(self, "_rep", load_representation(self.config.rep_checkpoint))
        return self._rep.to(device)

    def eps(self, xt, t, cond):
        return self.unet(torch.cat([xt, cond], 1), t).sample

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # not the EMA copy
        return {"adam": torch.optim.Adam(params, lr=self.config.lr)}

    @torch.no_grad()
    def condition(self, images: torch.Tensor) -> torch.Tensor:
        """The DDPM's training condition in [-1, 1]: the VAE's decoding of a posterior sample of each image."""
        mu, logvar = self.vae.encode(images)
        return self.vae.decoder(mu + torch.randn_like(mu) * (0.5 * logvar).exp()) * 2 - 1

    def losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        vae = self.vae.loss(images)
        cond = self.condition(images)
        x0 = images * 2 - 1
        diff, x0_hat, t = denoise_loss(lambda xt, t: self.eps(xt, t, cond), x0, self.noise_scheduler)
        out = {"loss": diff + vae["loss"], "diffusion": diff, "vae_rec": vae["rec"], "vae_kl": vae["kl"]}
        if self.config.rep_lambda > 0:
            t_max = round(self.config.rep_max_t * self.config.num_train_timesteps)
            rep = representation_loss(self.representation(images.device), images, x0_hat, t, t_max)
            out["rep"] = rep
            out["loss"] = out["loss"] + self.config.rep_lambda * rep
        return out

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        losses = self.losses(batch.images)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = clip_gradients(self.parameters(), self.config.grad_clip)
        opt.step()
        if self.ema is not None:
            self.ema.update()
        return {**{k: v.item() for k, v in losses.items()}, "grad_norm": grad_norm}

    @torch.no_grad()
    def refine(self, x_vae: torch.Tensor, *, seed: int | None = None, steps: int | None = None) -> torch.Tensor:
        """Stage 2: DDIM conditioned on VAE images in [0, 1]; returns [0, 1]."""
        cond = x_vae * 2 - 1
        with averaged_weights(self):
            x = ddim_loop(lambda xt, t: self.eps(xt, t, cond), tuple(cond.shape), self.sampler,
                          steps or self.config.sample_steps, seed=seed, device=cond.device)
        return ((x.clamp(-1, 1) + 1) / 2).float()

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None, steps: int | None = None) -> torch.Tensor:
        if labels is not None:
            raise UsageError("diffusevae is unconditional: sample without labels")
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        with averaged_weights(self):
            x_vae = self.vae.sample(n, seed=seed).to(dev)
            # a different stream for the diffusion noise than for z (seed + a large odd constant)
            x = self.refine(x_vae, seed=None if seed is None else seed + 1_000_003, steps=steps)
        self.train(was_training)
        return x

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, seed: int | None = None, steps: int | None = None) -> torch.Tensor:
        """Paired mode: each image -> VAE posterior mean -> decoder -> DDIM refinement (same shape, [0, 1]).

        The posterior mean, not a sample, so that a reconstruction depends on ``seed`` through the DDIM noise only.
        """
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
            raise UsageError(f"reconstruct needs (N, 1, {size}, {size}) images, got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        with averaged_weights(self):
            mu, _ = self.vae.encode(images.to(dev))
            x = self.refine(self.vae.decoder(mu), seed=seed, steps=steps)
        self.train(was_training)
        return x
