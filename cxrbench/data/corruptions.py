"""Deterministic image corruptions for the validity suite (``cxrbench validate``).

Every corruption maps the image contract (float32 ``(N, 1, H, W)`` in ``[0, 1]``) to the same contract, is a
pure function of its input, its strength and its seed, and says in its docstring what a radiologist would say
of the result. Two classes:
- ``degraded``: the image is worse but still a chest radiograph a radiologist reads (blur, noise, JPEG,
  contrast, low resolution, GAN-like upsampling artefacts). Each has a ``mild`` strength (visible on
  close inspection, diagnostic quality barely touched) and a ``moderate`` one (obviously degraded, fine
  structure such as vessels and rib edges partly lost, lungs, heart, mediastinum and diaphragm still read).
  Strengths are in the units of a 128 px image.
- ``violated``: nobody would take the image for a radiograph (random fields, blobs, shuffled patches, an
  upside-down or rotated chest, a negative, two half-chests spliced). One ``moderate`` strength each: the
  anatomy is violated outright, not by degree.

``CORRUPTIONS`` lists them with their class and strengths; ``apply(name, x, strength, seed)`` runs one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UsageError
from ..seeding import torch_generator


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"corruptions take (N, 1, H, W) images, got {tuple(x.shape)}")
    return x.float()


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r = (len(k) - 1) // 2
    # reflect padding needs the pad below the image size; replicate covers tiny test images
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))


# --- degraded but anatomical ------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels.

    Radiologist: "soft, out of focus or motion-blurred; fine lung markings and rib edges are lost at
    sigma 2, but heart size, mediastinum, diaphragm and any large opacity read normally".
    """
    x = _check(x)
    return _separable(x, _gaussian_kernel(float(sigma))).clamp(0, 1)


def gaussian_noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation ``std`` (clipped to [0, 1]).

    Radiologist: "a noisy, underexposed (quantum-mottled) film; everything large is still read".
    """
    x = _check(x)
    g = torch_generator(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: int, seed: int = 0) -> torch.Tensor:
    """JPEG compression at ``quality`` (PIL, 8-bit grayscale), decoded back.

    Radiologist: "a compressed image pulled from an e-mail or a slide: 8x8 blocking and smeared fine
    detail at quality 10, the anatomy is all there".
    """

    x = _check(x)
    out = torch.empty_like(x)
    for i, im in enumerate(x[:, 0].numpy()):
        buf = io.BytesIO()
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out[i, 0] = torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255.0)
    return out


def contrast(x: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    """Contrast scaled by ``factor`` about each image's mean grey level.

    Radiologist: "a flat, grey, poorly windowed film; re-window it and it reads".
    """
    x = _check(x)
    m = x.mean(dim=(2, 3), keepdim=True)
    return (m + factor * (x - m)).clamp(0, 1)


def low_resolution(x: torch.Tensor, factor: int, seed: int = 0) -> torch.Tensor:
    """Downsampled ``factor`` times (area average) and upsampled back bilinearly.

    Radiologist: "a thumbnail blown up: soft and featureless at a quarter of the resolution (32 of
    128 px), but lungs, heart and mediastinum are where they belong".
    """
    x = _check(x)
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def gan_artefacts(x: torch.Tensor, amplitude: float, seed: int = 0) -> torch.Tensor:
    """The upsampling artefacts of generators built from transposed convolutions (Odena, Dumoulin and Olah,
    "Deconvolution and Checkerboard Artifacts", Distill 2016): the image rebuilt from half resolution by
    nearest-neighbour upsampling (2 px blocks), times a checkerboard of 2x2 px cells of relative amplitude
    ``amplitude`` (the grid an uneven stride-2 overlap leaves one layer before the output). Cells of 2 px
    rather than 1 px keep the grid visible to an extractor that looks at half the resolution.

    Radiologist: "a fine grid or screen pattern over a slightly blocky chest; an artefact of the
    display or the digitiser, the chest is readable".
    """
    x = _check(x)
    h, w = x.shape[-2:]
    small = F.avg_pool2d(x, 2, ceil_mode=True)
    up = F.interpolate(small, scale_factor=2, mode="nearest")[..., :h, :w]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy // 2 + xx // 2) % 2).float() * 2 - 1  # +-1 alternating 2x2 cells
    return (up * (1 + amplitude * checker)).clamp(0, 1)


# --- anatomy violated ------------------------------------------------------------------------------------

def _match_histogram(field: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Each image of ``field`` with its values replaced, rank for rank, by the sorted values of ``source``."""
    n = field.shape[0]
    f, s = field.reshape(n, -1), source.reshape(n, -1)
    order = f.argsort(dim=1)
    out = torch.empty_like(f)
    out.scatter_(1, order, s.sort(dim=1).values)
    return out.view_as(field)


def _radial_amplitude(x: torch.Tensor) -> torch.Tensor:
    """Each image's Fourier amplitude averaged over rings of equal frequency, on the ``rfft2`` grid."""
    n, _, h, w = x.shape
    amp = torch.fft.rfft2(x - x.mean(dim=(2, 3), keepdim=True)).abs()
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    ring = (torch.sqrt(fy**2 + fx**2) * max(h, w)).round().long()  # ring index, in units of 1/size
    flat = ring.flatten().expand(n, 1, -1)
    k = int(ring.max()) + 1
    sums = torch.zeros(n, 1, k).scatter_add_(2, flat, amp.reshape(n, 1, -1))
    counts = torch.zeros(k).scatter_add_(0, ring.flatten(), torch.ones(ring.numel()))
    return (sums / counts.clamp(min=1)).gather(2, flat).view_as(amp)


def random_field(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """An isotropic random field with each source image's radially averaged amplitude spectrum (random
    phases), then given exactly that image's grey-level histogram by rank remapping.

    Radiologist: "cloudy texture with the right greys and the right amount of fine and coarse detail, but
    no lungs, no heart, no ribs, no outline of a body: not a radiograph of anything".
    """
    x = _check(x)
    g = torch_generator(seed)
    # the phases of the transform of real white noise: Hermitian symmetry holds, so the inverse is real
    noise_phase = torch.angle(torch.fft.rfft2(torch.randn(x.shape, generator=g)))
    field = torch.fft.irfft2(_radial_amplitude(x) * torch.exp(1j * noise_phase), s=x.shape[-2:])
    return _match_histogram(field, x)


def blobs(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """High-contrast dark blobs on a bright, mottled background, like the samples of the under-trained
    latent diffusion baseline on the leaderboard (``leaderboard/thumbs/ldm-*.png``). Only the shape of ``x``
    is used.

    Radiologist: "ink blots; there is no chest in it".
    """
    x = _check(x)
    n, _, h, w = x.shape
    g = torch_generator(seed)
    coarse = _separable(torch.randn(n, 1, h, w, generator=g), _gaussian_kernel(max(1.0, h / 18)))
    coarse = coarse / coarse.std(dim=(2, 3), keepdim=True).clamp(min=1e-8)
    fine = _separable(torch.randn(n, 1, h, w, generator=g), _gaussian_kernel(max(0.5, h / 32)))
    fine = fine / fine.std(dim=(2, 3), keepdim=True).clamp(min=1e-8)
    dark = torch.sigmoid((coarse - 0.9) * 5)  # ~20% of the area, sharp-edged
    img = 0.85 + 0.06 * fine - 0.8 * dark
    return img.clamp(0, 1)


def patch_shuffle(x: torch.Tensor, grid: int = 4, seed: int = 0) -> torch.Tensor:
    """The image cut into ``grid x grid`` tiles, the tiles put back in a random order (per image).

    Radiologist: "a jigsaw of pieces of a chest: lung here, a bit of heart there, a shoulder in the middle;
    nothing is where it belongs".
    """
    x = _check(x)
    n, _, h, w = x.shape
    th, tw = h // grid, w // grid
    g = torch_generator(seed)
    out = x.clone()
    for i in range(n):
        perm = torch.randperm(grid * grid, generator=g)
        tiles = [x[i, :, (k // grid) * th:(k // grid + 1) * th, (k % grid) * tw:(k % grid + 1) * tw] for k in range(grid * grid)]
        for dst, src in enumerate(perm.tolist()):
            out[i, :, (dst // grid) * th:(dst // grid + 1) * th, (dst % grid) * tw:(dst % grid + 1) * tw] = tiles[src]
    return out


def vertical_flip(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """The image upside down.

    Radiologist: "hung upside down: diaphragm at the top, shoulders at the bottom; no radiograph is
    acquired or displayed like that".
    """
    return _check(x).flip(-2)


def rotate90(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """The image rotated by 90 degrees (counter-clockwise).

    Radiologist: "a chest lying on its side; the spine runs across the image".
    """
    return _check(x).rot90(1, dims=(-2, -1))


def negative(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Grey levels inverted (``1 - x``): bones dark, lungs white.

    Radiologist: "an inverted display; the anatomy is there but the densities are backwards: air is white".
    """
    return 1.0 - _check(x)


def splice(x: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """The left half of each image joined to the right half of another image of the set (a seeded
    derangement, so never its own), along a hard vertical seam.

    Radiologist: "two different patients stitched down the middle: the mediastinum breaks at the midline,
    the two lungs differ in size, exposure and shape".
    """
    x = _check(x)
    n, w = x.shape[0], x.shape[-1]
    if n < 2:
        raise ValueError("splice needs at least 2 images")
    g = torch_generator(seed)
    partner = (torch.arange(n) + 1 + torch.randint(0, n - 1, (n,), generator=g)) % n  # never i itself
    out = x.clone()
    out[..., w // 2:] = x[partner][..., w // 2:]
    return out


@dataclass(frozen=True)
class Corruption:
    name: str
    fn: Callable
    kind: str  # "degraded" | "violated"
    strengths: dict  # "mild" / "moderate" -> the function's parameter
    parameter: str
    #: the parameter is a length in pixels of a 128 px image, scaled with the image's width
    per_128px: bool = False

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


#: Strengths for 128 px images (blur's sigma scales with the width; low resolution is a factor, noise, JPEG
#: quality, contrast and the artefact grid are per pixel). Moderate degradations were chosen so that a radiologist still reads the
#: large anatomy (heart, mediastinum, diaphragm, lung fields) with no effort; mild ones are just visible.
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("blur", gaussian_blur, "degraded", {"mild": 1.0, "moderate": 2.0}, "sigma_px", per_128px=True),
    Corruption("noise", gaussian_noise, "degraded", {"mild": 0.03, "moderate": 0.08}, "std"),
    Corruption("jpeg", jpeg, "degraded", {"mild": 30, "moderate": 10}, "quality"),
    Corruption("contrast", contrast, "degraded", {"mild": 0.7, "moderate": 0.4}, "factor"),
    Corruption("lowres", low_resolution, "degraded", {"mild": 2, "moderate": 4}, "factor"),
    Corruption("gan-artefacts", gan_artefacts, "degraded", {"mild": 0.04, "moderate": 0.12}, "amplitude"),
    Corruption("random-field", random_field, "violated", {"moderate": 1.0}, "-"),
    Corruption("blobs", blobs, "violated", {"moderate": 1.0}, "-"),
    Corruption("patch-shuffle", patch_shuffle, "violated", {"moderate": 4}, "grid"),
    Corruption("vflip", vertical_flip, "violated", {"moderate": 1.0}, "-"),
    Corruption("rot90", rotate90, "violated", {"moderate": 1.0}, "-"),
    Corruption("negative", negative, "violated", {"moderate": 1.0}, "-"),
    Corruption("splice", splice, "violated", {"moderate": 1.0}, "-"),
)}


def apply(name: str, x: torch.Tensor, strength: str = "moderate", seed: int = 0) -> torch.Tensor:
    """Corruption ``name`` at ``strength`` ("mild" / "moderate") of ``x``, deterministic in ``seed``."""
    if name not in CORRUPTIONS:
        raise UsageError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    c = CORRUPTIONS[name]
    if strength not in c.strengths:
        raise UsageError(f"corruption {name!r} has strengths {', '.join(c.strengths)}, not {strength!r}")
    value = c.strengths[strength] * (x.shape[-1] / 128 if c.per_128px else 1)
    return c.fn(x, value, seed=seed)
