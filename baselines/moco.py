"""MoCo v2 for chest radiographs, with the auxiliary clustering loss of seed 002.

Seed 002 (Mphasis whitepaper) evaluates generated CXRs in the embedding of a self-supervised MoCo model
trained on radiographs, with ``L = L_moco + lambda * L_kmeans``: the clustering term pulls every embedding
toward the centroid of its group, so that images of the same kind (same findings) sit together.

- MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by SGD, a key encoder that is its
  exponential moving average, a FIFO queue of past keys as negatives, InfoNCE with temperature, and a
  2-layer projection MLP. One device has no cross-GPU "shuffle BN", so keys are computed on a shuffled batch
  in ``bn_splits`` chunks (BatchNorm statistics per chunk), which removes the same shortcut.
- Backbone: a torchvision ResNet (``weights=None``: nothing is downloaded) with a 1-channel stem and an
  optional narrower width for CPU runs. The embedding used by ``cxrbench`` is the pooled backbone output.
- Augmentations that suit X-rays, on single-channel tensors and batched: random resized crop, small rotation
  and translation (one affine warp), brightness and contrast as torchvision's ColorJitter does them; no hue,
  and no horizontal flip by default (the heart is on the left: a flipped chest is not a plausible chest).
- Clustering term: each query is pulled toward the centroid of its group and away from the other centroids,
  ``-log softmax_j(q . c_j / T)`` at its group (the ProtoNCE form of Li et al. 2021, "Prototypical
  Contrastive Learning", which also pairs MoCo with k-means). The plain k-means objective (squared distance
  to the own centroid) is minimised by putting every embedding on one point: measured here with lambda = 2,
  it collapsed the embedding within 16 steps (InfoNCE at log(1 + queue), the uniform value). Groups come
  from the labels when the dataset has them (each distinct set of findings is a group, the ``num_clusters``
  most frequent kept); otherwise spherical k-means over the queued keys learns ``num_clusters`` centroids,
  warm-started every step. ``lambda_kmeans = 0`` is plain MoCo v2.

Train with ``MoCoCXR.train(dataset, config, out_dir)`` (``cxrbench train moco``, or
``python -m baselines.moco --data DIR --out DIR``); ``out_dir`` then holds ``config.json`` + ``model.pt``
(the folder the ``moco`` feature extractor loads), ``checkpoint.pt`` (resumable), ``loss.csv``, ``loss.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import logging
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from tqdm import tqdm

from cxrbench.errors import CxrbenchError, DataError, UsageError
from cxrbench.generator import PretrainedMixin, atomic_torch_save, atomic_write_bytes
from cxrbench.harness import resolve_device
from cxrbench.labels import LABELS
from cxrbench.seeding import seed_everything, torch_generator

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


@dataclass
class Config:
    image_size: int = 224
    seed: int = 0
    arch: str = "resnet18"
    #: channels of the first stage (torchvision: 64); 16 or 32 make CPU runs practical
    width: int = 64
    feature_dim: int = 128  # projection output
    queue_size: int = 4096
    momentum: float = 0.999  # key encoder EMA
    temperature: float = 0.2
    bn_splits: int = 4  # BatchNorm chunks standing in for MoCo's per-GPU shuffle BN
    # clustering term (seed 002): L = L_moco + lambda_kmeans * L_kmeans
    lambda_kmeans: float = 0.5
    num_clusters: int = 8  # k-means K; with labels, at most this many label groups
    use_labels: bool = True  # False: learned k-means even when the dataset has labels
    kmeans_iters: int = 3  # Lloyd iterations per step, warm-started from the previous centroids
    # optimisation (MoCo v2: SGD, momentum 0.9, weight decay 1e-4, cosine schedule)
    batch_size: int = 64
    steps: int = 5000
    lr: float = 0.03
    weight_decay: float = 1e-4
    # augmentations
    crop_scale: tuple[float, float] = (0.4, 1.0)
    rotation_deg: float = 10.0
    translate: float = 0.1  # fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    hflip_prob: float = 0.0
    # bookkeeping
    checkpoint_every: int = 250
    num_workers: int = 0  # for decoding the dataset once, before training

    def __post_init__(self):
        self.crop_scale = tuple(float(s) for s in self.crop_scale)  # JSON / TOML give lists
        if self.arch not in ARCHS:
            raise CxrbenchError(f"moco: unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.width < 1 or self.image_size < 8 or self.batch_size < 2 or self.steps < 0:
            raise CxrbenchError("moco: width >= 1, image_size >= 8, batch_size >= 2 and steps >= 0 are needed")
        if self.batch_size % self.bn_splits or self.batch_size // self.bn_splits < 2:
            raise CxrbenchError(
                f"moco: batch_size {self.batch_size} must split into bn_splits={self.bn_splits} chunks of >= 2"
            )
        if self.queue_size < self.batch_size:
            raise CxrbenchError(f"moco: queue_size {self.queue_size} must be >= batch_size {self.batch_size}")
        if self.lambda_kmeans < 0 or self.num_clusters < 1:
            raise CxrbenchError("moco: lambda_kmeans >= 0 and num_clusters >= 1 are needed")


# ---------------------------------------------------------------------------------------------------------
# backbone, preprocessing, augmentations
# ---------------------------------------------------------------------------------------------------------


class _ResNet(ResNet):
    """torchvision ResNet with a 1-channel stem, stage widths scaled by ``width / 64`` and no classifier."""

    def __init__(self, block, layers, width: int):
        self._width = width  # read by _make_layer while ResNet.__init__ runs
        super().__init__(block, layers)
        self.conv1 = nn.Conv2d(1, width, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(width)
        self.out_dim = self.fc.in_features * width // 64
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # first stage: the stem outputs `width` channels
            self.inplanes = self._width
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_backbone(arch: str, width: int) -> _ResNet:
    block, layers = ARCHS[arch]
    return _ResNet(block, layers, width)


def to_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Short side to ``size`` (bilinear, antialiased), then a centre crop: ``(N, 1, size, size)``."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the backbone's input range."""
    return x * 2 - 1


def augment(x: torch.Tensor, config: Config, g: torch.Generator) -> torch.Tensor:
    """One random view of each image in ``x`` (N, 1, H, W) in [0, 1]; the randomness comes from ``g`` (CPU)."""
    n = x.shape[0]

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

    # random resized crop (area fraction, aspect ratio 3/4..4/3), rotation and translation as one affine
    # map from output to input coordinates in [-1, 1]
    area = u(*config.crop_scale)
    ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
    # a side that would leave the image is clamped to it and the other side keeps the area (the aspect gives)
    sw = (area * ratio).sqrt().clamp(max=1)
    sh = (area / sw).clamp(max=1)
    sw = area / sh
    cx, cy = u(-1, 1) * (1 - sw), u(-1, 1) * (1 - sh)
    angle = u(-1, 1) * math.radians(config.rotation_deg)
    tx, ty = u(-1, 1) * 2 * config.translate, u(-1, 1) * 2 * config.translate
    flip = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < config.hflip_prob, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([flip * sw * cos, -sh * sin, cx + tx], -1), torch.stack([flip * sw * sin, sh * cos, cy + ty], -1)],
        dim=1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # brightness and contrast as torchvision's ColorJitter: scale, then blend with the image mean
    b = u(1 - config.brightness, 1 + config.brightness).to(x.device, x.dtype).view(n, 1, 1, 1)
    c = u(1 - config.contrast, 1 + config.contrast).to(x.device, x.dtype).view(n, 1, 1, 1)
    x = (x * b).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + (x - mean) * c).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.backbone = build_backbone(config.arch, config.width)
        d = self.backbone.out_dim
        # MoCo v2's head plus a BatchNorm (as SimCLR and MoCo v3 have): pooled ReLU features are all positive,
        # so without centring every query starts in nearly the same direction and a small model stalls there
        self.head = nn.Sequential(nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                                  nn.Linear(d, config.feature_dim))

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)


class _TrainDescriptor:
    """``MoCoCXR.train(dataset, config, out_dir)`` on the class (the cxrbench training contract), while
    ``model.train(mode)`` on an instance stays ``nn.Module.train`` (which ``model.eval()`` calls)."""

    def __init__(self, fit):
        self.fit = fit
        self.__doc__ = fit.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return types.MethodType(self.fit, cls)
        return types.MethodType(nn.Module.train, obj)


class MoCoCXR(PretrainedMixin, nn.Module):
    """MoCo v2 + clustering loss. ``embed(images)`` gives the representation cxrbench evaluates in."""

    name = "moco"
    Config = Config

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.encoder_q = _Encoder(config)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        q, f, k = config.queue_size, config.feature_dim, config.num_clusters
        g = torch_generator(config.seed + 1)
        self.register_buffer("queue", F.normalize(torch.randn(q, f, generator=g), dim=1))
        self.register_buffer("queue_group", torch.full((q,), -1, dtype=torch.long))  # label group per key
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))  # keys enqueued so far (<= q)
        self.register_buffer("centroids", torch.zeros(k, f))
        self.register_buffer("centroids_ready", torch.zeros(k, dtype=torch.bool))

    @property
    def num_features(self) -> int:
        return self.encoder_q.backbone.out_dim

    # --- the representation --------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Image contract ``(N, 1, H, W)`` in [0, 1] -> the backbone's input (square, [-1, 1])."""
        return normalize(to_square(images, self.config.image_size))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image contract ``(N, 1, H, W)`` in [0, 1] -> pooled backbone features ``(N, D)`` (eval mode)."""
        backbone = self.encoder_q.backbone
        was_training = backbone.training
        backbone.eval()
        device = next(backbone.parameters()).device
        out = backbone(self.preprocess(images.to(device, torch.float32)))
        backbone.train(was_training)
        return out

    # --- one training step ------------------------------------------------------------------------------
    def _keys(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Key embeddings with shuffled BatchNorm chunks, returned in the original order."""
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        chunks = x[perm].tensor_split(self.config.bn_splits)
        k = torch.cat([self.encoder_k(c) for c in chunks])
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def _update_centroids(self, keys: torch.Tensor, groups: torch.Tensor, g: torch.Generator,
                          label_mode: bool) -> None:
        """Centroids from the queued keys plus this batch's: group means (labels) or spherical k-means."""
        n = int(self.queue_len)
        pool = torch.cat([self.queue[:n], keys])
        k = self.config.num_clusters
        if label_mode:
            pool_groups = torch.cat([self.queue_group[:n], groups])
            for j in range(k):
                members = pool[pool_groups == j]
                if len(members):
                    self.centroids[j] = F.normalize(members.mean(0), dim=0)
                    self.centroids_ready[j] = True
            return
        if not bool(self.centroids_ready.all()):
            if len(pool) < k:
                return
            self.centroids.copy_(pool[torch.randperm(len(pool), generator=g)[:k].to(pool.device)])
            self.centroids_ready.fill_(True)
        c = self.centroids
        for _ in range(self.config.kmeans_iters):
            sim = pool @ c.T
            assign = sim.argmax(1)
            sums = torch.zeros_like(c).index_add_(0, assign, pool)
            counts = torch.bincount(assign, minlength=k)
            c = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), c)
            # an empty cluster restarts at the point its centroid explains worst
            for j in torch.nonzero(counts == 0).flatten().tolist():
                worst = sim.gather(1, assign[:, None]).squeeze(1).argmin()
                c[j] = pool[worst]
                sim[worst] = float("inf")
        self.centroids.copy_(c)

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.config.momentum
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor, groups: torch.Tensor) -> None:
        q, b = self.config.queue_size, keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(b, device=keys.device)) % q
        self.queue[idx] = keys
        self.queue_group[idx] = groups
        self.queue_ptr.fill_((int(self.queue_ptr) + b) % q)
        self.queue_len.fill_(min(q, int(self.queue_len) + b))

    def training_loss(self, images: torch.Tensor, groups: torch.Tensor, g: torch.Generator,
                      *, label_mode: bool) -> dict[str, torch.Tensor]:
        """Losses for one batch of images (N, 1, S, S) in [0, 1]; ``groups`` is -1 where unknown.

        Draws both views and the key shuffle from ``g``; updates the centroids (not the queue).
        """
        cfg = self.config
        view_q = normalize(augment(images, cfg, g))
        view_k = normalize(augment(images, cfg, g))
        q = torch.cat([self.encoder_q(c) for c in view_q.tensor_split(cfg.bn_splits)])
        with torch.no_grad():
            self._momentum_update()
            k = self._keys(view_k, g)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.T
        logits = torch.cat([pos, neg], 1) / cfg.temperature
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
        loss_moco = F.cross_entropy(logits, target)

        self._update_centroids(k, groups, g, label_mode)
        ready = self.centroids_ready
        assign = groups if label_mode else (k @ self.centroids.T).argmax(1)
        use = (assign >= 0) & ready[assign.clamp(min=0)]
        if bool(use.any()) and int(ready.sum()) > 1:
            proto = (q[use] @ self.centroids.T / cfg.temperature).masked_fill(~ready, float("-inf"))
            loss_kmeans = F.cross_entropy(proto, assign[use])
        else:
            loss_kmeans = q.sum() * 0.0
        loss = loss_moco + cfg.lambda_kmeans * loss_kmeans if cfg.lambda_kmeans > 0 else loss_moco
        acc = (logits.argmax(1) == 0).float().mean()
        return {"loss": loss, "loss_moco": loss_moco, "loss_kmeans": loss_kmeans.detach(), "pos_acc": acc,
                "keys": k}

    @torch.no_grad()
    def eval_contrastive_loss(self, images: torch.Tensor, *, seed: int = 0) -> float:
        """InfoNCE of two fixed random views of ``images`` with in-batch negatives, through the query encoder
        (BatchNorm on batch statistics, as in training; the model is left untouched). A queue-free measure
        that is comparable before and after training."""
        enc = copy.deepcopy(self.encoder_q).train()
        device = next(enc.parameters()).device
        g = torch_generator(seed)
        x = to_square(images.to(device, torch.float32), self.config.image_size)
        a, b = enc(normalize(augment(x, self.config, g))), enc(normalize(augment(x, self.config, g)))
        logits = a @ b.T / self.config.temperature
        return float(F.cross_entropy(logits, torch.arange(len(a), device=device)))

    # --- training ----------------------------------------------------------------------------------------
    @_TrainDescriptor
    def train(cls, dataset, config: Config, out_dir, *, device: str = "auto", stop_after: int | None = None,
              progress: bool = True) -> "MoCoCXR":
        """Train on ``dataset`` (items ``(image (1, H, W) in [0, 1], label vector)``), writing to ``out_dir``.

        Resumes from ``out_dir/checkpoint.pt`` when present (the config must match). ``stop_after`` ends this
        call after that many steps in total (a time-sliced job); a later call continues. Writes ``config.json``
        + ``model.pt`` (the trained model), ``loss.csv`` and ``loss.png``; returns the model in eval mode.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        device = torch.device(resolve_device(device))
        ckpt_path = out / "checkpoint.pt"
        seed_everything(config.seed)
        model = cls(config)

        images, groups, group_names = _load_dataset(dataset, config)
        label_mode = config.use_labels and len(group_names) >= 2  # one group has nothing to be pulled from
        if len(images) < config.batch_size:
            raise DataError(
                f"moco: the dataset has {len(images)} images, fewer than batch_size={config.batch_size}; "
                "lower batch_size or add images"
            )
        model.to(device)
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=config.lr, momentum=0.9,
                              weight_decay=config.weight_decay)
        history: list[dict] = []
        start = 0
        if ckpt_path.is_file():
            state = _load_checkpoint(ckpt_path, config, device)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history, start = state["history"], int(state["step"])
            log.info("moco: resuming %s at step %d", ckpt_path, start)
        meta = {"groups": group_names if label_mode else [], "n_images": len(images), "clustering":
                "labels" if label_mode else "kmeans"}
        atomic_write_bytes(out / "train_info.json", json.dumps(meta, indent=2).encode())

        end = config.steps if stop_after is None else min(config.steps, stop_after)
        steps_per_epoch = len(images) // config.batch_size
        nn.Module.train(model, True)
        bar = tqdm(total=config.steps, initial=start, desc="moco", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        for step in range(start, end):
            # batch and augmentations are functions of (seed, step): a resumed run repeats them exactly
            epoch, i = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(images), generator=torch_generator(config.seed * 1_000_003 + epoch))
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            g = torch_generator(config.seed * 1_000_003 + 7919 * (step + 1))
            x = images[idx].to(device, torch.float32) / 255
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, config.steps)))
            for pg in opt.param_groups:
                pg["lr"] = lr
            out_step = model.training_loss(x, groups[idx].to(device), g, label_mode=label_mode)
            opt.zero_grad(set_to_none=True)
            out_step["loss"].backward()
            opt.step()
            model._enqueue(out_step["keys"], groups[idx].to(device))
            row = {"step": step + 1, "lr": lr, **{k: float(v.detach()) for k, v in out_step.items() if k != "keys"}}
            if not math.isfinite(row["loss"]):
                raise CxrbenchError(f"moco: loss became {row['loss']} at step {step + 1}; lower lr (now {config.lr})")
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['pos_acc']:.2f}")
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < end:
                _save_checkpoint(ckpt_path, model, opt, history, step + 1)
                _save_loss_curve(out, history)
        bar.close()
        if end > start or not ckpt_path.is_file():
            _save_checkpoint(ckpt_path, model, opt, history, end)
        _save_loss_curve(out, history)
        model.eval()
        model.save_pretrained(out)
        return model


# ---------------------------------------------------------------------------------------------------------
# trainer helpers
# ---------------------------------------------------------------------------------------------------------


def _load_dataset(dataset, config: Config) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image once to uint8 ``(N, 1, S, S)`` in memory, plus a label group per image.

    A group is a distinct set of positive findings (``"No Finding"``, ``"Pneumonia"``, ``"Effusion+Mass"``);
    the ``num_clusters`` most frequent are kept (ties by name), other images get group -1 (no pull).
    """
    n = len(dataset)
    if n == 0:
        raise DataError("moco: the training dataset is empty; point --data at a folder of images")
    images = torch.empty((n, 1, config.image_size, config.image_size), dtype=torch.uint8)
    patterns: list[str | None] = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.num_workers)
    for i, (img, label) in enumerate(tqdm(loader, total=n, desc="decode", file=sys.stderr, leave=False)):
        img = torch.as_tensor(img, dtype=torch.float32)
        if img.ndim != 3 or img.shape[0] != 1:
            raise DataError(f"moco: dataset item {i} is {tuple(img.shape)}, expected (1, H, W)")
        images[i] = (to_square(img[None], config.image_size)[0] * 255).round().clamp(0, 255).to(torch.uint8)
        patterns.append(_label_pattern(label))
    counts: dict[str, int] = {}
    for p in patterns:
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    names = sorted(counts, key=lambda p: (-counts[p], p))[: config.num_clusters]
    index = {p: j for j, p in enumerate(names)}
    groups = torch.tensor([index.get(p, -1) if p is not None else -1 for p in patterns], dtype=torch.long)
    return images, groups, names


def _label_pattern(label) -> str | None:
    if label is None:
        return None
    v = np.asarray(label, dtype=np.float64).ravel()
    if v.size == 0 or np.isnan(v).all():
        return None
    names = LABELS if v.size == len(LABELS) else [f"label_{j}" for j in range(v.size)]
    pos = [nm for nm, x in zip(names, v) if np.isfinite(x) and x > 0.5]
    return "+".join(pos) if pos else "(none)"


def _save_checkpoint(path: Path, model: MoCoCXR, opt, history: list[dict], step: int) -> None:
    atomic_torch_save(
        {"step": step, "config": dataclasses.asdict(model.config), "model": model.state_dict(),
         "optimizer": opt.state_dict(), "history": history},
        path,
    )


def _load_checkpoint(path: Path, config: Config, device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CxrbenchError(f"{path}: cannot be loaded ({e.__class__.__name__}); delete it to start over") from e
    saved = Config(**state["config"])
    if saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in dataclasses.asdict(saved).items() if getattr(config, k) != v}
        raise CxrbenchError(
            f"{path}: was trained with a different config {diff} (saved, requested); "
            "use a new output folder or delete the checkpoint to start over"
        )
    return state


def _save_loss_curve(out: Path, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]))
    w.writeheader()
    w.writerows(history)
    atomic_write_bytes(out / "loss.csv", buf.getvalue().encode())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "total"), ("loss_moco", "InfoNCE"), ("loss_kmeans", "clustering")):
        ax.plot(steps, [r[key] for r in history], label=label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    atomic_write_bytes(out / "loss.png", png.getvalue())


# ---------------------------------------------------------------------------------------------------------
# command line (until `cxrbench train moco` exists): python -m baselines.moco --data DIR --out DIR
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m baselines.moco",
        description="Train the MoCo-CXR representation model (seed 002).",
        epilog="example:\n  python -m baselines.moco --data ../shared/data/kermany_pediatric_covid_skytells "
        "--out runs/moco --image-size 64 --set width=32 steps=300",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="image folder (with labels.csv for label groups)")
    parser.add_argument("--labels", default=None, help="labels CSV (default: DATA/labels.csv when present)")
    parser.add_argument("--out", required=True, help="output folder (resumes when it holds checkpoint.pt)")
    parser.add_argument("--image-size", type=int, default=Config.image_size)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides (JSON values)")
    args = parser.parse_args(argv)
    from cxrbench.data import ImageFolder

    try:
        overrides = {}
        for kv in args.set:
            key, _, value = kv.partition("=")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        fields = {f.name for f in dataclasses.fields(Config)}
        if set(overrides) - fields:
            raise UsageError(f"moco: unknown config keys {sorted(set(overrides) - fields)}; known: {sorted(fields)}")
        config = Config(image_size=args.image_size, **overrides)
        dataset = ImageFolder(args.data, labels_csv=args.labels)
        MoCoCXR.train(dataset, config, args.out, device=args.device)
    except CxrbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(Path(args.out) / "model.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
