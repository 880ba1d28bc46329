"""Progressive growing GAN (Karras et al. 2018), as Malik & Humair ("Evaluating the feasibility of using
Generative Models to generate Chest X-Ray Data", LUMS) and Segal et al. ("Synthesising clinically realistic
Chest X-rays using GANs", arXiv 2010.03975, 2020) use it for CXR14, plus Segal et al.'s latent-space
optimisation toward a class.

The network and training follow Karras et al.:

- the generator starts at 4 x 4 and doubles the resolution one level at a time up to ``image_size``; each
  level is nearest upsampling + two 3x3 convolutions with LeakyReLU(0.2) and pixel-wise feature
  normalisation, plus a 1x1 "toRGB" (here to one grey channel); the discriminator mirrors it with
  "fromRGB", two 3x3 convolutions and average pooling, and ends with the minibatch standard-deviation
  feature, a 3x3 convolution and two dense layers;
- equalised learning rate: weights are drawn N(0, 1) and scaled at run time by He's constant;
- a new level fades in: its output is blended with the upsampled output of the level below with a weight
  alpha going 0 -> 1 over one phase (and the real images are blended the same way), then the level trains
  stabilised for one phase; ``levels = log2(image_size / 4)``. The phases are laid out over the training
  budget (``phase_steps = 0``, the default): the first ``1 - final_fraction`` of the budget holds the 2 *
  levels phases (stabilise 4 px, then fade in and stabilise each level), each an equal share, and the last
  ``final_fraction`` (a quarter) trains the full resolution at alpha = 1, whatever the budget is in (steps,
  epochs, CPU or wall minutes; the trainer's ``progress``). Fixed phases (``phase_steps > 0``, Karras:
  800k images) reach full resolution after ``2 * levels * phase_steps`` steps only: a budget that ends
  before stops inside a fade-in (a 15-CPU-minute PGGAN-64 with 150-step phases was scored at alpha 0.29);
- WGAN-GP loss (gradient penalty 10 on interpolates) plus the drift term 0.001 * E[D(x)^2]; Adam lr 1e-3,
  betas (0, 0.99); one discriminator and one generator update per step;
- samples come from an exponential moving average of the generator weights with Karras's half-life of
  ``ema_kimg`` = 10 thousand images (per step ``beta = 0.5 ** (batch_size / half_life)``, 0.999 at batch 16),
  ramped up within each level: the half-life is at most ``ema_rampup`` (5%) of the images the current level
  has trained on (as StyleGAN2-ADA's ``ema_rampup``, counted per level here). A new block starts at its
  initial weights in the average too; with a fixed 0.999 and a level of 100-200 steps (CPU runs) its toRGB
  would stay ~97% at its initial value, and the samples with it. ``ema_kimg = 0`` samples the trained
  generator itself; ``ema_decay`` (folders saved before this schedule) fixes the per-step decay instead;
- channels per level ``min(fmap_base / 2**(level + 1), fmap_max)`` (Karras: 8192 and 512).

Conditional variant (``conditional = true``, in none of the source papers): the 15-label vector is concatenated to the
normalised latent in the generator, and the discriminator gets a projection term (Miyato & Koyama 2018)
``<embed(y), h>`` on its last hidden features.

Segal et al. train an *unconditional* PGGAN and then steer samples toward a pathology by
optimising the latent vector against a classifier: :meth:`PGGAN.optimize_toward` does gradient ascent on
log p(class | G(z)) over z with Adam. The classifier is any callable mapping images ``(N, 1, H, W)`` in
[0, 1] to per-class probabilities ``(N, C)`` (logits are accepted too: outputs outside [0, 1] go through
log-sigmoid) with ``feature_names`` naming the classes; a cxrbench ``FeatureExtractor`` of kind
"probabilities" (the ``xrv-classifier``: torchxrayvision's 18 pathologies) is applied as
``forward(preprocess(x))`` so that gradients reach z. ``cxrbench sample RUN --optimize-toward Pneumonia``
uses it.

Before full resolution is reached (a short run) ``sample`` returns the current level's output upsampled
(nearest) to ``image_size``, so the image contract holds at every stage.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.labels import LABELS, canonical_label
from cxrbench.errors import UsageError
from cxrbench.generator import Generator
from cxrbench.seeding import torch_generator

from .trainer import Batch, LabelBankMixin, Trainable, label_matrix


@dataclass
class PGGANConfig:
    image_size: int = 256
    z_dim: int = 512
    fmap_base: int = 8192
    fmap_max: int = 512
    phase_steps: int = 0  # steps per fade-in and per stabilisation phase; 0: phases laid out over the budget
    final_fraction: float = 0.25  # phase_steps = 0: the budget's share at full resolution with alpha = 1
    lr: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.99
    gp_weight: float = 10.0
    drift: float = 0.001
    mbstd_group: int = 4
    ema_kimg: float = 10.0  # half-life of the generator average in thousands of images (Karras et al.); 0: none
    ema_rampup: float = 0.05  # ... at most this fraction of the images the current level has trained on
    ema_decay: float | None = None  # a fixed per-step decay instead of the two above (0: no average)
    conditional: bool = False
    batch_size: int = 16
    label_bank_size: int = 1024  # conditional: training label vectors to draw unrequested labels from

    def __post_init__(self):
        levels = math.log2(self.image_size / 4) if self.image_size >= 4 else -1
        if levels < 0 or levels != int(levels):
            raise ValueError(f"image_size must be 4 * 2**L (4, 8, 16, 32, ...), got {self.image_size}")
        if self.phase_steps < 0:
            raise ValueError(f"phase_steps must be >= 0 (0: phases laid out over the budget), got {self.phase_steps}")
        if not 0 < self.final_fraction < 1:
            raise ValueError(f"final_fraction must be in (0, 1), got {self.final_fraction}")


# ---------------------------------------------------------------------------------------------------------
# building blocks


class EqualizedConv2d(nn.Module):
    """Conv2d whose N(0, 1) weights are scaled by He's constant at run time (equalised learning rate)."""

    def __init__(self, c_in, c_out, kernel, *, padding=0, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * kernel * kernel)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    def __init__(self, d_in, d_out, *, gain=math.sqrt(2), bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        self.scale = gain / math.sqrt(d_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x, eps=1e-8):
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x, group: int):
    """Append the mean over features of the per-group standard deviation as one more feature map."""
    b, c, h, w = x.shape
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)  # group size dividing the batch
    y = x.view(g, b // g, c, h, w)
    y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (b/g,)
    y = y.view(1, b // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)
    return torch.cat([x, y], dim=1)


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


def _channels(cfg: PGGANConfig) -> list[int]:
    levels = int(math.log2(cfg.image_size // 4))
    return [min(cfg.fmap_base // 2 ** (lv + 1), cfg.fmap_max) for lv in range(levels + 1)]


# ---------------------------------------------------------------------------------------------------------
# networks


class PGGenerator(nn.Module):
    def __init__(self, cfg: PGGANConfig, label_dim: int):
        super().__init__()
        ch = _channels(cfg)
        self.label_dim = label_dim
        self.c0 = ch[0]
        # Karras: the latent -> 4x4 dense layer uses gain sqrt(2)/4
        self.dense = EqualizedLinear(cfg.z_dim + label_dim, ch[0] * 16, gain=math.sqrt(2) / 4)
        self.conv0 = EqualizedConv2d(ch[0], ch[0], 3, padding=1)
        self.blocks = nn.ModuleList([nn.Identity()])
        for lv in range(1, len(ch)):
            self.blocks.append(
                nn.ModuleList(
                    [EqualizedConv2d(ch[lv - 1], ch[lv], 3, padding=1), EqualizedConv2d(ch[lv], ch[lv], 3, padding=1)]
                )
            )
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c, 1, 1, gain=1.0) for c in ch])

    def _block(self, lv, h):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        for conv in self.blocks[lv]:
            h = pixel_norm(_lrelu(conv(h)))
        return h

    def forward(self, z, level: int, alpha: float, labels=None):
        z = pixel_norm(z)
        if self.label_dim:
            z = torch.cat([z, labels.to(z)], dim=1)
        h = pixel_norm(_lrelu(self.dense(z).view(-1, self.c0, 4, 4)))
        h = pixel_norm(_lrelu(self.conv0(h)))
        if level == 0:
            return self.to_rgb[0](h)
        for lv in range(1, level):
            h = self._block(lv, h)
        out = self.to_rgb[level](self._block(level, h))
        if alpha < 1.0:
            skip = F.interpolate(self.to_rgb[level - 1](h), scale_factor=2, mode="nearest")
            out = torch.lerp(skip, out, alpha)
        return out


class PGDiscriminator(nn.Module):
    def __init__(self, cfg: PGGANConfig, label_dim: int):
        super().__init__()
        ch = _channels(cfg)
        self.group = cfg.mbstd_group
        self.from_rgb = nn.ModuleList([EqualizedConv2d(1, c, 1) for c in ch])
        self.blocks = nn.ModuleList([nn.Identity()])
        for lv in range(1, len(ch)):
            self.blocks.append(
                nn.ModuleList(
                    [EqualizedConv2d(ch[lv], ch[lv], 3, padding=1), EqualizedConv2d(ch[lv], ch[lv - 1], 3, padding=1)]
                )
            )
        self.conv_final = EqualizedConv2d(ch[0] + 1, ch[0], 3, padding=1)
        self.dense = EqualizedLinear(ch[0] * 16, ch[0])
        self.out = EqualizedLinear(ch[0], 1, gain=1.0)
        self.embed = EqualizedLinear(label_dim, ch[0], gain=1.0, bias=False) if label_dim else None

    def _block(self, lv, h):
        for conv in self.blocks[lv]:
            h = _lrelu(conv(h))
        return F.avg_pool2d(h, 2)

    def forward(self, x, level: int, alpha: float, labels=None):
        h = _lrelu(self.from_rgb[level](x))
        if level > 0:
            h = self._block(level, h)
            if alpha < 1.0:
                h = torch.lerp(_lrelu(self.from_rgb[level - 1](F.avg_pool2d(x, 2))), h, alpha)
            for lv in range(level - 1, 0, -1):
                h = self._block(lv, h)
        h = _lrelu(self.conv_final(minibatch_stddev(h, self.group)))
        h = _lrelu(self.dense(h.flatten(1)))
        out = self.out(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(labels.to(h)) * h).sum(1)  # projection discriminator
        return out


def _level_start_for_old_folders(module, state_dict, prefix, *args) -> None:
    # folders saved before the budget schedule have fixed phases, where ema_beta does not read it
    state_dict.setdefault(prefix + "level_start", torch.zeros((), dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# classifier guidance (Segal et al.)


def class_index(classifier, label: str) -> int:
    """Index of ``label`` among the classifier's ``feature_names`` (case, spaces and underscores ignored)."""
    names = getattr(classifier, "feature_names", None) or getattr(classifier, "pathologies", None)
    if not names:
        raise UsageError("the classifier names no classes (feature_names); cannot optimise toward a label")

    def key(s):
        return str(s).lower().replace("_", " ").strip()

    wanted = {key(label), key(canonical_label(label) or label)}
    for i, nm in enumerate(names):
        if key(nm) in wanted:
            return i
    raise UsageError(f"label {label!r} is not among the classifier's classes: {', '.join(map(str, names))}")


def class_log_probability(classifier, images: torch.Tensor, index: int) -> torch.Tensor:
    """log p(class | image) per image, differentiable in ``images`` ((N, 1, H, W) in [0, 1])."""
    if hasattr(classifier, "preprocess"):
        out = classifier.forward(classifier.preprocess(images))
    else:
        out = classifier(images)
    out = out[:, index]
    if out.detach().min() >= 0 and out.detach().max() <= 1:
        return out.clamp_min(1e-6).log()
    return F.logsigmoid(out)  # logits


# ---------------------------------------------------------------------------------------------------------
# model


class PGGAN(LabelBankMixin, Trainable, Generator):
    name = "pggan"
    Config = PGGANConfig

    def __init__(self, config: PGGANConfig):
        super().__init__(config)
        label_dim = len(LABELS) if config.conditional else 0
        self.levels = int(math.log2(config.image_size // 4))
        self.generator = PGGenerator(config, label_dim)
        self.discriminator = PGDiscriminator(config, label_dim)
        use_ema = config.ema_kimg > 0 if config.ema_decay is None else config.ema_decay > 0
        self.g_ema = copy.deepcopy(self.generator).requires_grad_(False) if use_ema else None
        # where training stands (saved with the weights, so a sampled model knows its resolution)
        self.register_buffer("level", torch.zeros((), dtype=torch.long))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("level_start", torch.zeros((), dtype=torch.long))  # step the level's fade-in began
        self.register_load_state_dict_pre_hook(_level_start_for_old_folders)
        if config.conditional:
            self.register_buffer("label_bank", torch.zeros(config.label_bank_size, len(LABELS)))

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    def schedule_at(self, progress: float) -> tuple[int, float]:
        """(level, alpha) when ``progress`` of the budget is used (``phase_steps = 0``): 2 * levels equal
        phases in the first ``1 - final_fraction``, then the full resolution at alpha = 1."""
        grow = 1.0 - self.config.final_fraction
        if self.levels == 0 or progress >= grow:
            return self.levels, 1.0
        phase_len = grow / (2 * self.levels)
        phase = min(int(progress / phase_len), 2 * self.levels - 1)  # rounding at the boundary
        level = (phase + 1) // 2
        alpha = min((progress - phase * phase_len) / phase_len, 1.0) if phase % 2 else 1.0
        return level, alpha

    def current_schedule(self, step: int) -> tuple[int, float]:
        """(level, alpha) of the step about to train: by steps, or by the trainer's ``progress``."""
        return self.schedule(step) if self.config.phase_steps else self.schedule_at(self.progress)

    def schedule(self, step: int) -> tuple[int, float]:
        """(level, alpha) at ``step`` with fixed ``phase_steps``: stabilise level 0, then fade in and stabilise
        each further level."""
        phase = step // self.config.phase_steps
        if phase >= 2 * self.levels:
            return self.levels, 1.0
        level = (phase + 1) // 2
        alpha = (step % self.config.phase_steps) / self.config.phase_steps if phase % 2 else 1.0
        return level, alpha

    def ema_beta(self, step: int) -> float:
        """The EMA's decay at ``step``: half-life ``ema_kimg``, ramped up over the current level's images."""
        c = self.config
        if c.ema_decay is not None:
            return c.ema_decay
        if c.phase_steps:
            level, _ = self.schedule(step)
            level_start = max(0, 2 * level - 1) * c.phase_steps  # a level's fade-in starts at phase 2 * level - 1
        else:
            level_start = int(self.level_start)
        half_life = min(c.ema_kimg * 1000, c.ema_rampup * (step - level_start + 1) * c.batch_size)
        return 0.5 ** (c.batch_size / max(half_life, 1e-8))

    def on_train_start(self, dataset) -> None:
        if self.conditional:
            LabelBankMixin.on_train_start(self, dataset)

    def configure_optimizers(self):
        c = self.config
        kw = dict(lr=c.lr, betas=(c.beta1, c.beta2), eps=1e-8)
        return {
            "g": torch.optim.Adam(self.generator.parameters(), **kw),
            "d": torch.optim.Adam(self.discriminator.parameters(), **kw),
        }

    def _reals(self, images, level, alpha):
        x = images * 2 - 1
        x = F.avg_pool2d(x, 2 ** (self.levels - level)) if level < self.levels else x
        if alpha < 1.0:  # blend the reals as the fake outputs are blended
            x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, alpha)
        return x

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c = self.config
        level, alpha = self.current_schedule(step)
        if level != int(self.level):
            self.level_start.fill_(step)
        self.level.fill_(level)
        self.alpha.fill_(alpha)
        real = self._reals(batch.images, level, alpha)
        b = real.shape[0]
        y = torch.nan_to_num(batch.labels, nan=0.0) if self.conditional else None
        G, D = self.generator, self.discriminator

        # discriminator: WGAN-GP + drift
        z = torch.randn(b, c.z_dim, device=real.device)
        with torch.no_grad():
            fake = G(z, level, alpha, y)
        d_real, d_fake = D(real, level, alpha, y), D(fake, level, alpha, y)
        eps = torch.rand(b, 1, 1, 1, device=real.device)
        mix = torch.lerp(fake, real, eps).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(mix, level, alpha, y).sum(), mix, create_graph=True)
        gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        wdist = d_real.mean() - d_fake.mean()
        d_loss = -wdist + c.gp_weight * gp + c.drift * d_real.pow(2).mean()
        optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["d"].step()

        # generator
        z = torch.randn(b, c.z_dim, device=real.device)
        g_loss = -D(G(z, level, alpha, y), level, alpha, y).mean()
        optimizers["g"].zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers["g"].step()

        if self.g_ema is not None:
            beta = self.ema_beta(step)
            with torch.no_grad():
                for pe, p in zip(self.g_ema.parameters(), G.parameters()):
                    pe.lerp_(p, 1.0 - beta)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "gp": gp.item(), "wdist": wdist.item(),
                "level": float(level), "alpha": float(alpha)}

    # --- sampling ------------------------------------------------------------------------------------------

    def _labels_for(self, n, labels, seed):
        if not self.conditional:
            if labels is not None:
                raise UsageError("this pggan is unconditional: sample without labels (or use optimize_toward)")
            return None
        return self.draw_labels(n, seed=seed) if labels is None else label_matrix(labels, n)

    def render(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Latents -> images ``(N, 1, image_size, image_size)`` in [0, 1]; differentiable in ``z``."""
        net = self.g_ema if self.g_ema is not None else self.generator
        level, alpha = int(self.level), float(self.alpha)
        x = net(z, level, alpha, labels)
        if level < self.levels:
            x = F.interpolate(x, scale_factor=2 ** (self.levels - level), mode="nearest")
        return ((x.float() + 1) / 2).clamp(0, 1)

    def _latents(self, n, seed):
        g = torch_generator(seed) if seed is not None else None
        return torch.randn(n, self.config.z_dim, generator=g).to(self.level.device)

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None) -> torch.Tensor:
        labels = self._labels_for(n, labels, seed)
        z = self._latents(n, seed)
        return self.render(z, None if labels is None else labels.to(z.device))

    def optimize_toward(self, label: str, n: int, *, classifier, steps: int = 100, lr: float = 0.05,
                        seed: int | None = None, labels=None) -> tuple[torch.Tensor, dict]:
        """Segal et al.: optimise ``n`` latents so that ``classifier`` finds ``label`` in G(z).

        Returns the images ``(n, 1, S, S)`` in [0, 1] and ``{"log_p_start", "log_p_end"}`` (mean over images).
        """
        idx = class_index(classifier, label)
        y = self._labels_for(n, labels, seed)
        y = None if y is None else y.to(self.level.device)
        z = self._latents(n, seed).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        start = None
        with torch.enable_grad():
            for _ in range(steps):
                log_p = class_log_probability(classifier, self.render(z, y), idx)
                start = log_p.mean().item() if start is None else start
                (grad,) = torch.autograd.grad(-log_p.sum(), z)  # only z: the networks stay untouched
                opt.zero_grad(set_to_none=True)
                z.grad = grad
                opt.step()
        with torch.no_grad():
            images = self.render(z, y)
            end = class_log_probability(classifier, images, idx).mean().item()
        return images, {"log_p_start": start if start is not None else end, "log_p_end": end}
