"""RadDino and DINOv2 ViT features through ``transformers``' ``Dinov2Model``.

- ``raddino``: ``microsoft/rad-dino`` (Perez-Garcia et al., "Exploring scalable medical image encoders beyond
  text supervision", 2025), a DINOv2 ViT-B/14 trained on chest X-rays; 768-d, 518 px. The output is the
  pooler output (the final layer-normed CLS token), the output CheXGenBench (Dutt et al. 2025) feeds to its
  FID, KID and PRDC.
- ``dinov2`` / ``dinov2-large``: ``facebook/dinov2-base`` (ViT-B/14, 768-d) / ``facebook/dinov2-large``
  (ViT-L/14, 1024-d), 224 px (Oquab et al., "DINOv2: Learning robust visual features without supervision",
  2023). The output is the pooler output, which is the same tensor as dgm-eval's (Stein et al., "Exposing
  flaws of generative model evaluation metrics and their unfair treatment of diffusion models", 2023):
  its DINOv2 encoder calls the torch.hub model, whose forward returns the head (an identity) of
  ``x_norm_clstoken``, the final layer-normed CLS token.

Preprocessing is each model's published image processor (``BitImageProcessor``; its settings ship in
``configs/<model>/preprocessor_config.json``), batched in torch: resize the shortest edge with bicubic
antialiasing (resample=3), centre crop, normalise with the model's mean and std, grey replicated to RGB.
It equals transformers' torch processor (``BitImageProcessor`` in transformers 5, ``BitImageProcessorFast``
before) fed the same float images; the PIL processor of transformers 4 on 8-bit images also rounds the
resized image to 8 bits and clips bicubic overshoot (differences within 8-bit quantisation).

``raddino`` with ``resize="chexgenbench"`` (``--raddino-resize chexgenbench``, set by the ``chexgenbench``
protocol) instead reproduces the images CheXGenBench (Dutt et al. 2025, ``metrics/fid.py``) hands RadDino: 8-bit,
squashed to 299 x 299 by PIL's bilinear filter (torchvision ``Resize((299, 299))``, aspect ratio not kept), then the
PIL ``BitImageProcessor`` of transformers 4 on those 8-bit pixels (bicubic to 518 x 518, rounded to 8 bits,
rescaled and normalised). It runs in PIL on the CPU, image by image, so the pixels are PIL's own.

Weights: the published ``model.safetensors`` of the pinned revision, from ``--weights DIR`` (a saved model
folder: config.json + model.safetensors, or a folder holding ``<model>/``: ``rad-dino/``, ``dinov2-base/``,
``dinov2-large/``), ``$CXRBENCH_WEIGHTS/<model>/``, the Hugging Face cache, or
``$CXRBENCH_WEIGHTS_MIRROR`` (serving ``<repo>/model.safetensors``; copied to ``~/.cache/cxrbench/weights/<model>/``). Nothing downloads otherwise. The
architecture comes from the shipped ``config.json``, so a model builds offline with random weights.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UsageError, WeightsError
from .base import FeatureExtractor, FeatureKind, is_random_weights
from .weights import MIRROR_ENV, OFFLINE_HINT, fetch_from_mirror, weights_sha256

CONFIGS = Path(__file__).parent / "configs"
INSTALL_HINT = 'pip install "cxrbench[raddino]"'
WEIGHTS_FILE = "model.safetensors"
#: config.json keys that fix the architecture (the rest is bookkeeping: versions, dtype, dropout at eval)
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
                     "patch_size", "image_size", "num_channels", "qkv_bias", "use_swiglu_ffn", "hidden_act",
                     "layer_norm_eps", "layerscale_value")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError(f"the RadDino and DINOv2 extractors need transformers: {INSTALL_HINT}") from None
    return transformers


@cache
def shipped_config(folder: str) -> dict:
    return json.loads((CONFIGS / folder / "config.json").read_text())


@cache
def shipped_preprocessor(folder: str) -> dict:
    return json.loads((CONFIGS / folder / "preprocessor_config.json").read_text())


def config_differences(found: dict, expected: dict) -> list[str]:
    return [f"{k} {found.get(k)!r} (expected {expected.get(k)!r})" for k in ARCHITECTURE_KEYS
            if found.get(k) != expected.get(k)]


def build_dinov2(config: dict):
    tr = _transformers()
    cfg = tr.Dinov2Config.from_dict(config)
    return tr.Dinov2Model(cfg)


def preprocess_bit(x: torch.Tensor, pp: dict) -> torch.Tensor:
    """Image contract ``(N, 1, H, W)`` in [0, 1] -> ``BitImageProcessor`` output ``(N, 3, crop, crop)``."""
    if pp.get("resample", 3) != 3 or not all(pp.get(k) for k in ("do_resize", "do_center_crop", "do_normalize")):
        raise ValueError(f"unsupported image processor settings {pp}")  # only the published ones are shipped
    h, w = x.shape[-2:]
    short = pp["size"]["shortest_edge"]
    # transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    ch, cw = pp["crop_size"]["height"], pp["crop_size"]["width"]
    h, w = x.shape[-2:]
    # transformers' center_crop (both backends): offsets truncated, int(d / 2); zero padding when too small
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = x.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[..., top : top + ch, left : left + cw]
    mean = torch.tensor(pp["image_mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pp["image_std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


#: CheXGenBench's first resize (``metrics/fid.py``: ``transforms.Resize((299, 299))`` on the PIL image)
CHEXGENBENCH_SIZE = 299


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 1, H, W)`` in [0, 1] -> ``(N, H, W)`` uint8: 8-bit files come back as their own pixel values."""
    return (x[:, 0].detach().cpu().double() * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def preprocess_chexgenbench(x: torch.Tensor, pp: dict) -> torch.Tensor:
    """Image contract -> the ``pixel_values`` CheXGenBench's RadDino receives, ``(N, 3, crop, crop)``.

    CheXGenBench: ``Image.open(p).convert("RGB")``, ``Resize((299, 299))`` (PIL bilinear), ``ToTensor()``, then
    ``(batch * 255).to(torch.uint8)`` (in float32 this gives every 8-bit value back, so it changes nothing), then
    ``AutoImageProcessor`` (transformers 4.50: the PIL ``BitImageProcessor``): PIL bicubic to the shortest edge,
    8-bit, centre crop, ``/ 255``, normalise. Grey images: the three channels are equal, so one PIL "L" image
    resamples to the same pixels as the RGB one (tested)."""
    short = pp["size"]["shortest_edge"]
    ch, cw = pp["crop_size"]["height"], pp["crop_size"]["width"]
    top, left = (short - ch) // 2, (short - cw) // 2  # a square 299 image resized to the shortest edge
    out = []
    for a in to_uint8(x):
        im = Image.fromarray(a).resize((CHEXGENBENCH_SIZE, CHEXGENBENCH_SIZE), Image.BILINEAR)
        im = im.resize((short, short), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im)[top : top + ch, left : left + cw].copy()))
    y = torch.stack(out)[:, None].to(x.device, torch.float32) / 255.0
    mean = torch.tensor(pp["image_mean"], dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(pp["image_std"], dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
    return (y.expand(-1, 3, -1, -1) - mean) / std


def describe_chexgenbench(pp: dict) -> str:
    return (f"CheXGenBench (metrics/fid.py): 8-bit, PIL bilinear squash to {CHEXGENBENCH_SIZE}x{CHEXGENBENCH_SIZE} "
            f"(aspect not kept), then BitImageProcessor (PIL): bicubic shortest edge {pp['size']['shortest_edge']} "
            f"rounded to 8 bits, centre crop {pp['crop_size']['height']}, mean {pp['image_mean']} "
            f"std {pp['image_std']}, grey to RGB")


def describe_preprocessing(pp: dict) -> str:
    return (f"BitImageProcessor (torch): bicubic-antialias shortest edge {pp['size']['shortest_edge']}, centre "
            f"crop {pp['crop_size']['height']}, mean {pp['image_mean']} std {pp['image_std']}, grey to RGB")


def hf_cache_snapshot(repo: str, revision: str) -> Path | None:
    """The Hugging Face cache's snapshot folder of ``repo`` at ``revision`` (a commit or a ref such as main); a
    snapshot of any other commit is not this revision and is not used."""
    root = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface"))
                / "hub").expanduser() / f"models--{repo.replace('/', '--')}"
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = root / "snapshots" / commit
    return snap if (snap / WEIGHTS_FILE).is_file() else None


class Dinov2Extractor(FeatureExtractor):
    """A ``Dinov2Model`` from a shipped config; subclasses name the published model."""

    version = "1"
    kind = FeatureKind.EMBEDDING
    #: Hugging Face repository, the folder under ``configs/`` and the pinned revision
    repo: ClassVar[str] = ""
    folder: ClassVar[str] = ""
    title: ClassVar[str] = ""
    # Each subclass pins the hub commit and the sha256 of that commit's model.safetensors (the file's LFS oid).
    # They were not read from the hub here (no network): the DINOv2 commits are the ones the MTEB library's model
    # registry (embeddings-benchmark/mteb) pins, and every commit and sha256
    # is the one at least two independent public projects recorded after hashing the downloaded files, with the
    # same byte counts. The shipped dinov2-base config.json and preprocessor_config.json hash to the values those
    # projects record for the same commit. A result is comparable only with exactly these files.
    revision: ClassVar[str] = ""
    published_sha256: ClassVar[tuple[str, ...]] = ()
    #: preprocessing conventions: the model's image processor; RadDino also CheXGenBench's
    resizes: ClassVar[tuple[str, ...]] = ("processor",)

    def __init__(self, *, weights: str = "auto", seed: int = 0, device: str = "cpu", resize: str = "processor",
                 _config: dict | None = None) -> None:
        super().__init__()
        if resize not in self.resizes:
            raise UsageError(f"{self.name}: resize {resize!r} is not one of {', '.join(self.resizes)}")
        self.resize = resize
        # the architecture: the published config (a reduced one only through for_tests)
        self.config = config = dict(_config or shipped_config(self.folder))
        self.preprocessor = shipped_preprocessor(self.folder)
        self.num_features = int(config["hidden_size"])
        self.input_size = int(self.preprocessor["crop_size"]["height"])
        self.resize_filter = (describe_chexgenbench if resize == "chexgenbench" else describe_preprocessing)(
            self.preprocessor)
        if is_random_weights(weights):
            # transformers' own initialisation (truncated normal 0.02, LayerScale 1); the pooler output is
            # layer-normed with unit gain, so features are O(1) whatever the depth
            torch.manual_seed(seed)
            self.net = build_dinov2(config)
            self.weights_id = f"random:{seed}"
        else:
            path = self.resolve_weights(weights)
            self.check_folder_config(path.parent)  # before building: a ViT-L takes seconds to initialise
            self.net = build_dinov2(config)
            self.load_weights(path)
            self.weights_id = weights_sha256(path)
        self.net.requires_grad_(False)
        self.eval()
        self.to(device)

    @classmethod
    def for_tests(cls) -> Dinov2Extractor:
        """Random weights at a reduced width and depth (the published preprocessing, 2 layers of width 64):
        the contract tests then take seconds on one CPU thread."""
        small = dict(shipped_config(cls.folder), num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
        return cls(weights="random", seed=0, device="cpu", _config=small)

    def where(self) -> str:
        return f"{self.title} ({self.repo}, revision {self.revision})"

    def resolve_weights(self, weights: str) -> Path:
        """``model.safetensors``: ``--weights DIR`` > ``$CXRBENCH_WEIGHTS/<model>`` > the Hugging Face cache >
        the mirror; otherwise one line naming the model, its revision and the three ways to supply it."""
        if weights not in (None, "", "auto"):
            p = Path(weights).expanduser()
            # the model's saved folder, or a folder of them (one --weights serves every extractor of a run)
            for f in (p, p / WEIGHTS_FILE, p / self.folder / WEIGHTS_FILE):
                if f.is_file():
                    return f
            raise WeightsError(f"--weights {weights}: no {WEIGHTS_FILE} there or in {self.folder}/; give the saved "
                               f"folder of {self.where()} (config.json and {WEIGHTS_FILE})")
        env = os.environ.get("CXRBENCH_WEIGHTS")
        if env and (Path(env).expanduser() / self.folder / WEIGHTS_FILE).is_file():
            return Path(env).expanduser() / self.folder / WEIGHTS_FILE
        snap = hf_cache_snapshot(self.repo, self.revision)
        if snap is not None:
            return snap / WEIGHTS_FILE
        dest = Path("~/.cache/cxrbench/weights").expanduser() / self.folder  # where the mirror's copy goes
        if (dest / WEIGHTS_FILE).is_file():
            return dest / WEIGHTS_FILE
        mirror = os.environ.get(MIRROR_ENV)
        if mirror:
            return fetch_from_mirror(mirror.rstrip("/") + "/" + self.repo, WEIGHTS_FILE, dest,
                                     sha256=self.published_sha256[0] if self.published_sha256 else "")
        raise WeightsError(
            f"{self.where()} weights not found: give --weights DIR (a saved model folder: config.json and "
            f"{WEIGHTS_FILE}), or put it in the Hugging Face cache (huggingface-cli download {self.repo} "
            f"--revision {self.revision}), or set {MIRROR_ENV} to a URL serving {self.repo}/{WEIGHTS_FILE}; "
            + OFFLINE_HINT
        )

    def check_folder_config(self, folder: Path) -> None:
        """A saved folder whose config.json describes another architecture is refused, naming what differs
        (a folder without one, e.g. a mirrored file, is checked by its tensors' names and shapes)."""
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            return
        try:
            found = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"{cfg_file}: not a readable config.json ({e})") from None
        diff = config_differences(found, self.config)
        if diff:
            raise WeightsError(f"{folder}: not {self.where()}: its config.json has {'; '.join(diff)}")

    def load_weights(self, path: Path) -> None:
        """Load ``path`` (safetensors) into the network; tensors of another architecture are refused, named."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e}); use {self.where()}") from None
        own = self.net.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
        if missing or extra or wrong:
            parts = ([f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}"] if missing else []) + \
                    ([f"{len(extra)} unexpected, e.g. {', '.join(extra[:3])}"] if extra else []) + \
                    ([f"wrong shape: {', '.join(wrong[:3])}"] if wrong else [])
            raise WeightsError(f"{path}: does not fit {self.where()}: {'; '.join(parts)}")
        self.net.load_state_dict(state)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize == "chexgenbench":
            return preprocess_chexgenbench(x, self.preprocessor)
        return preprocess_bit(x, self.preprocessor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).pooler_output


class RadDinoExtractor(Dinov2Extractor):
    name = "raddino"
    repo = "microsoft/rad-dino"
    folder = "rad-dino"
    title = "RadDino"
    revision = "110cbc18d5133582e320b43d53bf5c44e410c936"
    published_sha256 = ("dbfb9f54459c38773505de64a6ab7807bdcb392610fe1e697166342e43fb91ae",)  # 346,345,912 bytes
    resizes = ("processor", "chexgenbench")
    config_kwargs: ClassVar[dict[str, str]] = {"resize": "raddino_resize"}  # constructor argument <- EvalConfig field


class DINOv2BaseExtractor(Dinov2Extractor):
    name = "dinov2"
    repo = "facebook/dinov2-base"
    folder = "dinov2-base"
    title = "DINOv2 ViT-B/14"
    revision = "f9e44c814b77203eaa57a6bdbbd535f21ede1415"
    published_sha256 = ("d73036b56966966d07975d696bde331762f37297e2f095de8cea0040c3aa0841",)  # 346,345,912 bytes


class DINOv2LargeExtractor(Dinov2Extractor):
    name = "dinov2-large"
    repo = "facebook/dinov2-large"
    folder = "dinov2-large"
    title = "DINOv2 ViT-L/14"
    revision = "47b73eefe95e8d44ec3623f8890bd894b6ea2d6c"
    published_sha256 = ("399fba97a95f22c36834418bc69373364a99af3a1153da1c0fb31db567c92e23",)  # 1,217,522,888 bytes
