"""The FID Inception-v3 (TF 2015-12-05 weights), with the input pipeline of pytorch-fid / torch-fidelity.

Architecture and block definitions adapted from torch-fidelity's ``feature_extractor_inceptionv3.py``
(itself from pytorch-fid; Apache License 2.0), so the state dicts of both load unchanged. Input pipeline as
torch-fidelity: images quantised to 8 bit, 3 replicated channels, TensorFlow-1.x bilinear resize to
299x299 (``align_corners=False``), ``(x - 128) / 128``; features are the 2048-d pool3 output.

``resize="clean"`` is clean-fid's convention instead (its "clean" mode): the 8-bit image resized by
clean-fid's own resizer (``cleanfid.resize.build_resizer("clean")``: PIL bicubic on float32, per channel,
clipped to [0, 255]), then the same ``(x - 128) / 128`` and network. The choice is named in ``resize_filter``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import synthetic_cxr
from ..errors import UsageError, WeightsError
from .base import FeatureExtractor, FeatureKind, bn_recalibrate, fold_conv_batchnorm, is_random_weights
from .weights import resolve_weights_file, torch_hub_checkpoints, weights_sha256

URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
PUBLISHED_SHA256 = "6726825d"  # the sha256 prefix both file names carry (torch.hub's check_hash convention)
# Set to 1 to load an Inception file that is not the published one (own conversions, tests); such results
# record its sha256 and are marked comparable: false.
ALLOW_UNPUBLISHED_ENV = "CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS"
RESIZES = {
    "tf1": "bilinear-tf1 (torch-fidelity), 8-bit quantised input",
    "clean": "clean-fid clean: PIL bicubic (cleanfid.resize), 8-bit quantised input",
}


def resize_clean(x8: torch.Tensor) -> torch.Tensor:
    """clean-fid's "clean" resize to 299x299 of (N, 1, H, W) 8-bit-valued images, with clean-fid's own resizer;
    float32 in [0, 255] on ``x8``'s device. PIL resizes on the CPU (threads: it releases the GIL)."""
    from cleanfid.resize import build_resizer

    fn = build_resizer("clean")
    arr = x8[:, 0].to(torch.uint8).cpu().numpy()

    def one(a: np.ndarray) -> np.ndarray:
        # clean-fid reads a grey PNG as RGB with three equal channels; they resize alike, so keep one
        return fn(np.repeat(a[:, :, None], 3, axis=2))[:, :, 0]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        out = np.stack(list(ex.map(one, arr)))
    return torch.from_numpy(out).unsqueeze(1).to(x8.device)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False): what the FID reference implementation did.

    Source coordinates are ``i * in / out`` (no half-pixel offset) and there is no antialiasing; this matches
    torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` (method "slow").
    """
    _, _, h, w = x.shape

    def grid(n_in):
        g = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = g.long()
        return lo, (lo + 1).clamp_max(n_in - 1), g - lo.float()

    ylo, yhi, dy = grid(h)
    xlo, xhi, dx = grid(w)
    rows_lo, rows_hi = x[:, :, ylo, :], x[:, :, yhi, :]
    top = rows_lo[:, :, :, xlo] + (rows_lo[:, :, :, xhi] - rows_lo[:, :, :, xlo]) * dx.view(1, 1, 1, size)
    bot = rows_hi[:, :, :, xlo] + (rows_hi[:, :, :, xhi] - rows_hi[:, :, :, xlo]) * dx.view(1, 1, 1, size)
    return top + (bot - top) * dy.view(1, 1, size, 1)


class BasicConv2d(nn.Module):
    """Original BasicConv2d block"""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class InceptionA(nn.Module):
    """Block from torchvision patched to be compatible with TensorFlow implementation"""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)

        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)

        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch5x5 = self.branch5x5_1(x)
        branch5x5 = self.branch5x5_2(branch5x5)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)

        outputs = [branch1x1, branch5x5, branch3x3dbl, branch_pool]
        return torch.cat(outputs, 1)


class InceptionB(nn.Module):
    """Original block"""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)

        outputs = [branch3x3, branch3x3dbl, branch_pool]
        return torch.cat(outputs, 1)


class InceptionC(nn.Module):
    """Block from torchvision patched to be compatible with TensorFlow implementation"""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)

        c7 = channels_7x7
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))

        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))

        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch7x7 = self.branch7x7_1(x)
        branch7x7 = self.branch7x7_2(branch7x7)
        branch7x7 = self.branch7x7_3(branch7x7)

        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)

        outputs = [branch1x1, branch7x7, branch7x7dbl, branch_pool]
        return torch.cat(outputs, 1)


class InceptionD(nn.Module):
    """Original block"""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)

        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = self.branch3x3_2(branch3x3)

        branch7x7x3 = self.branch7x7x3_1(x)
        branch7x7x3 = self.branch7x7x3_2(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_3(branch7x7x3)
        branch7x7x3 = self.branch7x7x3_4(branch7x7x3)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        outputs = [branch3x3, branch7x7x3, branch_pool]
        return torch.cat(outputs, 1)


class InceptionE_1(nn.Module):
    """First InceptionE block from torchvision patched to be compatible with TensorFlow implementation"""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)

        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = [
            self.branch3x3_2a(branch3x3),
            self.branch3x3_2b(branch3x3),
        ]
        branch3x3 = torch.cat(branch3x3, 1)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = [
            self.branch3x3dbl_3a(branch3x3dbl),
            self.branch3x3dbl_3b(branch3x3dbl),
        ]
        branch3x3dbl = torch.cat(branch3x3dbl, 1)

        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(branch_pool)

        outputs = [branch1x1, branch3x3, branch3x3dbl, branch_pool]
        return torch.cat(outputs, 1)


class InceptionE_2(nn.Module):
    """Second InceptionE block from torchvision patched to be compatible with TensorFlow implementation"""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)

        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))

        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)

        branch3x3 = self.branch3x3_1(x)
        branch3x3 = [
            self.branch3x3_2a(branch3x3),
            self.branch3x3_2b(branch3x3),
        ]
        branch3x3 = torch.cat(branch3x3, 1)

        branch3x3dbl = self.branch3x3dbl_1(x)
        branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
        branch3x3dbl = [
            self.branch3x3dbl_3a(branch3x3dbl),
            self.branch3x3dbl_3b(branch3x3dbl),
        ]
        branch3x3dbl = torch.cat(branch3x3dbl, 1)

        branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)

        outputs = [branch1x1, branch3x3, branch3x3dbl, branch_pool]
        return torch.cat(outputs, 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 trunk with torch-fidelity's module names (so its weights file loads strictly)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(2048, 1008)  # unused for features; kept so the published state dict loads strictly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


class InceptionV3Extractor(FeatureExtractor):
    name = "inception"
    version = "1"
    kind = FeatureKind.EMBEDDING
    num_features = 2048
    input_size = 299
    resize_filter = RESIZES["tf1"]  # the default; an instance names its own
    config_kwargs = {"resize": "inception_resize"}  # constructor argument <- EvalConfig field
    published_sha256 = (PUBLISHED_SHA256,)

    def __init__(self, *, weights: str = "auto", seed: int = 0, device: str = "cpu", resize: str = "tf1",
                 allow_unpublished: bool | None = None) -> None:
        """``allow_unpublished``: load a weights file whose sha256 is not the published one (default: the
        ``CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS`` environment variable); otherwise such a file is refused."""
        super().__init__()
        if resize not in RESIZES:
            raise UsageError(f"--inception-resize {resize}: expected one of {', '.join(RESIZES)}")
        self.resize, self.resize_filter = resize, RESIZES[resize]
        if allow_unpublished is None:
            allow_unpublished = os.environ.get(ALLOW_UNPUBLISHED_ENV, "") not in ("", "0")
        self.allow_unpublished = allow_unpublished
        self.net = FIDInceptionV3()
        if is_random_weights(weights):
            # Seeded init, then BatchNorm statistics from synthetic radiographs: features O(1), reproducible.
            torch.manual_seed(seed)
            self.net = FIDInceptionV3()
            self.net.requires_grad_(False)
            bn_recalibrate(self.net, self._pipeline(synthetic_cxr(8, 128, seed=seed)))
            self.weights_id = f"random:{seed}"
        else:
            path = resolve_weights_file(
                "FID Inception-v3", FILENAMES, weights=weights, library_dirs=[torch_hub_checkpoints()],
                download=self._download, url=URL, sha256=PUBLISHED_SHA256,
            )
            self.load_weights_file(path)
        self.net.requires_grad_(False)
        self.eval()
        self.to(device)

    def load_weights_file(self, path: Path) -> None:
        digest = weights_sha256(Path(path))
        if not digest.startswith(PUBLISHED_SHA256) and not self.allow_unpublished:
            raise WeightsError(
                f"{path}: sha256 {digest[:16]}... is not the published FID Inception-v3 weights (expected sha256 "
                f"{PUBLISHED_SHA256}...). Replace it with {FILENAMES[0]} from {URL}, or set "
                f"{ALLOW_UNPUBLISHED_ENV}=1 to use it anyway (results are then not comparable)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(state)
        except Exception as e:  # a refused pickle, a truncated file, another network's state dict
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise WeightsError(f"{path}: not loadable as FID Inception-v3 weights ({why})") from None
        self.weights_id = digest

    @staticmethod
    def _download() -> Path:
        # check_hash: torch.hub verifies the sha256 prefix in the file name and deletes a wrong download
        torch.hub.load_state_dict_from_url(URL, progress=False, check_hash=True)
        return torch_hub_checkpoints() / FILENAMES[0]

    @staticmethod
    def _pipeline(x: torch.Tensor) -> torch.Tensor:
        x8 = (x.clamp(0, 1) * 255).round()  # torch-fidelity takes uint8 images
        # the three channels are equal: resize one, then copy (3x less gather work than resizing RGB)
        return ((resize_bilinear_tf1(x8, 299) - 128) / 128).expand(-1, 3, -1, -1).contiguous()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize == "tf1":
            return self._pipeline(x)
        x8 = (x.clamp(0, 1) * 255).round()  # clean-fid reads 8-bit images
        return ((resize_clean(x8) - 128) / 128).expand(-1, 3, -1, -1).contiguous()

    def fold_batchnorm(self) -> int:
        n = 0
        for m in self.net.modules():
            if isinstance(m, BasicConv2d) and isinstance(m.bn, nn.BatchNorm2d):
                m.conv, m.bn = fold_conv_batchnorm(m.conv, m.bn), nn.Identity()
                n += 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
