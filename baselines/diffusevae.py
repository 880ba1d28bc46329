"""DiffuseVAE (Pandey et al. 2022) as the Mphasis white paper "Synthetic Chest X-ray Image Generator" uses it:
single-condition generation, staged training, and its representation fine-tune.

- conditions: the white paper generates one condition at a time, pneumonia, pleural effusion and healthy
  lungs, and reports FID per condition. ``conditions`` (default ``("Pneumonia", "Effusion", "No Finding")``,
  NIH names) are the label columns the model is conditioned on: a training image's condition vector is its
  0/1 labels in those columns (an image with other findings only has all zeros). ``sample(n, labels=...)``
  takes the 15-column label vectors of the Generator contract; a requested label outside ``conditions`` is
  refused, as the model cannot honour it and the manifest would claim it. Without labels it draws condition
  vectors from its training labels (the label bank). ``conditions = []`` is the unconditional model;
- stage 1: the VAE of ``baselines/vae.py`` (imported; its own config fields are prefixed ``vae_`` here), a
  conditional VAE: the condition vector joins the encoder features and z;
- stage 2: the DDPM of ``baselines/ddpm.py`` (diffusers UNet2DModel) conditioned on the VAE reconstruction
  by concatenation, the UNet sees ``[x_t, x_vae]`` (in_channels = 2), and on the condition vector through a
  linear layer added to its time embedding (as ``baselines/ddpm.py`` does with labels);
- sampling: z ~ N(0, I) -> VAE decoder (z, y) -> x_vae, then DDIM from noise conditioned on x_vae and y;
- ``reconstruct(images, labels=...)``: the VAE posterior mean of each image -> x_vae -> DDIM; the paired mode
  that ``cxrbench sample RUN --reconstruct DIR`` writes (manifest column ``source``), for ``rrs_moco``; a
  conditional model needs the source images' labels (DIR's labels.csv);
- the white paper's fine-tune: ``L = L_diffusion + rep_lambda * mean_i ||f(x0_i) - f(x0_hat_i)||_2`` with x0_hat
  the clean image the UNet's noise prediction implies, and f a frozen representation encoder
  (:func:`load_representation`; its outputs L2-normalised, so the term is in [0, 2] like the cosine-based
  ``rrs_moco``). ``rep_lambda = 0`` (the default) is plain DiffuseVAE.

Staged training, as the white paper describes DiffuseVAE ("Stage 1: VAE Encoding", "Stage 2: DDPM Reverse
Diffusion"): the first ``vae_fraction`` of the training budget (the trainer's ``progress``: steps, CPU or wall
minutes) trains the VAE alone; at the switch the VAE takes its averaged (EMA) weights and is frozen (eval
mode, no gradient, BatchNorm statistics kept), and the rest of the budget trains the DDPM on the frozen VAE's
reconstructions of posterior samples ``z = mu + sigma * eps`` (as the reference implementation does; the
posterior mean would train the DDPM on smoother conditions than the decoded prior samples it refines at
sampling time). One resumable run holds both stages; the stage reached is saved with the weights (``stage``)
and never goes back. ``vae_fraction = 0`` trains the two side by side from the start (the DDPM on the
current VAE's detached reconstruction), as folders saved before the stages were trained.

The white paper's representation fine-tune as a further run: train DiffuseVAE, then start a new run (a new
``--out``: a resumed run refuses a changed config) with ``rep_lambda > 0`` and ``init_from`` naming the first
run's folder; its weights start the second run, which trains the DDPM only (stage 2 throughout; the EMA
restarts its warm-up there). The representation term is taken only at ``t < rep_max_t * num_train_timesteps``:
at large t, x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) multiplies the noise-prediction error by
1 / sqrt(abar) and is mostly clamped, so f(x0_hat) says nothing about the image (linear schedule: abar = 0.39
at t = 0.3 T, 0.08 at 0.5 T, 4e-5 at T).

As in ``baselines/ddpm.py``: gradients clipped to ``grad_clip``; sampling and ``reconstruct`` use the EMA of
the VAE and UNet weights (``ema_decay``; 0 samples the trained weights), saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.labels import LABELS, canonical_label
from cxrbench.errors import CxrbenchError, UsageError, WeightsError
from cxrbench.generator import Generator

from .ddpm import ddim_loop, denoise_loss, make_schedulers, make_unet
from .trainer import Batch, LabelBankMixin, Trainable, attach_ema, averaged_weights, clip_gradients, label_matrix
from .vae import VAE, VAEConfig

# the white paper's single conditions: pneumonia, pleural effusion, healthy lungs (NIH names)
PAPER_CONDITIONS = ("Pneumonia", "Effusion", "No Finding")


@dataclass
class DiffuseVAEConfig:
    image_size: int = 64
    conditions: tuple[str, ...] = PAPER_CONDITIONS  # label columns the model generates; () unconditional
    vae_fraction: float = 0.3  # share of the budget for stage 1 (the VAE alone); 0: both side by side
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
    # the white paper's representation term
    rep_lambda: float = 0.0
    rep_checkpoint: str = "random"  # see load_representation
    rep_max_t: float = 0.3  # the representation term only at t < rep_max_t * num_train_timesteps
    init_from: str = ""  # a saved diffusevae folder whose weights start a fresh run (the fine-tune stage)
    lr: float = 2e-4
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    ema_decay: float = 0.9999  # largest EMA decay; 0: sample the trained weights
    ema_power: float = 0.75  # EMA warm-up: decay 1 - (1 + step) ** -power, capped at ema_decay
    batch_size: int = 64
    label_bank_size: int = 1024  # conditional: training condition vectors to draw unrequested labels from

    def __post_init__(self):
        names = []
        for c in self.conditions:
            name = canonical_label(str(c))
            if name is None:
                raise ValueError(f"conditions: unknown label {c!r}; known labels: {', '.join(LABELS)}")
            if name in names:
                raise ValueError(f"conditions: {name} is named twice")
            names.append(name)
        self.conditions = tuple(names)
        if not 0 <= self.vae_fraction < 1:
            raise ValueError(f"vae_fraction must be in [0, 1) (0: VAE and DDPM side by side), got {self.vae_fraction}")
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
    """The white paper's term ``mean_i ||f(x0_i) - f(x0_hat_i)||`` (L2-normalised embeddings) over the items with
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


class DiffuseVAE(LabelBankMixin, Trainable, Generator):
    name = "diffusevae"
    Config = DiffuseVAEConfig
    # folders saved before the conditions and the stages: unconditional, trained side by side
    legacy_config: ClassVar[dict] = {"conditions": [], "vae_fraction": 0.0}

    def __init__(self, config: DiffuseVAEConfig):
        super().__init__(config)
        c = config
        k = len(c.conditions)
        self.columns = [LABELS.index(name) for name in c.conditions]
        self.vae = VAE(VAEConfig(image_size=c.image_size, channels=tuple(c.vae_channels), z_dim=c.vae_z_dim,
                                 beta=c.vae_beta, lr=c.lr, batch_size=c.batch_size), label_dim=k)
        self.unet = make_unet(c, in_channels=2, class_conditional=k > 0)
        # the condition vector into the UNet's time embedding (UNet2DModel's width: 4 x the first block's)
        self.label_proj = nn.Linear(k, c.block_out_channels[0] * 4) if k else None
        if k:
            self.register_buffer("label_bank", torch.zeros(c.label_bank_size, len(LABELS)))
        # 0: VAE and DDPM side by side (vae_fraction = 0); 1: the VAE alone; 2: the DDPM on the frozen VAE
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_pre_hook(_stage_for_old_folders)
        self.noise_scheduler, self.sampler = make_schedulers(c)
        self._rep = None  # loaded on first use; frozen and kept out of the state dict (it is not ours)
        attach_ema(self, ("vae", "unet", "label_proj") if k else ("vae", "unet"), decay=c.ema_decay,
                   power=c.ema_power)

    @property
    def conditional(self) -> bool:
        return bool(self.config.conditions)

    # --- conditions ------------------------------------------------------------------------------------------
    def condition_vector(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """``(B, 15)`` labels (NaN: absent) -> ``(B, len(conditions))`` 0/1; None for an unconditional model."""
        if not self.conditional:
            return None
        return torch.nan_to_num(labels[:, self.columns].float(), nan=0.0).clamp(0, 1)

    def requested(self, labels, n: int) -> torch.Tensor:
        """Requested ``(n, 15)`` labels, refused where they name a finding outside ``conditions``."""
        lab = label_matrix(labels, n)
        others = [j for j in range(len(LABELS)) if j not in self.columns and bool(lab[:, j].any())]
        if others:
            raise UsageError(
                f"diffusevae generates {', '.join(self.config.conditions)} (conditions of its config); "
                f"{', '.join(LABELS[j] for j in others)} requested: drop them, or train with those conditions"
            )
        return lab

    def on_train_start(self, dataset) -> None:
        if self.conditional:
            LabelBankMixin.on_train_start(self, dataset)
            keep = torch.zeros(len(LABELS), dtype=torch.bool)
            keep[self.columns] = True
            self.label_bank[:, ~keep] = 0  # draws name only what the model generates
        if not self.config.init_from:
            return
        try:
            first = DiffuseVAE.from_pretrained(self.config.init_from)
            self.load_state_dict(first.state_dict())
        except (CxrbenchError, RuntimeError) as e:
            raise UsageError(
                f"init_from {self.config.init_from}: {str(e).splitlines()[0][:200]}; it must be a diffusevae "
                "folder with the same architecture fields (only rep_*, lr, grad_clip, ema_*, vae_fraction and "
                "init_from may differ)"
            ) from None
        if self.ema is not None:  # the average restarts its warm-up, so that it follows the fine-tune
            self.ema.steps.zero_()

    # --- networks --------------------------------------------------------------------------------------------
    def representation(self, device) -> nn.Module:
        if self._rep is None:
            object.__setattr__(self, "_rep", load_representation(self.config.rep_checkpoint))
        return self._rep.to(device)

    def eps(self, xt, t, cond, y=None):
        emb = self.label_proj(y.to(xt)) if self.label_proj is not None else None
        return self.unet(torch.cat([xt, cond], 1), t, class_labels=emb).sample

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # not the EMA copy
        return {"adam": torch.optim.Adam(params, lr=self.config.lr)}

    @torch.no_grad()
    def condition(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The DDPM's training condition in [-1, 1]: the VAE's decoding of a posterior sample of each image."""
        mu, logvar = self.vae.encode(images, y)
        return self.vae.decode(mu + torch.randn_like(mu) * (0.5 * logvar).exp(), y) * 2 - 1

    def diffusion_losses(self, images: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cond = self.condition(images, y)
        x0 = images * 2 - 1
        diff, x0_hat, t = denoise_loss(lambda xt, t: self.eps(xt, t, cond, y), x0, self.noise_scheduler)
        out = {"loss": diff, "diffusion": diff}
        if self.config.rep_lambda > 0:
            t_max = round(self.config.rep_max_t * self.config.num_train_timesteps)
            rep = representation_loss(self.representation(images.device), images, x0_hat, t, t_max)
            out["rep"] = rep
            out["loss"] = out["loss"] + self.config.rep_lambda * rep
        return out

    def losses(self, images: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Both stages' losses side by side (``vae_fraction = 0``); ``y``: condition vectors."""
        vae = self.vae.loss(images, y)
        out = self.diffusion_losses(images, y)
        out.update(loss=out["loss"] + vae["loss"], vae_rec=vae["rec"], vae_kl=vae["kl"])
        return out

    # --- training --------------------------------------------------------------------------------------------
    def training_stage(self) -> int:
        """The stage of the step about to train: from the budget used (``progress``), never going back."""
        c = self.config
        if c.vae_fraction == 0:
            return 0
        want = 2 if c.init_from or self.progress >= c.vae_fraction else 1
        return max(want, int(self.stage))

    def _freeze_vae(self) -> None:
        """Stage 2 starts: the VAE takes its averaged weights, so that the frozen VAE the DDPM learns on is
        the one that samples (the average of a constant stays that constant)."""
        if self.ema is not None and not self.config.init_from:
            self.vae.load_state_dict(self.ema.averaged["vae"].state_dict())

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        stage = self.training_stage()
        if stage == 2 and int(self.stage) != 2:
            self._freeze_vae()
        self.stage.fill_(stage)
        y = self.condition_vector(batch.labels)
        if stage == 0:
            losses = self.losses(batch.images, y)
        elif stage == 1:
            vae = self.vae.loss(batch.images, y)
            losses = {"loss": vae["loss"], "vae_rec": vae["rec"], "vae_kl": vae["kl"]}
        else:
            self.vae.eval()  # frozen: BatchNorm statistics stay, the decoder is the one that samples
            losses = self.diffusion_losses(batch.images, y)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        # only what this stage trains has gradients; Adam leaves parameters without one untouched
        grad_norm = clip_gradients(self.parameters(), self.config.grad_clip)
        opt.step()
        if self.ema is not None:
            self.ema.update()
        return {**{k: v.item() for k, v in losses.items()}, "grad_norm": grad_norm, "stage": float(stage)}

    # --- sampling --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refine(self, x_vae: torch.Tensor, y: torch.Tensor | None = None, *, seed: int | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Stage 2: DDIM conditioned on VAE images in [0, 1] (and condition vectors ``y``); returns [0, 1]."""
        cond = x_vae * 2 - 1
        with averaged_weights(self):
            x = ddim_loop(lambda xt, t: self.eps(xt, t, cond, y), tuple(cond.shape), self.sampler,
                          steps or self.config.sample_steps, seed=seed, device=cond.device)
        return ((x.clamp(-1, 1) + 1) / 2).float()

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None, steps: int | None = None) -> torch.Tensor:
        if not self.conditional and labels is not None:
            raise UsageError("this diffusevae is unconditional (conditions = []): sample without labels")
        dev = next(self.parameters()).device
        y = None
        if self.conditional:
            lab = self.draw_labels(n, seed=seed) if labels is None else self.requested(labels, n)
            y = self.condition_vector(lab).to(dev)
        was_training = self.training
        self.eval()
        with averaged_weights(self):
            x_vae = self.vae.sample(n, labels=y, seed=seed).to(dev)
            # a different stream for the diffusion noise than for z (seed + a large odd constant)
            x = self.refine(x_vae, y, seed=None if seed is None else seed + 1_000_003, steps=steps)
        self.train(was_training)
        return x

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, labels=None, seed: int | None = None,
                    steps: int | None = None) -> torch.Tensor:
        """Paired mode: each image -> VAE posterior mean -> decoder -> DDIM refinement (same shape, [0, 1]).

        ``labels``: the images' ``(N, 15)`` labels (NaN: absent; findings outside ``conditions`` ignored),
        needed by a conditional model. The posterior mean, not a sample, so that a reconstruction depends on
        ``seed`` through the DDIM noise only.
        """
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
            raise UsageError(f"reconstruct needs (N, 1, {size}, {size}) images, got {tuple(images.shape)}")
        if self.conditional and labels is None:
            raise UsageError(
                f"diffusevae is conditional on {', '.join(self.config.conditions)}: reconstruct needs the "
                "images' labels (a labels.csv next to them)"
            )
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        y = None
        if self.conditional:
            y = self.condition_vector(torch.as_tensor(labels, dtype=torch.float32).reshape(len(images), -1)).to(dev)
        with averaged_weights(self):
            mu, _ = self.vae.encode(images.to(dev), y)
            x = self.refine(self.vae.decode(mu, y), y, seed=seed, steps=steps)
        self.train(was_training)
        return x


def _stage_for_old_folders(module, state_dict, prefix, *args) -> None:
    # folders saved before the stages trained VAE and DDPM side by side
    state_dict.setdefault(prefix + "stage", torch.zeros((), dtype=torch.long))
