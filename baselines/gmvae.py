"""Gaussian-mixture VAE (``gmvae``) and its label-conditioned variant (``fs-gmvae``) of Kumar & Triana.

Kumar & Triana, "Generating Synthetic Chest X-Rays with generative modeling" (Stanford course report;
undated, it cites the CS 236 course of fall 2023), section 4, 5.1 and Tables 2-5, train GMVAEs
(Dilokthanakul et al.; the CS236 formulation) on CXR14 with an ImageNet feature encoder:

- encoder: the convolutional features of VGG16 (512 x 7 x 7 at 224 px) or DenseNet121 (1024 x 7 x 7), fed
  the grey image replicated to 3 channels, optionally ImageNet-normalised ("Normalize Blue" in Table 4);
  torchvision architectures, random init by default, ImageNet weights only from a local file
  (``encoder_weights``: a torchvision state dict, e.g. ``vgg16-397923af.pth``), loaded when training starts;
- optional transition layer (after Mao et al.): Conv2d 1x1 (features -> 300), BatchNorm(300), ReLU,
  MaxPool(7) (here adaptive max pooling to 1x1, which is MaxPool(7) at 224 px and works at any size),
  Linear(300 -> 2z); without it the feature map is flattened into Linear(-> 2z). The report says "output
  desired z dimension"; a VAE needs a mean and a variance, so the layer gives both (CS236:
  ``gaussian_parameters`` splits 2z into mean and softplus variance);
- decoders: "decoder1" (Table 2: ConvTranspose2d k=4 s=2 p=1, 14->6->3->3->3 channels from a 14 x 14 map)
  and "decoder2" (Table 3: 128->64->32->16->3 from a 128 x 14 x 14 map), both preceded by a Linear layer
  from z to the input map that the tables do not show (nor count), with LeakyReLU(0.2) between the
  transposed convolutions (the tables give no activations; ReLU dies in decoder1's 3-channel layers and
  cuts the output off from z) and a sigmoid at the end; and "linear" ("Linear Layers" of FS-GMVAE V1/V2, unspecified in
  the report): Linear(z, 512) -> ReLU -> Linear(512, S*S) -> sigmoid, one channel. The convolutional
  decoders output 3 channels, as the report trained on 3-channel images; the loss compares them with the
  replicated grey image and ``sample`` averages them back to one channel;
- prior: a uniform mixture of K Gaussians with learned means and variances (CS236 ``z_pre``);
  KL(q(z|x) || p(z)) is the single-sample estimate log q(z|x) - log p(z);
- loss: MSE reconstruction (mean over pixels, as for the report's VAE) + beta * KL; Adam lr 1e-4, batch 64;
  against the summed squared error the KL weight is then ``beta * H * W`` (``baselines/vae.py`` explains;
  ``reconstruction = "sum"`` gives the ELBO-consistent scaling, where beta = 1 is the ELBO);
- ``fs-gmvae`` concatenates the label vector y (15 NIH labels + No Finding, 0/1) to z before the decoder
  ("the label y = [1, 0, 1, ...] as a positional token in the Z space"), so it samples conditionally; its
  encoder gets y too, next to the image features before the mean/variance layer: a conditional VAE's
  posterior is q(z | x, y), so z need not encode the findings the decoder is already given. (A folder saved
  before the encoder took y loads with zero weights on it, which is the old encoder.)

Table 4's variants are in ``VARIANTS`` (``GMVAE.Config(**VARIANTS["GMVAE V8"])``). Parameter counts
(Table 5, which counts only convolution *weights*, no biases): VGG16 features 14,714,688; decoder1 1,920
weights (+15 biases); decoder2 172,800 weights (+115 biases); both checked in the tests. DenseNet121
features have 6,953,856. For CPU runs and tests ``encoder="conv"`` is a small VGG-style stack
(``conv_channels``, one 3x3 conv + ReLU + max-pool per entry), trained from scratch.

No ImageNet weights can be had on these machines, so the report's frozen pretrained encoder ("GM-VAE (Encoder
in Eval)", Table 5) has a stand-in here, ``encoder = "moco"``: a representation model pretrained *on
radiographs* by cxrbench, the MoCo v2 model of the Mphasis white paper (``baselines/moco.py``, trained with
``cxrbench train moco`` on the generator's own training split, e.g. as a recipe's first ``[[stage]]``). It is
not the report's model (ImageNet VGG16 / DenseNet121), and it is never the evaluation protocol's own feature
network: a generator whose encoder were the ruler would be fitted to it. Its ResNet feature map (before the
average pooling; ``C x S/32 x S/32`` as VGG16's 512 x 7 x 7 at 224 px) feeds the transition layer or the
flattening exactly as VGG16's features do; the grey image goes in as MoCo saw it in training (one channel,
resized to ``moco_image_size``, [-1, 1]), so ``imagenet_normalize`` must be false. ``moco_arch``,
``moco_width`` and ``moco_image_size`` repeat the MoCo folder's architecture so that a saved GMVAE folder
builds without it (checked when the weights load, at the start of training); the weights are copied in and
saved with the GMVAE. ``MOCO_ENCODER`` holds the frozen setting, to combine with a Table 4 variant's z and
K: ``GMVAE.Config(**{**VARIANTS["GMVAE V8"], **MOCO_ENCODER, "encoder_weights": "runs/moco"})``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxrbench.data.labels import LABELS
from cxrbench.errors import UsageError, WeightsError
from cxrbench.generator import Generator
from cxrbench.seeding import torch_generator

from .moco import ARCHS as MOCO_ARCHS
from .moco import MoCoCXR, build_backbone, to_square
from .trainer import Batch, LabelBankMixin, Trainable, label_matrix
from .vae import squared_error

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_CHANNELS = {"decoder1": (14, 6, 3, 3, 3), "decoder2": (128, 64, 32, 16, 3)}

# the report's frozen pretrained encoder with a radiograph MoCo model in place of ImageNet VGG16 (see above)
MOCO_ENCODER = dict(encoder="moco", imagenet_normalize=False, freeze_encoder=True)

# Table 4. "Normalize Blue" = ImageNet normalisation; "Linear Layers" = the "linear" decoder.
VARIANTS = {
    "FS-GMVAE V1": dict(z_dim=1000, k=50, transition=True, imagenet_normalize=True, encoder="vgg16", decoder="linear"),
    "FS-GMVAE V2": dict(z_dim=1000, k=50, transition=True, imagenet_normalize=False, encoder="vgg16", decoder="linear"),
    "FS-GMVAE V3": dict(z_dim=1000, k=50, transition=True, imagenet_normalize=True, encoder="vgg16",
                        decoder="decoder1"),
    "GMVAE V3": dict(z_dim=1000, k=50, transition=False, imagenet_normalize=True, encoder="vgg16", decoder="decoder1"),
    "GMVAE V4": dict(z_dim=1000, k=50, transition=True, imagenet_normalize=True, encoder="vgg16", decoder="decoder1"),
    "GMVAE V5": dict(z_dim=1000, k=50, transition=False, imagenet_normalize=True, encoder="vgg16", decoder="decoder2"),
    "GMVAE V6": dict(z_dim=2000, k=300, transition=True, imagenet_normalize=True, encoder="densenet121",
                     decoder="decoder2"),
    "GMVAE V7": dict(z_dim=2000, k=300, transition=False, imagenet_normalize=False, encoder="vgg16",
                     decoder="decoder2"),
    "GMVAE V8": dict(z_dim=2000, k=300, transition=True, imagenet_normalize=True, encoder="vgg16", decoder="decoder2"),
}


@dataclass
class GMVAEConfig:
    image_size: int = 224
    encoder: str = "vgg16"  # vgg16 | densenet121 | conv | moco
    # vgg16/densenet121: a local torchvision ImageNet state dict ("" = random init); moco: the folder of a
    # model trained by `cxrbench train moco` (required)
    encoder_weights: str = ""
    freeze_encoder: bool = False  # Table 5's "encoder in eval"
    conv_channels: tuple[int, ...] = (32, 64, 128)  # encoder="conv" only
    moco_arch: str = "resnet18"  # encoder="moco": the MoCo folder's arch, width and image_size
    moco_width: int = 64
    moco_image_size: int = 224
    imagenet_normalize: bool = True
    transition: bool = True
    transition_channels: int = 300
    z_dim: int = 1000
    k: int = 50
    decoder: str = "decoder2"  # decoder1 | decoder2 | linear
    linear_hidden: int = 512
    beta: float = 0.002  # as the report's VAE; it gives none for the GMVAE
    reconstruction: str = "mean"  # "mean" over pixels (the report's; KL weight beta*H*W) | "sum" (the ELBO's)
    lr: float = 1e-4
    batch_size: int = 64
    label_bank_size: int = 1024  # fs-gmvae: training label vectors kept to draw unrequested labels from

    def __post_init__(self):
        if self.encoder not in ("vgg16", "densenet121", "conv", "moco"):
            raise ValueError(f"encoder must be vgg16, densenet121, conv or moco, got {self.encoder!r}")
        if self.encoder == "moco":
            if self.imagenet_normalize:
                raise ValueError("imagenet_normalize is for the ImageNet encoders; set it false with "
                                 "encoder = \"moco\" (MoCo takes one grey channel in [-1, 1])")
            if self.moco_arch not in MOCO_ARCHS:
                raise ValueError(f"moco_arch must be one of {', '.join(MOCO_ARCHS)}, got {self.moco_arch!r}")
            if self.moco_width < 1 or self.moco_image_size < 32:
                raise ValueError("moco_width >= 1 and moco_image_size >= 32 are needed")
        if self.decoder not in ("decoder1", "decoder2", "linear"):
            raise ValueError(f"decoder must be decoder1, decoder2 or linear, got {self.decoder!r}")
        if self.decoder != "linear" and self.image_size % 16:
            raise ValueError(
                f"{self.decoder} upsamples 16x: image_size must be a multiple of 16, got {self.image_size}"
            )
        if self.reconstruction not in ("mean", "sum"):
            raise ValueError(f"reconstruction must be mean or sum, got {self.reconstruction!r}")
        if self.encoder in ("vgg16", "densenet121") and self.image_size < 32:
            raise ValueError(f"{self.encoder} pools 32x: image_size must be at least 32, got {self.image_size}")


# ---------------------------------------------------------------------------------------------------------
# networks


def _torchvision_features(name: str) -> tuple[nn.Module, int]:
    if name == "vgg16":
        # only VGG16's features (building the whole net allocates its 120M-parameter classifier), with
        # the initialisation torchvision.models.VGG gives them
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=False)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return features, 512
    net = torchvision.models.densenet121(weights=None)
    # torchvision's DenseNet applies ReLU after its features in forward(); keep it with the features
    return nn.Sequential(net.features, nn.ReLU()), 1024


class MoCoFeatures(nn.Module):
    """The ResNet trunk of a MoCo model (``baselines/moco.py``) up to its last feature map, fed as MoCo was
    trained: one grey channel, resized to its ``image_size``, in [-1, 1]."""

    def __init__(self, arch: str, width: int, image_size: int):
        super().__init__()
        self.backbone = build_backbone(arch, width)
        self.image_size = image_size

    def forward(self, x):
        b = self.backbone
        x = to_square(x, self.image_size) * 2 - 1  # moco.normalize
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


def _conv_features(channels) -> tuple[nn.Module, int]:
    layers, c_in = [], 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2)]
        c_in = c
    return nn.Sequential(*layers), c_in


def load_imagenet_features(features: nn.Module, name: str, path: str | Path) -> None:
    """Load a torchvision ImageNet state dict (whole model) from a local file into ``features``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{path}: encoder weights not found; place the torchvision {name} ImageNet state dict "
            f"(e.g. {'vgg16-397923af.pth' if name == 'vgg16' else 'densenet121-a639ec97.pth'}) there, "
            "or set encoder_weights = \"\" for random init"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot be loaded as a plain state dict ({e.__class__.__name__})") from e
    # old torchvision DenseNet files name "norm.1" what the module calls "norm1" (as torchvision remaps)
    pattern = re.compile(
        r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
        r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
    )
    state = {pattern.sub(lambda m: m.group(1) + m.group(2), k): v for k, v in state.items()}
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    target = features[0] if name == "densenet121" else features
    try:
        target.load_state_dict(feats)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:2])[:300]
        raise WeightsError(f"{path}: not a torchvision {name} state dict ({detail})") from e


def load_moco_features(features: MoCoFeatures, cfg: GMVAEConfig) -> None:
    """Copy the trunk of the MoCo model saved in ``cfg.encoder_weights`` into ``features``."""
    folder = Path(cfg.encoder_weights) if cfg.encoder_weights else None
    if folder is None or not (folder / "config.json").is_file():
        raise WeightsError(
            f"{folder or 'encoder_weights'}: encoder = \"moco\" needs encoder_weights = the folder of a model "
            "trained by `cxrbench train moco` (config.json + model.pt), e.g. a recipe's first [[stage]]"
        )
    try:
        kind = json.loads((folder / "config.json").read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != MoCoCXR.name:
        raise WeightsError(
            f"{folder}: a {kind or 'unknown'} folder, not a MoCo one; the GMVAE's pretrained encoder is a MoCo "
            "model trained by `cxrbench train moco`, never the evaluation protocol's feature network"
        )
    moco = MoCoCXR.from_pretrained(folder)
    mc = moco.config
    want = {"moco_arch": mc.arch, "moco_width": mc.width, "moco_image_size": mc.image_size}
    wrong = {k: v for k, v in want.items() if getattr(cfg, k) != v}
    if wrong:
        raise UsageError(
            f"{folder}: the MoCo model is {mc.arch}, width {mc.width}, image_size {mc.image_size}; set "
            f"{', '.join(f'{k} = {v!r}' for k, v in wrong.items())} in the GMVAE config"
        )
    features.backbone.load_state_dict(moco.encoder_q.backbone.state_dict())


class FeatureEncoder(nn.Module):
    """Grey image -> (3 channels) -> CNN features -> (transition) [+ labels] -> mean and variance of q(z|x[,y])."""

    def __init__(self, cfg: GMVAEConfig, label_dim: int = 0):
        super().__init__()
        self.label_dim = label_dim
        self.normalize = cfg.imagenet_normalize
        self.grey = cfg.encoder == "moco"  # MoCo's stem takes the one grey channel
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        size = cfg.image_size
        if cfg.encoder == "conv":
            self.features, c_feat = _conv_features(cfg.conv_channels)
            pools = len(cfg.conv_channels)
        elif cfg.encoder == "moco":
            self.features = MoCoFeatures(cfg.moco_arch, cfg.moco_width, cfg.moco_image_size)
            c_feat, pools, size = self.features.backbone.out_dim, 5, cfg.moco_image_size
        else:
            self.features, c_feat = _torchvision_features(cfg.encoder)
            pools = 5
        side = max(size // 2**pools, 1)
        if cfg.transition:
            t = cfg.transition_channels
            self.transition = nn.Sequential(
                nn.Conv2d(c_feat, t, 1), nn.BatchNorm2d(t), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()
            )
            self.head = nn.Linear(t + label_dim, 2 * cfg.z_dim)
        else:
            self.transition = nn.Flatten()
            self.head = nn.Linear(c_feat * side * side + label_dim, 2 * cfg.z_dim)
        self.register_load_state_dict_pre_hook(_zero_label_weights_for_old_folders)

    def forward(self, x, labels=None):
        if not self.grey:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        h = self.transition(self.features(x))
        if self.label_dim:
            h = torch.cat([h, labels.to(h)], dim=1)
        m, v = self.head(h).chunk(2, dim=1)
        return m, F.softplus(v) + 1e-8


def _zero_label_weights_for_old_folders(module, state_dict, prefix, *args) -> None:
    w = state_dict.get(prefix + "head.weight")
    if module.label_dim and w is not None and w.shape[1] == module.head.in_features - module.label_dim:
        state_dict[prefix + "head.weight"] = torch.cat([w, w.new_zeros(w.shape[0], module.label_dim)], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg: GMVAEConfig, in_dim: int):
        super().__init__()
        s = cfg.image_size
        if cfg.decoder == "linear":
            self.shape = (1, s, s)
            self.net = nn.Sequential(
                nn.Linear(in_dim, cfg.linear_hidden), nn.ReLU(), nn.Linear(cfg.linear_hidden, s * s), nn.Sigmoid()
            )
            self.convs = None
            return
        chans = DECODER_CHANNELS[cfg.decoder]
        self.shape = (chans[0], s // 16, s // 16)
        self.net = nn.Linear(in_dim, chans[0] * (s // 16) ** 2)
        layers = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1))
            # LeakyReLU: with 3-channel layers (decoder1) a plain ReLU dies at init and cuts z off
            layers.append(nn.LeakyReLU(0.2) if i < len(chans) - 2 else nn.Sigmoid())
        self.convs = nn.Sequential(*layers)

    def forward(self, z):
        x = self.net(z).view(-1, *self.shape)
        return x if self.convs is None else self.convs(x)


def log_normal(x, m, v):
    """log N(x; m, diag(v)), summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + v.log() + (x - m).pow(2) / v).sum(-1)


def log_normal_mixture(z, m, v):
    """log of a uniform mixture: z (B, D); m, v (K, D) -> (B,)."""
    return torch.logsumexp(log_normal(z[:, None, :], m[None], v[None]), dim=1) - math.log(m.shape[0])


# ---------------------------------------------------------------------------------------------------------
# models


class GMVAE(Trainable, Generator):
    name = "gmvae"
    Config = GMVAEConfig
    label_dim = 0  # fs-gmvae: the label vector concatenated to z

    def __init__(self, config: GMVAEConfig):
        super().__init__(config)
        c = config
        self.encoder = FeatureEncoder(c, self.label_dim)
        self.decoder = Decoder(c, c.z_dim + self.label_dim)
        # mixture prior: K means and (softplus) variances, CS236's initialisation
        self.z_pre = nn.Parameter(torch.randn(2 * c.k, c.z_dim) / math.sqrt(c.k * c.z_dim))
        if c.freeze_encoder:
            self.encoder.features.requires_grad_(False)

    def prior(self):
        m, v = self.z_pre.chunk(2, dim=0)
        return m, F.softplus(v) + 1e-8

    def on_train_start(self, dataset) -> None:
        if self.config.encoder == "moco":
            load_moco_features(self.encoder.features, self.config)
        elif self.config.encoder_weights:
            if self.config.encoder == "conv":
                raise UsageError("encoder_weights apply to vgg16/densenet121/moco encoders, not encoder = \"conv\"")
            load_imagenet_features(self.encoder.features, self.config.encoder, self.config.encoder_weights)

    def decode(self, z, labels=None):
        if self.label_dim:
            z = torch.cat([z, labels.to(z)], dim=1)
        return self.decoder(z)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        qm, qv = self.encoder(x, labels)
        z = qm + qv.sqrt() * torch.randn_like(qm)
        x_hat = self.decode(z, labels)
        rec = squared_error(x_hat, x, self.config.reconstruction)
        pm, pv = self.prior()
        kl = (log_normal(z, qm, qv) - log_normal_mixture(z, pm, pv)).mean()
        return {"loss": rec + self.config.beta * kl, "rec": rec, "kl": kl}

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return {"adam": torch.optim.Adam(params, lr=self.config.lr)}

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        if self.config.freeze_encoder:
            self.encoder.features.eval()  # frozen: BatchNorm statistics stay as loaded
        labels = torch.nan_to_num(batch.labels, nan=0.0) if self.label_dim else None
        losses = self.loss(batch.images, labels)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        return {k: v.item() for k, v in losses.items()}

    def _check_labels(self, n, labels, seed):
        if labels is not None:
            raise UsageError(f"{self.name} is unconditional: sample without labels")

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, seed: int | None = None) -> torch.Tensor:
        labels = self._check_labels(n, labels, seed)
        dev = next(self.parameters()).device
        g = torch_generator(seed) if seed is not None else None
        comp = torch.randint(0, self.config.k, (n,), generator=g)
        eps = torch.randn(n, self.config.z_dim, generator=g)
        m, v = self.prior()
        z = m[comp.to(dev)] + v[comp.to(dev)].sqrt() * eps.to(dev)
        was_training = self.training
        self.eval()
        x = self.decode(z, None if labels is None else labels.to(dev))
        self.train(was_training)
        return x.mean(dim=1, keepdim=True).float().clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, *, labels=None, seed: int | None = None) -> torch.Tensor:
        """Paired mode (``cxrbench sample --reconstruct``): each image -> mean of q(z|x[,y]) -> decoder, the
        channels averaged back to one as in ``sample``. The posterior mean, not a sample, so ``seed`` (accepted
        for the common interface) changes nothing. fs-gmvae needs each image's labels (unknown: absent)."""
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size):
            raise UsageError(f"reconstruct needs (N, 1, {size}, {size}) images, got {tuple(images.shape)}")
        if self.label_dim and labels is None:
            raise UsageError(f"{self.name} is conditional: reconstruct needs the images' labels (a labels.csv "
                             "next to them)")
        if labels is not None and not self.label_dim:
            raise UsageError(f"{self.name} is unconditional: reconstruct without labels")
        dev = next(self.parameters()).device
        y = None
        if self.label_dim:  # unknown findings count as absent, as in training
            y = torch.nan_to_num(torch.as_tensor(labels, dtype=torch.float32)).reshape(len(images), -1).to(dev)
        was_training = self.training
        self.eval()
        qm, _ = self.encoder(images.to(dev, torch.float32), y)
        x = self.decode(qm, y)
        self.train(was_training)
        return x.mean(dim=1, keepdim=True).float().clamp(0, 1)


@dataclass
class FSGMVAEConfig(GMVAEConfig):
    decoder: str = "linear"  # FS-GMVAE V1/V2 of Table 4


class FSGMVAE(LabelBankMixin, GMVAE):
    """GMVAE whose encoder sees [features, y] and decoder [z, y]: y is the 15-label vector (LABELS order), so
    sampling is conditional."""

    name = "fs-gmvae"
    Config = FSGMVAEConfig
    conditional = True
    label_dim = len(LABELS)

    def __init__(self, config: FSGMVAEConfig):
        super().__init__(config)
        self.register_buffer("label_bank", torch.zeros(config.label_bank_size, len(LABELS)))

    def on_train_start(self, dataset) -> None:
        GMVAE.on_train_start(self, dataset)
        LabelBankMixin.on_train_start(self, dataset)

    def _check_labels(self, n, labels, seed):
        # no labels requested: draw them from the training label distribution (the label bank)
        return self.draw_labels(n, seed=seed) if labels is None else label_matrix(labels, n)
