"""Latent diffusion conditioned on text prompts, trained from scratch by default (RoentGen-style prompts).

Malik & Humair, "Evaluating the feasibility of using Generative Models to generate Chest X-Ray Data" (LUMS),
fine-tuned Stable Diffusion 2.1 with DreamBooth on NIH images whose prompts name their findings, then again
with a position word ("top left", ...) derived from the NIH bounding boxes. No Stable Diffusion weights can be
had on these machines, so the model that trains by default (and the leaderboard's "LDM" rows) is **not** that
fine-tune: it is a small latent diffusion model (about 4.1M parameters at 64 px) trained from scratch on the
same kind of prompts; its recipes name it "latent diffusion from scratch". The fine-tune is the
``pretrained_dir`` path below, for a machine that has the weights. Here:

- prompts: ``"chest x-ray, edema, effusion, bottom right"`` -- the fixed prefix, the findings (LABELS names,
  any case; "pleural thickening" and the other aliases of ``cxrbench.data.labels`` accepted) and at most one
  position of a 3 x 3 grid (:data:`POSITIONS`). A prompt is built from a training image's label vector and,
  when the image has a box, its position (:func:`bbox_position`: the centre of the image's first box in
  ``BBox_List_2017.csv.gz``, which torchxrayvision ships; image coordinates, so "left" is the image's left,
  the patient's right). A ``position`` column in the training labels.csv takes precedence over the table.
- offline (the default, what the tests run): everything trains from scratch -- a small diffusers
  ``AutoencoderKL`` (1 channel in and out; reconstruction MSE + ``kl_weight`` KL), a tiny text encoder (a
  word-level tokenizer over the closed vocabulary of prefix + label + position words, token embeddings
  and a transformer layer; no positional encoding, as the prompt is a set of findings) and a
  ``UNet2DConditionModel`` that cross-attends to the text. The three train side by side from one budget: the
  UNet learns on the autoencoder's current latents (detached), scaled to unit variance by a running
  estimate kept with the weights (``latent_std``).
- pretrained (``pretrained_dir``: a local diffusers Stable Diffusion / RoentGen folder with vae/, unet/,
  text_encoder/, tokenizer/, scheduler/; needs ``transformers``): Malik & Humair's DreamBooth-style fine-tune -- the
  UNet trains on (prompt, image) pairs, the autoencoder and CLIP text encoder stay frozen; grey images are
  repeated to 3 channels on the way in and averaged on the way out. The noise schedule and the prediction
  type (epsilon for SD 1.x / 2.x-base, v for SD 2.x at 768 px) are the folder's ``scheduler/`` config, which
  the UNet was trained with (``num_train_timesteps`` and ``beta_schedule`` of the Config are then unused);
  DDIM sampling keeps "trailing" spacing. Tested on a tiny SD-style folder saved with diffusers'
  ``save_pretrained`` (no real weights here); its ``model.pt`` holds the full pipeline's weights.

As in ``baselines/ddpm.py``: gradients clipped to ``grad_clip``; sampling uses the EMA of the trained
weights (UNet, and the text encoder when it trains; ``ema_decay``; 0 samples the trained weights).

Classifier-free guidance as in ``baselines/ddpm.py``: the prompt is replaced by the empty prompt with
probability ``cond_drop`` in training; sampling mixes the two predictions with ``guidance_scale``.
``sample(n, labels=...)`` builds label prompts; ``sample(n, prompts=[...])`` takes prompts as text
(``cxrbench sample RUN --prompt "chest x-ray, effusion, bottom right"``).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import nn

from cxrbench.data.labels import LABELS, canonical_label
from cxrbench.errors import DataError, UsageError, WeightsError
from cxrbench.generator import Generator

from .ddpm import ddim_loop, denoise_loss, make_schedulers
from .trainer import (
    Batch,
    LabelBankMixin,
    Trainable,
    _TrainDescriptor,
    attach_ema,
    averaged_weights,
    clip_gradients,
    label_matrix,
)

PREFIX = "chest x-ray"
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
# the 3 x 3 grid, row-major; the middle cell is plain "center"
POSITIONS = tuple("center" if (r, c) == ("middle", "center") else f"{r} {c}" for r in ROWS for c in COLS)
LABEL_WORDS = tuple(lab.replace("_", " ").lower() for lab in LABELS)
VOCAB = ("<pad>", PREFIX) + LABEL_WORDS + POSITIONS  # token id = index
NIH_SIZE = 1024  # NIH ChestX-ray14 images (and their box coordinates) are 1024 x 1024


@dataclass
class LDMConfig:
    image_size: int = 64
    # autoencoder: one 2x downsampling per block after the first
    ae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    kl_weight: float = 1e-6
    # UNet on the latents
    block_out_channels: tuple[int, ...] = (64, 128)
    layers_per_block: int = 1
    norm_groups: int = 32
    # text encoder
    text_dim: int = 64
    text_layers: int = 1
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # Stable Diffusion's
    sample_steps: int = 50
    cond_drop: float = 0.1
    guidance_scale: float = 3.0
    lr: float = 2e-4
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    ema_decay: float = 0.9999  # largest EMA decay; 0: sample the trained weights
    ema_power: float = 0.75  # EMA warm-up: decay 1 - (1 + step) ** -power, capped at ema_decay
    batch_size: int = 32
    label_bank_size: int = 1024
    pretrained_dir: str | None = None  # a local diffusers SD / RoentGen folder -> DreamBooth-style fine-tune

    def __post_init__(self):
        if self.image_size % (2 ** (len(self.ae_channels) - 1) * 2 ** (len(self.block_out_channels) - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by the autoencoder's and the UNet's "
                f"downsampling (ae_channels {tuple(self.ae_channels)}, "
                f"block_out_channels {tuple(self.block_out_channels)})"
            )
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")


# ---------------------------------------------------------------------------------------------------------
# prompts


def known_words() -> str:
    return f"labels: {', '.join(LABEL_WORDS)}; positions: {', '.join(POSITIONS)}"


def parse_prompt(prompt: str) -> tuple[torch.Tensor, str | None]:
    """``"chest x-ray, edema, bottom right"`` -> (15-d 0/1 label vector, position or None)."""
    y = torch.zeros(len(LABELS))
    position = None
    for raw in prompt.split(","):
        word = " ".join(raw.strip().lower().split())
        if not word or word in (PREFIX, "chest x ray", "chest xray"):
            continue
        if word in POSITIONS:
            if position is not None and position != word:
                raise UsageError(f"prompt {prompt!r}: give at most one position ({position!r} and {word!r})")
            position = word
            continue
        lab = canonical_label(word)
        if lab is None:
            raise UsageError(f"prompt {prompt!r}: unknown word {raw.strip()!r}; known {known_words()}")
        y[LABELS.index(lab)] = 1.0
    return y, position


def make_prompt(labels, position: str | None = None) -> str:
    """The prompt of one image: prefix, its findings in LABELS order, its position if any."""
    words = [PREFIX] + [LABEL_WORDS[j] for j, v in enumerate(torch.as_tensor(labels).tolist()) if v == 1]
    return ", ".join(words + ([position] if position else []))


def position_of_box(x: float, y: float, w: float, h: float, *, size: float = NIH_SIZE) -> str:
    """The grid cell holding the box centre (image coordinates)."""
    col = min(2, max(0, int(3 * (x + w / 2) / size)))
    row = min(2, max(0, int(3 * (y + h / 2) / size)))
    return POSITIONS[3 * row + col]


@lru_cache(maxsize=1)
def bbox_positions() -> dict[str, str]:
    """NIH image index -> position word, from torchxrayvision's ``BBox_List_2017.csv.gz`` (first box per image)."""
    import torchxrayvision

    path = Path(torchxrayvision.__file__).parent / "data" / "BBox_List_2017.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: missing; reinstall torchxrayvision (it ships the NIH bounding boxes)")
    with gzip.open(path, "rt") as f:
        df = pd.read_csv(f)
    x, y, w, h = (df.iloc[:, k].astype(float) for k in (2, 3, 4, 5))  # "Bbox [x", "y", "w", "h]"
    out: dict[str, str] = {}
    for idx, *box in zip(df["Image Index"], x, y, w, h):
        out.setdefault(str(idx), position_of_box(*box))
    return out


class WithPositions(torch.utils.data.Dataset):
    """An ImageFolder's items with a 16th label column: the index of the image's position in POSITIONS, NaN if none."""

    def __init__(self, dataset, positions: list[str | None]):
        self.dataset, self.positions = dataset, positions

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, labels = self.dataset[i]
        pos = self.positions[i]
        extra = torch.tensor([float("nan") if pos is None else float(POSITIONS.index(pos))])
        return image, torch.cat([torch.as_tensor(labels, dtype=torch.float32), extra])


def with_positions(dataset):
    """Attach positions to a labelled image folder (a ``position`` column of its labels, else the NIH boxes)."""
    ids = getattr(dataset, "ids", None)
    if ids is None:
        return dataset  # plain tensors: no file names to look boxes up by
    df = getattr(dataset, "labels", None)
    if df is not None and "position" in df.columns:
        positions = []
        for i, v in enumerate(df["position"].tolist()):
            word = None if pd.isna(v) or not str(v).strip() else " ".join(str(v).lower().split())
            if word is not None and word not in POSITIONS:
                raise DataError(f"labels row {i} ({ids[i]}): unknown position {v!r}; known: {', '.join(POSITIONS)}")
            positions.append(word)
    else:
        table = bbox_positions()
        positions = [table.get(Path(str(p)).name) for p in ids]
    return WithPositions(dataset, positions)


class _TrainWithPositions(_TrainDescriptor):
    """``LDM.train(dataset, ...)`` attaches positions to the dataset first; instances keep nn.Module.train."""

    def __get__(self, obj, cls):
        train = super().__get__(obj, cls)
        if obj is not None:
            return train
        return lambda dataset, config=None, out_dir=None, **kw: train(with_positions(dataset), config, out_dir, **kw)


# ---------------------------------------------------------------------------------------------------------
# text encoders


class WordTextEncoder(nn.Module):
    """Closed-vocabulary text encoder: one token per prompt word (phrase), embeddings + a transformer layer."""

    max_len = 1 + len(LABELS) + 1  # prefix, every label, a position

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(dim, nhead=max(1, dim // 32), dim_feedforward=2 * dim, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            y, pos = parse_prompt(p)
            words = [PREFIX] + [LABEL_WORDS[j] for j in torch.nonzero(y).flatten().tolist()] + ([pos] if pos else [])
            ids[i, : len(words)] = torch.tensor([VOCAB.index(w) for w in words])
        return ids

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenize(prompts).to(self.embed.weight.device)
        mask = ids != 0  # the prefix is always there, so no row is all padding
        h = self.encoder(self.embed(ids), src_key_padding_mask=~mask)
        return h, mask


class CLIPTextEncoder(nn.Module):
    """A pretrained pipeline's tokenizer + CLIP text model (frozen), for the fine-tuning path."""

    def __init__(self, folder: Path):
        super().__init__()
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise WeightsError("pretrained_dir needs the transformers package: pip install transformers") from None
        self.tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        self.model = CLIPTextModel.from_pretrained(folder / "text_encoder").requires_grad_(False)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in prompts:
            parse_prompt(p)  # the same vocabulary check as offline
        tok = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        ids = tok.input_ids.to(self.model.device)
        return self.model(ids)[0], torch.ones_like(ids, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------------
# model


class LDM(LabelBankMixin, Trainable, Generator):
    name = "ldm"
    Config = LDMConfig
    conditional = True
    train = _TrainWithPositions()
    parse_prompt = staticmethod(parse_prompt)  # `cxrbench sample --prompt` checks prompts through the model

    def __init__(self, config: LDMConfig):
        super().__init__(config)
        c = config
        self.noise_scheduler, self.sampler = make_schedulers(c, clip=False)  # latents are unbounded
        self.register_buffer("label_bank", torch.zeros(c.label_bank_size, len(LABELS)))
        self.register_buffer("latent_std", torch.ones(()))
        if c.pretrained_dir:
            self._build_pretrained(Path(c.pretrained_dir))
        else:
            self._build_offline()
        # the frozen CLIP text encoder needs no average
        names = ("unet",) if c.pretrained_dir else ("unet", "text_encoder")
        attach_ema(self, names, decay=c.ema_decay, power=c.ema_power)

    def _build_offline(self) -> None:
        c = self.config
        n_ae = len(c.ae_channels)
        self.autoencoder = AutoencoderKL(
            in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n_ae,
            up_block_types=("UpDecoderBlock2D",) * n_ae, block_out_channels=tuple(c.ae_channels),
            layers_per_block=1, latent_channels=c.latent_channels, norm_num_groups=c.norm_groups,
            sample_size=c.image_size,
        )
        self.text_encoder = WordTextEncoder(c.text_dim, c.text_layers)
        n = len(c.block_out_channels)
        self.unet = UNet2DConditionModel(
            sample_size=c.image_size // 2 ** (n_ae - 1),
            in_channels=c.latent_channels, out_channels=c.latent_channels,
            block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=c.text_dim, attention_head_dim=min(8, c.block_out_channels[0]),
            norm_num_groups=c.norm_groups,
        )

    def _build_pretrained(self, folder: Path) -> None:
        for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
            if not (folder / sub).is_dir():
                raise WeightsError(
                    f"{folder / sub}: missing; pretrained_dir must be a diffusers Stable Diffusion folder"
                )
        # the schedule and prediction type the UNet was trained with; latents are never clipped
        self.noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", clip_sample=False)
        self.sampler = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing")
        self.autoencoder = AutoencoderKL.from_pretrained(folder / "vae").requires_grad_(False)
        self.unet = UNet2DConditionModel.from_pretrained(folder / "unet")
        self.text_encoder = CLIPTextEncoder(folder)
        self.latent_std.fill_(1.0 / self.autoencoder.config.scaling_factor)

    def on_train_start(self, dataset) -> None:
        # the label bank holds the 15 label columns; WithPositions adds a 16th
        LabelBankMixin.on_train_start(self, dataset.dataset if isinstance(dataset, WithPositions) else dataset)

    # --- image <-> latent ----------------------------------------------------------------------------------
    @property
    def pretrained(self) -> bool:
        return bool(self.config.pretrained_dir)

    def encode(self, images: torch.Tensor):
        x = images * 2 - 1
        if self.pretrained:
            x = x.repeat(1, self.autoencoder.config.in_channels, 1, 1)
        return self.autoencoder.encode(x).latent_dist

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.autoencoder.decode(z * self.latent_std).sample
        if self.pretrained:
            x = x.mean(1, keepdim=True)
        return ((x + 1) / 2).clamp(0, 1)

    def prompts_for(self, labels: torch.Tensor) -> list[str]:
        """Prompts of a batch: label columns 0-14, and column 15 (if present) the POSITIONS index or NaN."""
        out = []
        for row in labels.detach().cpu():
            pos = None
            if row.numel() > len(LABELS) and not math.isnan(row[len(LABELS)].item()):
                pos = POSITIONS[int(row[len(LABELS)].item())]
            out.append(make_prompt(torch.nan_to_num(row[: len(LABELS)], nan=0.0), pos))
        return out

    # --- training ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return {"adam": torch.optim.Adam(params, lr=self.config.lr)}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c = self.config
        prompts = self.prompts_for(batch.labels)
        drop = torch.rand(len(prompts)) < c.cond_drop
        prompts = [PREFIX if d else p for p, d in zip(prompts, drop.tolist())]
        losses = {}
        post = self.encode(batch.images)
        if self.pretrained:
            ae_loss = torch.zeros((), device=batch.images.device)
            z = post.sample()
        else:
            rec = F.mse_loss(self.autoencoder.decode(post.sample()).sample, batch.images * 2 - 1)
            kl = post.kl().mean()
            ae_loss = rec + c.kl_weight * kl
            losses.update(ae_rec=rec.item(), ae_kl=kl.item())
            z = post.sample().detach()
            with torch.no_grad():  # running scale of the latents, so the diffusion sees unit variance
                momentum = 0.0 if step == 0 else 0.99
                self.latent_std.mul_(momentum).add_((1 - momentum) * z.std().clamp_min(1e-3))
        hidden, mask = self.text_encoder(prompts)
        diff, _, _ = denoise_loss(
            lambda zt, t: self.unet(zt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample,
            z / self.latent_std, self.noise_scheduler,
        )
        loss = diff + ae_loss
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.parameters(), c.grad_clip)
        opt.step()
        if self.ema is not None:
            self.ema.update()
        return {"loss": loss.item(), "diffusion": diff.item(), **losses, "grad_norm": grad_norm}

    # --- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, *, labels=None, seed: int | None = None, prompts: str | list[str] | None = None,
        steps: int | None = None, guidance_scale: float | None = None,
    ) -> torch.Tensor:
        if prompts is not None:
            if labels is not None:
                raise UsageError("give labels or prompts, not both")
            prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
            if len(prompts) != n:
                raise UsageError(f"{len(prompts)} prompts for {n} images")
            for p in prompts:
                parse_prompt(p)
        else:
            y = self.draw_labels(n, seed=seed) if labels is None else label_matrix(labels, n)
            prompts = self.prompts_for(y)
        s = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        was_training = self.training
        self.eval()
        with averaged_weights(self):
            x = self._sample(n, prompts, s, steps, seed)
        self.train(was_training)
        return x

    def _sample(self, n, prompts, s, steps, seed) -> torch.Tensor:
        hidden, mask = self.text_encoder(prompts)
        if s != 1.0:
            h_u, m_u = self.text_encoder([PREFIX] * n)
            hidden = torch.cat([h_u, hidden])
            mask = torch.cat([m_u, mask])

        def eps_fn(zt, t):
            if s == 1.0:
                return self.unet(zt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
            e = self.unet(zt.repeat(2, 1, 1, 1), t.repeat(2), encoder_hidden_states=hidden,
                          encoder_attention_mask=mask).sample
            e_u, e_c = e.chunk(2)
            return e_u + s * (e_c - e_u)

        dev = self.latent_std.device
        side = self.unet.config.sample_size
        shape = (n, self.unet.config.in_channels, side, side)
        z = ddim_loop(eps_fn, shape, self.sampler, steps or self.config.sample_steps, seed=seed, device=dev)
        return self.decode(z).float()
