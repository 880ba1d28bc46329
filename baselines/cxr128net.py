"""Training the ``cxr128`` protocol's feature network (``cxrbench train cxr128-net``), and building its files.

The network (``cxrbench.features.cxr128.CXR128Net``) learns from every public radiograph in ``../shared/data``
except the protocol's reference and held-out NIH images and any other image of their patients:

- ``nih_extra_256px``: the ``cxr128`` training split (``cxrbench.protocols.cxr128_splits``);
- ``nih1000_64px``: all of it, upsampled (its one patient shared with ``nih_extra_256px`` is in ``train``);
- ``nih_fullres_samples``: the images whose patient is in neither protocol split;
- Kermany pediatric set, ``NonAugmentedTrain`` only (its ``ValData`` stays unseen, as another population);
- the adult COVID-19 / pneumonia sets, ``adult_covid_extra_256px`` included (frontal views).

Objectives (``Config.objective``), compared in the protocol's note by how FID in the embedding orders image
sets against a person's order (real < degraded < anatomy violated), not by probe AUROC:

- ``contrastive``: InfoNCE between two X-ray views of each image with in-batch negatives (SimCLR form). The
  views differ by crop, small rotation and shift, brightness/contrast and, at random, a little Gaussian blur
  and noise, so that mild degradation is what the embedding learns to ignore, not what it encodes;
- ``both``: the contrastive term plus multi-label BCE on the known labels (unknown ones masked);
- ``lambda_orientation > 0`` (with either): a light anatomy pretext, a head that tells an upright view from
  the same view turned 90/180/270 degrees or flipped upside down (Gidaris et al., "Unsupervised
  representation learning by predicting image rotations", ICLR 2018). Those two corruption families are
  then seen in training; the validity suite's other anatomy violations (patch shuffles, negatives, random
  fields, blobs, splices) are not.
- ``lambda_anatomy > 0`` (with either): a binary head, "is this an intact chest radiograph?", trained with BCE
  on half the batch: positives are normal views, negatives the same views under an anatomy-destroying
  transform from families the validity suite does not use (``elastic_warp``, ``tiny_crop``, ``kaleidoscope``).
  Positive and negative of a pair are both brought to the same resolution (128, 64 or 32 px and back), so
  that a thumbnail blown up still counts as a chest and resolution tells the head nothing.
  ``anatomy_loss = "far"`` replaces that head by a distance objective on the same pairs, in the embedding FD
  uses (Ruff et al., "Deep semi-supervised anomaly detection", ICLR 2020; Hendrycks et al., "Deep anomaly
  detection with outlier exposure", ICLR 2019): each negative's squared distance from the positives' mean,
  in units of the positives' mean squared spread, is pushed above ``anatomy_margin``. A linear head needs
  only a small margin along one direction, which FD barely sees; a mode-collapsed set's FID is at least
  about tr(Sigma_real), so blobs rank behind it only if their mean sits farther out than the real spread.

There is no degradation head: the ``cxr64`` network's (its second view degraded, a head predicting type and
strength) made sharpness and noise the main axes of its embedding.

``python -m baselines.cxr128net build --run runs/cxr128 --data ../shared/data --pin`` then writes the package
data (``cxrbench/protocols/cxr128_data``): the network state dict, the Platt-calibrated label head with the
held-out AUROC that chose its labels, and the features of the reference, training and held-out splits.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.io import load_image
from cxrbench.data.labels import LABELS
from cxrbench.errors import DataError
from cxrbench.features.cxr128 import CXR128Extractor, CXR128Net, to_cxr128
from cxrbench.generator import PretrainedMixin
from cxrbench.kernels import portable_cpu_kernels
from cxrbench.protocols.cxr128_splits import nih_splits

from .cxr64net import _gauss_blur
from .moco import augment
from .trainer import Batch, Trainable, set_cosine_lr

NIH = "nih_extra_256px"
NIH_SMALL = "nih1000_64px"
NIH_FULL = "nih_fullres_samples"
KERMANY = "kermany_pediatric_covid_skytells"
ADULT_SETS = ("covid_chestxray_ieee8023_2020-03_fork", "actualmed_covid_cxr", "figure1_covid_cxr",
              "adult_covid_extra_256px")
#: the orientation pretext's classes: upright, then turned by 90 / 180 / 270 degrees, then flipped upside down
ORIENTATIONS = ("upright", "rot90", "rot180", "rot270", "vflip")
#: classes the pretext can add (``orientation_extra``): a mirrored chest (heart on the right), two chests' halves
#: joined at the midline, or two chests joined along a line of any direction (``seam``, the shipped network's);
#: all keep every local patch real and change only the arrangement, which a pooled embedding barely registers
#: (a left/right splice scores 1.9x the real row's FID)
ORIENTATION_EXTRA = {"hflip": "horizontal mirror", "splice": "left/right halves of two images",
                     "seam": "two images joined along a random line (any angle, within a quarter of the centre)"}


@dataclass
class Config:
    image_size: int = 128
    objective: str = "contrastive"  # contrastive | both (contrastive + label BCE)
    lambda_orientation: float = 0.0  # weight of the orientation pretext (0: off)
    lambda_bce: float = 1.0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    schedule_steps: int = 0  # cosine decay length in steps (0: constant lr)
    temperature: float = 0.2
    # augmentations of the two views
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation_deg: float = 10.0
    translate: float = 0.06
    brightness: float = 0.2
    contrast: float = 0.3
    hflip_prob: float = 0.0  # a mirrored chest is not a normal chest (heart on the right)
    orientation_extra: tuple[str, ...] = ()  # more pretext classes (ORIENTATION_EXTRA): "hflip", "splice", "seam"
    blur_prob: float = 0.3  # Gaussian blur, sigma U(0, blur_sigma) px at 128 px
    blur_sigma: float = 1.0
    noise_prob: float = 0.3  # additive Gaussian noise, std U(0, noise_std)
    noise_std: float = 0.02
    lowres_prob: float = 0.0  # downsampled by a factor U(1, lowres_factor) (area), upsampled back (bilinear)
    lowres_factor: float = 4.0
    lambda_anatomy: float = 0.0  # weight of the intact-chest head (0: off)
    anatomy_fraction: float = 0.5  # share of the batch whose views (and their corrupted copies) it sees
    anatomy_loss: str = "bce"  # bce (linear intact-chest head) | far (negatives pushed from the positives' cloud)
    anatomy_margin: float = 9.0  # "far": least squared distance of a negative, in positives' mean sq. spreads
    anatomy_negatives: str = "destroy"  # destroy (ANATOMY_FAMILIES) | arrangement (the pretext's turns, flips, seams)

    def __post_init__(self):
        self.crop_scale = tuple(float(s) for s in self.crop_scale)
        if self.objective not in ("contrastive", "both"):
            raise ValueError(f"objective {self.objective!r}: expected contrastive or both")
        if self.lambda_orientation < 0 or self.lambda_anatomy < 0 or self.batch_size < 4:
            raise ValueError("lambda_orientation >= 0, lambda_anatomy >= 0 and batch_size >= 4 are needed")
        if not 0 < self.anatomy_fraction <= 1:
            raise ValueError(f"anatomy_fraction {self.anatomy_fraction}: expected a share in (0, 1]")
        if self.anatomy_loss not in ("bce", "far"):
            raise ValueError(f"anatomy_loss {self.anatomy_loss!r}: expected bce or far")
        if self.anatomy_negatives not in ("destroy", "arrangement"):
            raise ValueError(f"anatomy_negatives {self.anatomy_negatives!r}: expected destroy or arrangement")
        if not self.anatomy_margin > 0:
            raise ValueError(f"anatomy_margin {self.anatomy_margin}: expected a positive number")
        self.orientation_extra = tuple(self.orientation_extra)
        if not set(self.orientation_extra) <= set(ORIENTATION_EXTRA):
            raise ValueError(f"orientation_extra {list(self.orientation_extra)}: expected classes among "
                             f"{list(ORIENTATION_EXTRA)}")

    def seen_families(self) -> list[str]:
        """The corruption families this configuration shows the network during training (for the note)."""
        seen = ["crop/shift/small rotation", "brightness/contrast"]
        seen += ["Gaussian blur (mild, as invariance)"] * (self.blur_prob > 0)
        seen += ["Gaussian noise (mild, as invariance)"] * (self.noise_prob > 0)
        seen += ["low resolution (as invariance)"] * (self.lowres_prob > 0)
        seen += ["rotation 90/180/270, vertical flip (pretext)"] * (self.lambda_orientation > 0)
        seen += [f"{ORIENTATION_EXTRA[k]} (pretext)" for k in self.orientation_extra if self.lambda_orientation > 0]
        if self.lambda_anatomy > 0 and self.anatomy_negatives == "arrangement":
            seen += ["low resolution 32/64 px (as intact chest)", "the orientation classes (anatomy negatives)"]
        elif self.lambda_anatomy > 0:
            seen += ["low resolution 32/64 px (as intact chest)", *(f"{f} (anatomy pretext)" for f in ANATOMY_FAMILIES)]
        return seen


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _decode(folder: Path, paths) -> torch.Tensor:
    return torch.stack([to_cxr128(torch.from_numpy(load_image(folder / p))[None, None])[0] for p in paths])


def _label_rows(table: pd.DataFrame) -> torch.Tensor:
    m = torch.full((len(table), len(LABELS)), float("nan"))
    for j, name in enumerate(LABELS):
        if name in table.columns:
            m[:, j] = torch.tensor(pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64))
    return m


def _patient(image_index: str) -> str:
    """NIH patient id of an image name ``00000013_005.png`` ("13"), as cxr128_splits compares them."""
    return str(image_index).split("_")[0].lstrip("0") or "0"


def training_tables(data_root: Path) -> list[tuple[Path, pd.DataFrame]]:
    """The (folder, rows) the network trains on; no reference or held-out patient is among them."""
    data_root = Path(data_root)
    missing = [n for n in (NIH, NIH_SMALL, KERMANY, *ADULT_SETS) if not (data_root / n / "labels.csv").is_file()]
    if missing:
        raise DataError(f"{data_root}: cxr128-net and cxr128-layout train on the shared data root's {', '.join(missing)} folders "
                        "(each with labels.csv); pass --data the folder that holds them (e.g. ../shared/data)")
    nih = nih_splits(data_root)
    protocol_patients = {_patient(i) for i in nih.loc[nih["cxr128_split"] != "train", "image_index"]}
    out = [(data_root / NIH, nih[nih["cxr128_split"] == "train"])]
    small = pd.read_csv(data_root / NIH_SMALL / "labels.csv")
    out.append((data_root / NIH_SMALL, small[~small["image_index"].map(_patient).isin(protocol_patients)]))
    if (data_root / NIH_FULL / "labels.csv").is_file():
        full = pd.read_csv(data_root / NIH_FULL / "labels.csv")
        full = full[~full["image_index"].map(_patient).isin(protocol_patients)]
        full = full.drop_duplicates("image_index")  # some images were published by several repositories
        out.append((data_root / NIH_FULL, full))
    k = pd.read_csv(data_root / KERMANY / "labels.csv")
    k = k[k["split"] == "NonAugmentedTrain"]
    if "near_duplicate_of" in k.columns:
        k = k[k["near_duplicate_of"].isna()]
    out.append((data_root / KERMANY, k))
    for name in ADULT_SETS:
        t = pd.read_csv(data_root / name / "labels.csv")
        if "view" in t.columns:
            t = t[t["view"].astype(str) != "L"]
        out.append((data_root / name, t))
    return out


def _lowres(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` at ``1 / factor`` of its size (area average) and back (bilinear): a thumbnail blown up."""
    if factor <= 1.01:
        return x
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def elastic_warp(x: torch.Tensor, amplitude: tuple[float, float] = (0.15, 0.25), grid: int = 5) -> torch.Tensor:
    """Each image resampled through a strong smooth random displacement field.

    Ribs, heart and diaphragm bend into swirls while local texture and grey levels stay those of a radiograph,
    so only the layout tells a warped image from a real one. The field is random noise on a ``grid`` x ``grid``
    lattice, upsampled bicubically (smooth, as a Gaussian-smoothed field), scaled so that its largest
    displacement is ``amplitude`` (drawn per image) of the image size; borders reflect.
    """
    n, _, h, w = x.shape
    d = F.interpolate(torch.randn(n, 2, grid, grid, device=x.device), size=(h, w), mode="bicubic",
                      align_corners=True)
    amp = amplitude[0] + (amplitude[1] - amplitude[0]) * torch.rand(n, 1, 1, 1, device=x.device)
    d = d / d.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6) * amp * 2  # grid coordinates span 2
    ident = F.affine_grid(torch.eye(2, 3, device=x.device).expand(n, 2, 3), list(x.shape), align_corners=False)
    out = F.grid_sample(x, ident + d.permute(0, 2, 3, 1), mode="bilinear", padding_mode="reflection",
                        align_corners=False)
    return out.clamp(0, 1)


def tiny_crop(x: torch.Tensor, area: tuple[float, float] = (0.03, 0.08)) -> torch.Tensor:
    """A random square of ``area`` (drawn per image) of each image, blown up to full size.

    What remains is radiograph texture (a rib edge, lung grey, a little noise) without the chest's layout:
    a network that calls it a chest has learned texture, not anatomy.
    """
    n = x.shape[0]
    s = (area[0] + (area[1] - area[0]) * torch.rand(n, device=x.device)).sqrt()
    t = (1 - s)[:, None] * (2 * torch.rand(n, 2, device=x.device) - 1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = s, s, t
    g = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def kaleidoscope(x: torch.Tensor) -> torch.Tensor:
    """One random quadrant of each image mirrored into all four (mirror axes through the centre).

    Every local structure is a real one, but the picture has two lungs on each side or two diaphragms, which
    no chest has; the whole quadrant is kept at its scale, unlike ``tiny_crop``.
    """
    n, _, h, w = x.shape
    h2, w2 = h // 2, w // 2
    out = x.clone()
    q = torch.randint(0, 4, (n,))
    for i in range(n):
        r, c = divmod(int(q[i]), 2)
        t = x[i, :, r * h2 : (r + 1) * h2, c * w2 : (c + 1) * w2]
        # turned so that the corner at the image centre is the tile's bottom-right: the mirrors meet there
        t = t.flip(-1) if c else t
        t = t.flip(-2) if r else t
        top = torch.cat([t, t.flip(-1)], dim=-1)
        out[i, :, : 2 * h2, : 2 * w2] = torch.cat([top, top.flip(-2)], dim=-2)
    return out


#: the anatomy pretext's negatives (none is a family of ``cxrbench.data.corruptions``' validity suite)
ANATOMY_FAMILIES = {"elastic warp": elastic_warp, "tiny crop": tiny_crop, "kaleidoscope": kaleidoscope}
#: the resolutions a positive and its negative are brought to (then back to 128 px)
ANATOMY_SIZES = (128, 64, 32)


def destroy_anatomy(x: torch.Tensor) -> torch.Tensor:
    """Each image under one anatomy-destroying family of ``ANATOMY_FAMILIES``, drawn per image."""
    fams = list(ANATOMY_FAMILIES.values())
    k = torch.randint(0, len(fams), (x.shape[0],))
    out = x.clone()
    for j, f in enumerate(fams):
        m = k == j
        if m.any():
            out[m] = f(x[m])
    return out


def arrange_wrongly(x: torch.Tensor, extra: tuple[str, ...] = ()) -> torch.Tensor:
    """Each image under one of the orientation pretext's classes other than upright, drawn per image: every patch
    stays real (same texture, sharpness and histogram), only the layout is wrong, so a distance objective on these
    negatives cannot be met by the sharpness shortcut the destroying families allowed."""
    k = torch.randint(1, len(ORIENTATIONS) + len(extra), (x.shape[0],), device=x.device)
    return orient(x, k, extra)


def far_loss(f_pos: torch.Tensor, f_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge on each negative's squared distance from the positives' mean, in positives' mean squared spreads.

    Centre and spread are detached: the negatives are pushed out, the real cloud is not inflated (nor shrunk)
    to cheat the ratio; its spread stays the contrastive term's.
    """
    c = f_pos.detach().mean(0)
    s = ((f_pos.detach() - c) ** 2).sum(1).mean().clamp_min(1e-8)
    return F.relu(margin - ((f_neg - c) ** 2).sum(1) / s).mean()


def seam_mask(n: int, size: int, device=None) -> torch.Tensor:
    """``n`` boolean masks (n, 1, size, size): the side of a line at a uniform angle, offset from the centre by up
    to a quarter of the size, so both parts keep a sizeable share of the chest."""
    theta = torch.rand(n, device=device) * torch.pi
    offset = (torch.rand(n, device=device) - 0.5) * 0.5
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    side = xx * theta.cos()[:, None, None] + yy * theta.sin()[:, None, None] - offset[:, None, None]
    return (side > 0)[:, None]


def orient(x: torch.Tensor, k: torch.Tensor, extra: tuple[str, ...] = ()) -> torch.Tensor:
    """Each image turned by its class ``k`` (index into ORIENTATIONS, then ``extra``)."""
    out = x.clone()
    w = x.shape[-1]
    for j, name in enumerate(extra):
        m = k == len(ORIENTATIONS) + j
        if m.any():
            if name == "hflip":
                out[m] = torch.flip(x[m], dims=(3,))
            elif name == "splice":  # the right half from the next image of the batch
                other = torch.roll(x, 1, dims=0)
                out[m] = torch.cat([x[m][..., : w // 2], other[m][..., w // 2 :]], dim=-1)
            elif name == "seam":  # one side of a random line from the next image: a seam of any direction
                other = torch.roll(x, 1, dims=0)[m]
                out[m] = torch.where(seam_mask(int(m.sum()), w, x.device), other, x[m])
            else:
                raise ValueError(f"orientation_extra: unknown class {name}")
    for c in range(1, 4):
        m = k == c
        if m.any():
            out[m] = torch.rot90(x[m], c, dims=(2, 3))
    m = k == 4
    if m.any():
        out[m] = torch.flip(x[m], dims=(2,))
    return out


class CXR128NetTrainer(Trainable, PretrainedMixin, nn.Module):
    """The network plus the training-only heads (projection, orientation), dropped when the weights are built."""

    name = "cxr128-net"
    Config = Config

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.net = CXR128Net()
        d = self.net.embed.out_features
        self.proj = nn.Sequential(nn.Linear(d, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 128))
        self.orientation = nn.Linear(d, len(ORIENTATIONS) + len(self.config.orientation_extra))
        if config.lambda_anatomy > 0 and config.anatomy_loss == "bce":  # only then: shipped init stays as it was
            self.anatomy = nn.Linear(d, 1)

    @classmethod
    def training_dataset(cls, data_root, config: Config, *, split: str | None = None) -> _Images:
        """Every training image decoded once to the protocol's 128 px contract."""
        images, labels, names = [], [], []
        for folder, table in training_tables(Path(data_root)):
            images.append(_decode(folder, table["path"]))
            labels.append(_label_rows(table))
            names += [f"{folder.name}/{p}" for p in table["path"]]
        return _Images(torch.cat(images), torch.cat(labels), names)

    def configure_optimizers(self):
        c = self.config
        return {"adamw": torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)}

    def view(self, images: torch.Tensor) -> torch.Tensor:
        """One random X-ray view: geometry and intensity (``baselines.moco.augment``), then mild blur / noise."""
        c = self.config
        x = augment(images, c)
        n = x.shape[0]
        if c.lowres_prob > 0:
            f = torch.where(torch.rand(n) < c.lowres_prob, 1 + (c.lowres_factor - 1) * torch.rand(n), torch.ones(n))
            x = torch.stack([_lowres(x[i : i + 1], float(f[i]))[0] for i in range(n)])
        if c.blur_prob > 0:
            sigma = torch.where(torch.rand(n) < c.blur_prob, c.blur_sigma * torch.rand(n), torch.zeros(n))
            x = _gauss_blur(x, sigma.to(x))
        if c.noise_prob > 0:
            std = torch.where(torch.rand(n) < c.noise_prob, c.noise_std * torch.rand(n), torch.zeros(n))
            x = (x + std.to(x).view(-1, 1, 1, 1) * torch.randn(x.shape).to(x)).clamp(0, 1)
        return x

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        n = images.shape[0]
        views = [self.view(images), self.view(images)]
        if c.lambda_orientation > 0:  # a third view of half the batch, turned or flipped in 4 of 5 cases
            m = n // 2
            k = torch.randint(0, len(ORIENTATIONS) + len(c.orientation_extra), (m,), device=images.device)
            views.append(orient(self.view(images[:m]), k, c.orientation_extra))
        if c.lambda_anatomy > 0:  # intact views and the same views with their anatomy destroyed, paired
            a = max(1, round(n * c.anatomy_fraction))
            pos = self.view(images[:a])
            wrong = c.anatomy_negatives == "arrangement"
            neg = arrange_wrongly(pos, c.orientation_extra) if wrong else destroy_anatomy(pos)
            size = torch.tensor(ANATOMY_SIZES)[torch.randint(0, len(ANATOMY_SIZES), (a,))]
            for i in range(a):  # a pair shares its resolution: low resolution is no cue either way
                f = images.shape[-1] / float(size[i])
                pos[i : i + 1], neg[i : i + 1] = _lowres(pos[i : i + 1], f), _lowres(neg[i : i + 1], f)
            views += [pos, neg]
        f = self.net.features(torch.cat(views) * 2 - 1)
        out = {}
        z = F.normalize(self.proj(f[: 2 * n]), dim=1)
        sim = z @ z.T / c.temperature
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(images.device)
        out["nce"] = F.cross_entropy(sim, target)
        total = out["nce"]
        if c.objective == "both":
            logits = self.net.head(f[: 2 * n])
            y = torch.cat([labels, labels])
            known = ~y.isnan()
            out["bce"] = F.binary_cross_entropy_with_logits(logits[known], y[known]) if known.any() else logits.sum() * 0
            total = total + c.lambda_bce * out["bce"]
        if c.lambda_orientation > 0:
            out["orient"] = F.cross_entropy(self.orientation(f[2 * n : 2 * n + m]), k)
            total = total + c.lambda_orientation * out["orient"]
        if c.lambda_anatomy > 0:
            if c.anatomy_loss == "far":
                out["anatomy"] = far_loss(f[-2 * a : -a], f[-a:], c.anatomy_margin)
            else:
                y = torch.cat([torch.ones(a), torch.zeros(a)]).to(f)
                out["anatomy"] = F.binary_cross_entropy_with_logits(self.anatomy(f[-2 * a :])[:, 0], y)
            total = total + c.lambda_anatomy * out["anatomy"]
        out["loss"] = total
        return out

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c, opt = self.config, optimizers["adamw"]
        lr = set_cosine_lr(opt, c.lr, step, c.schedule_steps)
        out = self.losses(batch.images, batch.labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {"lr": lr, **{k: float(v.detach()) for k, v in out.items()}}


# ---------------------------------------------------------------------------------------------------------
# building the protocol's package data from a trained run


def run_network(run_dir: Path) -> CXR128Net:
    """The feature network of a trained run (its ``net.*`` weights; the training heads are left behind), of
    ``cxr128-net`` (15 label logits) or ``cxr128-layout`` (8 layout logits)."""
    state = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
    net = CXR128Net(num_labels=state["net.head.weight"].shape[0])
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()


def fit_label_head(net: CXR128Net, feats: np.ndarray, table: pd.DataFrame, *, c: float = 0.05) -> None:
    """A network trained without labels gets its label head as a linear probe on the frozen embedding.

    One L2-regularised logistic regression per label on the features of the protocol's NIH ``train`` split
    (the images the bundled generators train on; never the reference or held-out patients), written into
    ``net.head`` so that the shipped state dict holds it like a jointly trained head. Calibration and the
    choice of labels then happen on the two held-out splits, as for any head.
    """
    from sklearn.linear_model import LogisticRegression

    train = (table["cxr128_split"] == "train").to_numpy()
    f = feats[train].astype(np.float64)
    mu, sd = f.mean(0), f.std(0) + 1e-6
    z = (f - mu) / sd  # standardised for the solver; folded back into the head's weights below
    w, b = torch.zeros_like(net.head.weight), torch.zeros_like(net.head.bias)
    for j, name in enumerate(LABELS):
        y = table.loc[train, name].to_numpy().astype(int)
        if y.min() == y.max():
            continue
        lr = LogisticRegression(C=c, max_iter=5000).fit(z, y)
        w[j] = torch.from_numpy(lr.coef_[0] / sd).float()
        b[j] = float(lr.intercept_[0] - (lr.coef_[0] * mu / sd).sum())
    with torch.no_grad():
        net.head.weight.copy_(w)
        net.head.bias.copy_(b)


def nih_features(data_root: Path, weights_file: Path) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """Features of every ``nih_extra_256px`` image through the harness's own extraction path (same kernels)."""
    from cxrbench.config import EvalConfig
    from cxrbench.data.sources import open_source
    from cxrbench.engine.extraction import extract_features, extractor_spec
    from cxrbench.features.cache import FeatureCache

    folder = Path(data_root) / NIH
    config = EvalConfig(extractors=("cxr128",), weights=str(weights_file), progress=False, num_workers=0)
    # the raw embedding (the head and the whitening are fitted on it), with the harness's kernels
    ext = {"cxr128": CXR128Extractor(weights=str(weights_file), whiten=False).prepare_inference()}
    src = open_source(folder, role="reference")
    feats, bad = extract_features(src, ext, config, FeatureCache(None, enabled=False), "cpu", desc="nih")
    if bad:
        raise DataError(f"{folder}: undecodable images {bad[:3]}; restore the folder (its SHA256SUMS lists them)")
    splits = nih_splits(data_root).set_index("path")["cxr128_split"]
    table = pd.read_csv(folder / "labels.csv").set_index("path").loc[src.ids].reset_index()
    table["cxr128_split"] = splits.loc[table["path"]].to_numpy()
    return table, feats["cxr128"], list(src.hashes), extractor_spec(ext["cxr128"], config)


def calibrate_head(net: CXR128Net, feats: np.ndarray, table: pd.DataFrame, *, min_auroc: float = 0.65,
                   min_pos: int = 15) -> dict:
    """Platt scaling of each label's logit on the held-out split; AUROC on both held-out splits chooses labels.

    A label is kept when its AUROC is at least ``min_auroc`` on the held-out and the reference split, with at
    least ``min_pos`` positives (and negatives) in each: with fewer, neither the calibration nor the AUROC
    means much.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        logits = net.head(torch.from_numpy(feats)).numpy().astype(np.float64)
    split = table["cxr128_split"].to_numpy()
    held, ref = split == "heldout", split == "reference"
    report, keep = {}, []
    for j, name in enumerate(LABELS):
        y = table[name].to_numpy().astype(int)
        npos = {"heldout": int(y[held].sum()), "reference": int(y[ref].sum())}
        ok = all(min_pos <= npos[s] <= m.sum() - min_pos for s, m in (("heldout", held), ("reference", ref)))
        auc = float(roc_auc_score(y[ref], logits[ref, j])) if 0 < npos["reference"] < ref.sum() else float("nan")
        auc_h = float(roc_auc_score(y[held], logits[held, j])) if 0 < npos["heldout"] < held.sum() else float("nan")
        entry = {"auroc_reference": auc, "auroc_heldout": auc_h, "positives": npos}
        if ok and auc >= min_auroc and auc_h >= min_auroc:
            lr = LogisticRegression(C=1e4).fit(logits[held, j : j + 1], y[held])
            p = lr.predict_proba(logits[held, j : j + 1])[:, 1]
            # operating point: the probability above which as many held-out images are called positive as are
            # labelled so; mapped to 0.5 as torchxrayvision's op_threshs are, so prevalences are comparable
            op = float(np.quantile(p, 1 - y[held].mean()))
            entry.update(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]), op=op)
            keep.append(name)
        report[name] = entry
    return {
        "labels": keep,
        "index": [LABELS.index(n) for n in keep],
        "a": [report[n]["a"] for n in keep],
        "b": [report[n]["b"] for n in keep],
        "op": [report[n]["op"] for n in keep],
        "rule": f"kept: AUROC >= {min_auroc} on both the held-out (calibration) and the reference split, with >= "
                f"{min_pos} positives and negatives in each; Platt scaling fitted on the held-out split, then its "
                "operating point (held-out prevalence) mapped to 0.5",
        "per_label": report,
    }


def _write_set(path: Path, table: pd.DataFrame, feats: np.ndarray, hashes: list[str], spec: dict, which: str):
    from cxrbench.fileio import atomic_write_bytes

    meta = {"name": f"cxr128 {which}: {len(table)} NIH ChestX-ray14 images (256 px originals at 128 px, "
                    f"patient-disjoint split '{which}')",
            "spec": spec, "label_columns": list(LABELS), "source": "nih_extra_256px (NIH ChestX-ray14, 256 px)"}
    arrays = {"ids": np.array(table["image_index"], dtype=str), "hashes": np.array(hashes, dtype=str),
              "features": feats.astype(np.float32), "patient_ids": np.array(table["patient_id"].astype(str), dtype=str),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    for c in LABELS:
        arrays[f"label:{c}"] = table[c].to_numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: the bytes (and the pinned sha256) do not depend on zlib
    atomic_write_bytes(path, buf.getvalue())


def build(run_dir: Path, data_root: Path, out_dir: Path, layout_run: Path | None = None) -> dict:
    """Write the protocol's package data from a trained run (and a ``cxr128-layout`` run) and return the sha256
    pins to put in the code."""
    from cxrbench.data.io import sha256_file
    from cxrbench.features.cxr128 import EMBED_DIM, HEAD_FILE, LAYOUT_FILE, WEIGHTS_FILE
    from cxrbench.fileio import atomic_torch_save, atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    net = run_network(run_dir)
    config = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    weights = out_dir / WEIGHTS_FILE
    atomic_torch_save({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    if layout_run is not None:  # beside the weights, where the extractor finds a candidate's layout network
        layout = run_network(layout_run)
        atomic_torch_save({k: v.contiguous() for k, v in layout.state_dict().items()}, out_dir / LAYOUT_FILE)
    elif (out_dir / LAYOUT_FILE).is_file():  # an earlier build's: these files are the embedding's alone
        (out_dir / LAYOUT_FILE).unlink()
    table, feats, hashes, spec = nih_features(data_root, weights)
    emb = feats[:, :EMBED_DIM]  # the label head reads the embedding, not the layout logits after it
    if config.get("objective", "contrastive") == "contrastive":  # no label term: the head is a linear probe
        fit_label_head(net, emb, table)  # the embedding does not change: the features above stay valid
        atomic_torch_save({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
        spec = {**spec, "weights": sha256_file(weights)}
    calib = calibrate_head(net, emb, table)
    atomic_write_bytes(out_dir / HEAD_FILE, json.dumps(calib, indent=1, sort_keys=True).encode())
    for which in ("reference", "train", "heldout"):
        m = (table["cxr128_split"] == which).to_numpy()
        _write_set(out_dir / f"cxr128-{which}.npz", table[m], feats[m], [h for h, k in zip(hashes, m) if k], spec,
                   which)
    return {f.name: sha256_file(f) for f in sorted(out_dir.iterdir()) if f.is_file()}


def fit_whitening(train_features: np.ndarray) -> dict[str, np.ndarray]:
    """``{mean, whiten, shrinkage}``: ``W = Sigma^-1/2`` (symmetric) of the Ledoit-Wolf covariance of the training
    split's features (Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices",
    2004): 686 images for 128 dimensions, whose smallest sample eigenvalues are too noisy to invert as they are."""
    from sklearn.covariance import LedoitWolf  # why: sklearn loads only for this build step

    x = np.asarray(train_features, dtype=np.float64)
    lw = LedoitWolf().fit(x)
    ev, u = np.linalg.eigh(lw.covariance_)
    return {"mean": x.mean(0), "whiten": (u / np.sqrt(ev)) @ u.T, "shrinkage": np.array(lw.shrinkage_)}


def write_whitening(out_dir: Path, layout_gain: float | None = None) -> dict[str, str]:
    """Fit the whitening on the training split's raw embeddings (``cxr128-train.npz``), write ``cxr128-whiten.npz``
    and rewrite the three shipped sets with the whitened features (``features``, what the protocol's metrics
    read) beside the raw ones (``embedding``, what the next fit reads: running this twice gives the same files).
    Layout logits after the embedding are whitened on their own and weighted by ``layout_gain`` (default the
    shipped ``LAYOUT_GAIN``). Returns the sha256 pins of the files it wrote."""
    from cxrbench.data.io import sha256_file
    from cxrbench.features.cxr128 import EMBED_DIM, LAYOUT_GAIN, WHITEN_FILE
    from cxrbench.fileio import atomic_write_bytes

    sets = {}
    for which in ("reference", "train", "heldout"):
        with np.load(out_dir / f"cxr128-{which}.npz", allow_pickle=False) as z:
            sets[which] = {k: z[k] for k in z.files}
            sets[which].setdefault("embedding", z["features"])  # a version-1 file: its features are raw
    raw_train = sets["train"]["embedding"].astype(np.float32)
    w = fit_whitening(raw_train[:, :EMBED_DIM])
    meta = {"method": "Ledoit-Wolf covariance of the cxr128 training split's raw embeddings, symmetric inverse "
                      "square root", "source": "cxr128-train.npz: embedding", "shrinkage": float(w["shrinkage"]),
            "source_sha256": hashlib.sha256(np.ascontiguousarray(raw_train).tobytes()).hexdigest()}
    if raw_train.shape[1] > EMBED_DIM:  # the layout logits: whitened on their own, then weighted by the gain
        gain = LAYOUT_GAIN if layout_gain is None else float(layout_gain)
        lw = fit_whitening(raw_train[:, EMBED_DIM:])
        k = raw_train.shape[1]
        whiten = np.zeros((k, k))
        whiten[:EMBED_DIM, :EMBED_DIM], whiten[EMBED_DIM:, EMBED_DIM:] = w["whiten"], gain * lw["whiten"]
        w = {"mean": np.concatenate([w["mean"], lw["mean"]]), "whiten": whiten}
        meta.update(method=meta["method"] + "; the layout logits after it the same on their own (block diagonal), "
                    "times the layout gain", layout_gain=gain, layout_shrinkage=float(lw["shrinkage"]))
    buf = io.BytesIO()
    np.savez(buf, mean=w["mean"], whiten=w["whiten"], meta=np.array(json.dumps(meta, sort_keys=True)))
    atomic_write_bytes(out_dir / WHITEN_FILE, buf.getvalue())
    pins = {WHITEN_FILE: sha256_file(out_dir / WHITEN_FILE)}
    for which, arrays in sets.items():
        raw = arrays["embedding"].astype(np.float64)
        arrays["features"] = ((raw - w["mean"]) @ w["whiten"]).astype(np.float32)
        m = json.loads(str(arrays["meta"]))
        m["spec"] = {**m["spec"], "version": CXR128Extractor.version, "whitening": pins[WHITEN_FILE]}
        arrays["meta"] = np.array(json.dumps(m, sort_keys=True))
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # uncompressed: the bytes (and the pinned sha256) do not depend on zlib
        atomic_write_bytes(out_dir / f"cxr128-{which}.npz", buf.getvalue())
        pins[f"cxr128-{which}.npz"] = sha256_file(out_dir / f"cxr128-{which}.npz")
    return pins


def pin_sources(pins: dict[str, str]) -> None:
    """Rewrite the pinned sha256s in ``features/cxr128.py`` and ``protocols/cxr128.py`` (the pins live in code)."""
    import cxrbench.features.cxr128 as feat
    import cxrbench.protocols.cxr128 as proto

    feat_pins = {c: pins[f] for c, f in (("WEIGHTS_SHA256", feat.WEIGHTS_FILE), ("HEAD_SHA256", feat.HEAD_FILE),
                                          ("WHITEN_SHA256", feat.WHITEN_FILE), ("LAYOUT_SHA256", feat.LAYOUT_FILE))
                 if f in pins}
    consts = {Path(feat.__file__): feat_pins,
              Path(proto.__file__): {f"{w.upper()}_SHA256": pins[f] for w, (f, _) in proto.FEATURE_FILES.items()
                                     if f in pins}}
    for path, values in consts.items():
        text = path.read_text()
        for const, digest in values.items():
            text = re.sub(rf'^{const} = "[0-9a-zA-Z]*"', f'{const} = "{digest}"', text, count=1, flags=re.MULTILINE)
        path.write_text(text)


def main(argv=None) -> int:
    portable_cpu_kernels()  # the shipped files' kernels, before any tensor: build gives their bytes on any x86 CPU
    p = argparse.ArgumentParser(prog="python -m baselines.cxr128net", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write cxrbench/protocols/cxr128_data from a trained run")
    b.add_argument("--run", required=True, help="folder written by `cxrbench train cxr128-net`")
    b.add_argument("--layout-run", default=None, help="folder written by `cxrbench train cxr128-layout` (the "
                   "layout network whose logits follow the embedding; without it, the embedding alone)")
    b.add_argument("--data", default="../shared/data", help="the shared data root (nih_extra_256px inside)")
    b.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cxrbench/protocols/cxr128_data"))
    b.add_argument("--pin", action="store_true", help="also write the new sha256 pins into the cxrbench sources")
    w = sub.add_parser("whiten", help="fit the cxr128 whitening on the shipped training split's raw embeddings "
                       "and rewrite the shipped sets with whitened features (build runs it too)")
    w.add_argument("--out", default=b.get_default("out"))
    w.add_argument("--pin", action="store_true", help="also write the new sha256 pins into the cxrbench sources")
    for q in (b, w):
        q.add_argument("--layout-gain", type=float, default=None, help="weight of the whitened layout logits "
                       "(default: the shipped LAYOUT_GAIN; other values make a candidate, not the protocol)")
    args = p.parse_args(argv)
    runs = {} if args.cmd == "whiten" else {"--run": args.run, "--layout-run": args.layout_run}
    for flag, run in runs.items():  # a mistyped folder: one line, not a traceback
        if run is not None and not (Path(run) / "model.pt").is_file():
            p.error(f"{flag} {run}: no model.pt there; give the folder a `cxrbench train "
                    f"{'cxr128-layout' if flag == '--layout-run' else 'cxr128-net'}` run wrote")
    if args.cmd == "whiten" and not (Path(args.out) / "cxr128-train.npz").is_file():
        p.error(f"--out {args.out}: no cxr128-train.npz there; whiten refits the files build wrote (run build first)")
    if args.cmd == "whiten":
        pins = write_whitening(Path(args.out), args.layout_gain)
    else:
        pins = build(Path(args.run), Path(args.data), Path(args.out),
                     Path(args.layout_run) if args.layout_run else None)
        pins.update(write_whitening(Path(args.out), args.layout_gain))  # the whitening follows the training split
    for name, digest in pins.items():
        print(f"{digest}  {name}")
    if args.pin:
        pin_sources(pins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
