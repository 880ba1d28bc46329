"""Training-time image transforms for the baselines (not used for evaluation: extractors preprocess).

Each transform maps one image tensor ``(C, H, W)`` float32 in ``[0, 1]`` to another; ``CXRTransform``
chains them for ``ImageFolder(..., transform=...)``. Kumar & Triana ("Generating Synthetic Chest X-Rays with
generative modeling", poster and report) preprocess CXR14 for their VAE, GAN and GMVAE as "resize to 224,
center crop, grayscale, histogram equalisation": ``seed_preprocessing()``. A recipe asks for the
equalisation with ``[data] equalize = true`` (``cxrbench train --equalize``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, as PIL's convert("L") uses
_LUMA = (0.299, 0.587, 0.114)


def to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` -> ``(1, H, W)``: luminance for 3/4 channels (alpha dropped), identity for 1."""
    if img.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(img.shape)}")
    c = img.shape[0]
    if c == 1:
        return img
    if c in (3, 4):
        w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, 1, 1)
        return (img[:3] * w).sum(0, keepdim=True)
    raise ValueError(f"cannot convert a {c}-channel image to grayscale")


def resize_shorter(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (aspect kept), bilinear with antialiasing."""
    h, w = img.shape[-2:]
    if min(h, w) == size:
        return img
    if h <= w:
        new = (size, max(size, round(w * size / h)))
    else:
        new = (max(size, round(h * size / w)), size)
    out = F.interpolate(img.unsqueeze(0), size=new, mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(0).clamp(0.0, 1.0)  # bilinear with antialias can overshoot by rounding


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size x size`` (aspect not kept), bilinear with antialiasing."""
    if tuple(img.shape[-2:]) == (size, size):
        return img
    out = F.interpolate(img.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.squeeze(0).clamp(0.0, 1.0)


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop a {h}x{w} image to {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def equalize_histogram(img: torch.Tensor, *, bins: int = 256) -> torch.Tensor:
    """Histogram equalisation per channel: each value maps to the fraction of pixels at or below its bin.

    Values are binned into ``bins`` levels (256: as for the 8-bit images Kumar & Triana used); the map is the
    empirical CDF rescaled so that the darkest occupied level goes to 0 and the brightest to 1 (the
    classic ``(cdf - cdf_min) / (n - cdf_min)``). A constant image is returned unchanged.
    """
    out = torch.empty_like(img)
    for c in range(img.shape[0]):
        ch = img[c]
        idx = (ch.clamp(0, 1) * (bins - 1)).round().long()
        hist = torch.bincount(idx.flatten(), minlength=bins).to(torch.float64)
        cdf = hist.cumsum(0)
        n = cdf[-1]
        cdf_min = cdf[hist > 0][0]
        if n == cdf_min:  # one occupied level: nothing to spread
            out[c] = ch
            continue
        lut = ((cdf - cdf_min) / (n - cdf_min)).clamp(min=0.0)
        out[c] = lut[idx].to(img.dtype)
    return out


@dataclass
class CXRTransform:
    """Preprocessing for training images: grayscale -> resize -> center crop -> (equalise).

    ``image_size`` is the output side. With ``crop`` the shorter side is resized to ``image_size`` and the
    centre cropped (aspect kept); without, the whole image is squashed to a square. ``equalize`` applies
    histogram equalisation after resizing (Kumar & Triana). ``channels=3`` replicates the grey channel
    (Kumar & Triana's GMVAE fed 3-channel images to VGG16); inside cxrbench images stay 1-channel.
    """

    image_size: int
    crop: bool = True
    equalize: bool = False
    channels: int = 1

    def __post_init__(self):
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = to_grayscale(img.float())
        if self.crop:
            img = center_crop(resize_shorter(img, self.image_size), self.image_size)
        else:
            img = resize(img, self.image_size)
        if self.equalize:
            img = equalize_histogram(img)
        if self.channels == 3:
            img = img.expand(3, -1, -1).contiguous()
        return img

    def spec(self) -> dict:
        """Recorded next to a trained model (train_info.json) so that its inputs are known."""
        return {"transform": "CXRTransform", **dataclasses.asdict(self), "resize_filter": "bilinear-antialias"}


def seed_preprocessing(image_size: int = 224) -> CXRTransform:
    """Kumar & Triana: resize to 224, center crop, grayscale, histogram equalisation."""
    return CXRTransform(image_size=image_size, crop=True, equalize=True)
