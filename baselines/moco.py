"""MoCo v2 for chest radiographs, with the auxiliary clustering loss of the Mphasis
white paper (Selvadeepa et al., "Synthetic Chest X-ray Image Generator", 2023).

The white paper evaluates generated CXRs in the embedding of a self-supervised MoCo model
trained on radiographs, with ``L = L_moco + lambda * L_kmeans``: the clustering term pulls every embedding
toward the centroid of its group, so that images of the same kind (same findings) sit together.

- MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by SGD, a key encoder that is its
  exponential moving average, a FIFO queue of past keys as negatives, InfoNCE with temperature, and a
  2-layer projection MLP. One device has no cross-GPU "shuffle BN", so keys are computed on a shuffled batch
  in ``bn_splits`` chunks (BatchNorm statistics per chunk), which removes the same shortcut.
- For small data and short CPU runs: the queue holds at most ``queue_fraction`` (1/4) of the training set
  (at least one batch; a warning says when ``queue_size`` is cut), because a queue as long as the data set
  (4096 keys over 600 NIH images) holds keys of the query's own image from earlier epochs, which InfoNCE
  then pushes away as negatives (ImageNet MoCo: 65536 of 1.28M, 5%); and the key encoder's momentum is
  0.99, whose ~100-step time constant lets the keys follow a run of a few thousand steps, where 0.999 keeps
  them near their random initialisation for the first thousand (MoCo v1's ablation over 200 ImageNet
  epochs: about one point of linear accuracy below 0.999). For a short run also set ``schedule_steps`` to
  its ``--steps`` (the cosine decay then ends with the run).
- Backbone: a torchvision ResNet (``weights=None``: nothing is downloaded) with a 1-channel stem and an
  optional narrower width for CPU runs. The embedding used by ``cxrbench`` is the pooled backbone output
  (``encode`` / ``embed``); the projection head only serves training, as in MoCo's linear evaluation.
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

Training runs on the shared trainer (``baselines.trainer.fit``: seeded, resumable checkpoints, step/epoch/
wall-clock budgets, ``losses.csv``): ``MoCoCXR.train(dataset, config, out_dir, options=TrainOptions(...))`` or
``cxrbench train moco --data DIR --image-size N --out DIR --steps N``. ``out_dir`` then holds ``config.json``
+ ``model.pt`` (the folder the ``moco`` feature extractor loads: ``--moco-checkpoint DIR``), ``checkpoint.pt``,
``losses.csv``, ``loss.png`` and ``clusters.json`` (which groups the clustering term used).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cxrbench.data.labels import LABELS
from cxrbench.fileio import atomic_write_bytes
from cxrbench.generator import PretrainedMixin
from cxrbench.seeding import torch_generator

from .trainer import Batch, Trainable, _TrainDescriptor, set_cosine_lr

# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


@dataclass
class Config:
    image_size: int = 224
    arch: str = "resnet18"
    #: channels of the first stage (torchvision: 64); 16 or 32 make CPU runs practical
    width: int = 64
    feature_dim: int = 128  # projection output
    queue_size: int = 4096
    queue_fraction: float = 0.25  # the queue holds at most this fraction of the training set (>= one batch)
    momentum: float = 0.99  # key encoder EMA (MoCo: 0.999 for 200 ImageNet epochs; 0.99 follows short runs)
    temperature: float = 0.2
    bn_splits: int = 4  # BatchNorm chunks standing in for MoCo's per-GPU shuffle BN
    # clustering term (the white paper): L = L_moco + lambda_kmeans * L_kmeans
    lambda_kmeans: float = 0.5
    num_clusters: int = 8  # k-means K; with labels, at most this many label groups
    use_labels: bool = True  # False: learned k-means even when the dataset has labels
    kmeans_iters: int = 3  # Lloyd iterations per step, warm-started from the previous centroids
    # optimisation (MoCo v2: SGD, momentum 0.9, weight decay 1e-4, cosine schedule); the step budget and the
    # seed are the trainer's (TrainOptions / --steps / --seed)
    batch_size: int = 64
    lr: float = 0.03
    weight_decay: float = 1e-4
    schedule_steps: int = 0  # length of the cosine learning-rate decay in steps; 0 keeps lr constant
    # augmentations
    crop_scale: tuple[float, float] = (0.4, 1.0)
    rotation_deg: float = 10.0
    translate: float = 0.1  # fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    hflip_prob: float = 0.0

    def __post_init__(self):
        self.crop_scale = tuple(float(s) for s in self.crop_scale)  # JSON / TOML give lists
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.width < 1 or self.image_size < 8 or self.batch_size < 2 or self.schedule_steps < 0:
            raise ValueError("width >= 1, image_size >= 8, batch_size >= 2 and schedule_steps >= 0 are needed")
        if self.batch_size % self.bn_splits or self.batch_size // self.bn_splits < 2:
            raise ValueError(f"batch_size {self.batch_size} must split into bn_splits={self.bn_splits} chunks of >= 2")
        if self.queue_size < self.batch_size:
            raise ValueError(f"queue_size {self.queue_size} must be >= batch_size {self.batch_size}")
        if not 0 < self.queue_fraction <= 1:
            raise ValueError(f"queue_fraction must be in (0, 1], got {self.queue_fraction}")
        if self.lambda_kmeans < 0 or self.num_clusters < 1:
            raise ValueError("lambda_kmeans >= 0 and num_clusters >= 1 are needed")


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


def augment(x: torch.Tensor, config: Config, g: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each image in ``x`` (N, 1, H, W) in [0, 1]; parameters are drawn on the CPU from
    ``g`` (the global RNG when None, which the trainer seeds and checkpoints)."""
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


class _TrainAndPlot(_TrainDescriptor):
    """``MoCoCXR.train(...)`` is the trainer's, then draws ``loss.png`` and writes ``clusters.json``."""

    def __get__(self, obj, cls):
        train = super().__get__(obj, cls)
        if obj is not None:
            return train

        def train_and_plot(dataset, config=None, out_dir=None, **kw):
            model = train(dataset, config, out_dir, **kw)
            out = Path(out_dir)
            atomic_write_bytes(out / "clusters.json", json.dumps(model.clustering(), indent=2).encode())
            _plot_losses(out / "losses.csv", out / "loss.png")
            return model

        return train_and_plot


class MoCoCXR(Trainable, PretrainedMixin, nn.Module):
    """MoCo v2 + clustering loss. ``encode`` / ``embed`` give the representation cxrbench evaluates in."""

    name = "moco"
    Config = Config
    train = _TrainAndPlot()

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.encoder_q = _Encoder(config)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        q, f, k = config.queue_size, config.feature_dim, config.num_clusters
        self.register_buffer("queue", F.normalize(torch.randn(q, f), dim=1))
        self.register_buffer("queue_group", torch.full((q,), -1, dtype=torch.long))  # label group per key
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))  # keys enqueued so far (<= limit)
        # the queue's length in use: queue_size, or less for a small training set (on_train_start)
        self.register_buffer("queue_limit", torch.tensor(q, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(k, f))
        self.register_buffer("centroids_ready", torch.zeros(k, dtype=torch.bool))
        # label groups: the set of positive findings that defines each group (filled by on_train_start)
        self.register_buffer("group_findings", torch.zeros(k, len(LABELS), dtype=torch.bool))
        self.register_buffer("num_groups", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_pre_hook(_full_queue_for_old_folders)

    @property
    def num_features(self) -> int:
        return self.encoder_q.backbone.out_dim

    # --- the representation --------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Image contract ``(N, 1, H, W)`` in [0, 1] -> the backbone's input (square, [-1, 1])."""
        return normalize(to_square(images, self.config.image_size))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(N, D)`` of images ``(N, 1, H, W)`` in [0, 1], differentiable in the
        images (the white paper's representation loss for DiffuseVAE backpropagates through it); call in eval mode."""
        return self.encoder_q.backbone(self.preprocess(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``encode`` in eval mode without gradients, on the model's device."""
        backbone = self.encoder_q.backbone
        was_training = backbone.training
        backbone.eval()
        out = self.encode(images.to(next(backbone.parameters()).device, torch.float32))
        backbone.train(was_training)
        return out

    # --- clustering groups ---------------------------------------------------------------------------------
    def on_train_start(self, dataset) -> None:
        """The queue's length for this training set; label groups from the training labels: each distinct set
        of positive findings is a group, the ``num_clusters`` most frequent kept (ties by name); fewer than two
        groups means learned k-means."""
        c, n = self.config, len(dataset)
        limit = min(c.queue_size, max(c.batch_size, int(c.queue_fraction * n)))
        if limit < c.queue_size:
            warnings.warn(
                f"moco: queue_size {c.queue_size} is more than {c.queue_fraction:g} of the {n} training images; "
                f"using a queue of {limit} keys, so that a query's own earlier views are rarely its negatives "
                "(queue_fraction sets the share)",
                stacklevel=2,
            )
        self.queue_limit.fill_(limit)
        labels = _dataset_labels(dataset)
        if labels is None or not self.config.use_labels:
            return
        known = ~labels.isnan().all(1)
        pos = (labels > 0.5)[known]
        if len(pos) == 0:
            return
        patterns, counts = torch.unique(pos, dim=0, return_counts=True)
        order = sorted(range(len(patterns)), key=lambda i: (-int(counts[i]), _group_name(patterns[i])))
        keep = order[: self.config.num_clusters]
        self.group_findings.zero_()
        self.group_findings[: len(keep)] = patterns[keep]
        self.num_groups.fill_(len(keep))

    @property
    def label_mode(self) -> bool:
        return int(self.num_groups) >= 2

    def groups_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Group index of each label vector ``(B, 15)`` (-1: unlabelled, or a set of findings not kept)."""
        k = int(self.num_groups)
        out = torch.full((labels.shape[0],), -1, dtype=torch.long, device=labels.device)
        if k == 0:
            return out
        pos = labels > 0.5
        match = (pos[:, None, :] == self.group_findings[None, :k, :].to(labels.device)).all(-1)  # (B, k)
        hit = match.any(1) & ~labels.isnan().all(1)
        out[hit] = match.float().argmax(1)[hit]
        return out

    def clustering(self) -> dict:
        """What the clustering term used: ``{"mode": "labels"|"kmeans"|"off", "groups": [...]}``."""
        if self.config.lambda_kmeans == 0:
            return {"mode": "off", "groups": []}
        if self.label_mode:
            return {"mode": "labels", "groups": [_group_name(p) for p in self.group_findings[: int(self.num_groups)]]}
        return {"mode": "kmeans", "groups": [], "k": self.config.num_clusters}

    # --- one training step ------------------------------------------------------------------------------
    def _keys(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Key embeddings with shuffled BatchNorm chunks, returned in the original order."""
        perm = torch.randperm(x.shape[0], generator=g).to(x.device)
        chunks = x[perm].tensor_split(self.config.bn_splits)
        k = torch.cat([self.encoder_k(c) for c in chunks])
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def _update_centroids(self, keys: torch.Tensor, groups: torch.Tensor, g: torch.Generator | None,
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
        q, b = int(self.queue_limit), keys.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(b, device=keys.device)) % q
        self.queue[idx] = keys
        self.queue_group[idx] = groups
        self.queue_ptr.fill_((int(self.queue_ptr) + b) % q)
        self.queue_len.fill_(min(q, int(self.queue_len) + b))

    def training_loss(self, images: torch.Tensor, groups: torch.Tensor, *, label_mode: bool,
                      g: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses for one batch of images (N, 1, S, S) in [0, 1]; ``groups`` is -1 where unknown.

        Draws both views and the key shuffle from ``g`` (the global RNG when None); updates the centroids,
        not the queue (the caller enqueues ``keys`` after the optimiser step).
        """
        cfg = self.config
        view_q = normalize(augment(images, cfg, g))
        view_k = normalize(augment(images, cfg, g))
        q = torch.cat([self.encoder_q(c) for c in view_q.tensor_split(cfg.bn_splits)])
        with torch.no_grad():
            self._momentum_update()
            k = self._keys(view_k, g)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue[: int(self.queue_limit)].T
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

    # --- the trainer's interface ---------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {"sgd": torch.optim.SGD(self.encoder_q.parameters(), lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c, opt = self.config, optimizers["sgd"]
        lr = set_cosine_lr(opt, c.lr, step, c.schedule_steps)
        groups = self.groups_of(batch.labels)
        out = self.training_loss(batch.images, groups, label_mode=self.label_mode)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        self._enqueue(out["keys"], groups)
        return {"lr": lr, **{k: float(v.detach()) for k, v in out.items() if k != "keys"}}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _dataset_labels(dataset) -> torch.Tensor | None:
    """``(N, 15)`` label vectors of a training set, NaN where unknown; None when it has no labels."""
    source = getattr(dataset, "source", None)
    if source is not None and hasattr(source, "label_matrix"):  # cxrbench ImageFolder: no image decoding
        lm = source.label_matrix()
        return None if lm is None else torch.as_tensor(np.asarray(lm), dtype=torch.float32)
    rows = []
    for i in range(len(dataset)):  # any other dataset: its items' label vectors
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            return None
        rows.append(torch.as_tensor(item[1], dtype=torch.float32).reshape(-1))
    return torch.stack(rows) if rows else None


def _full_queue_for_old_folders(module, state_dict, prefix, *args) -> None:
    # folders saved before queue_limit existed used the whole queue
    state_dict.setdefault(prefix + "queue_limit", torch.tensor(module.config.queue_size, dtype=torch.long))


def _group_name(findings: torch.Tensor) -> str:
    names = [LABELS[j] for j in torch.nonzero(findings).flatten().tolist()]
    return "+".join(names) if names else "(no positive finding)"


def _plot_losses(csv_path: Path, png_path: Path) -> None:
    if not csv_path.is_file():
        return
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [float(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "total"), ("loss_moco", "InfoNCE"), ("loss_kmeans", "clustering")):
        if key in rows[0]:
            ax.plot(steps, [float(r[key]) for r in rows], label=label, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
