"""Sets the validity suite does not hold: where does the shipped ruler put them?

A user's own check of a ruler uses sets of their own, not the suite's. This builds more of the three kinds from the
same 200 held-out real images the suite uses (``cxrbench validate``'s real set: seed 0) and prints each one's FID
through an extractor (default the shipped ``cxr128``) against the ``cxr128`` reference split, beside the suite's
real row, with the class a reader would give it: degraded (other strengths and families than the suite's) or
anatomy violated (other kinds). The order a reader expects: real < degraded < violated.

    OMP_NUM_THREADS=1 python tests/benchmarks/cxr128_extra_sets.py --data ../shared/data [--extractor NAME] [--weights DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.config import EvalConfig
from cxrbench.data import corruptions as C
from cxrbench.engine.extraction import build_extractors
from cxrbench.engine.validity import SuiteData, _features
from cxrbench.features.cache import FeatureCache
from cxrbench.metrics.functional import fid
from cxrbench.protocols.validity_sets import PROTOCOL_DATA
from cxrbench.seeding import torch_generator


def zoom(x: torch.Tensor, frac: float) -> torch.Tensor:
    """The central ``frac`` of the image blown up to the full size (a tiny crop: no chest outline left)."""
    h = x.shape[-1]
    k = round(h * frac)
    o = (h - k) // 2
    return F.interpolate(x[..., o:o + k, o:o + k], size=(h, h), mode="bilinear", align_corners=False)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    t = torch.tensor(np.deg2rad(degrees), dtype=torch.float32)
    theta = torch.stack([torch.stack([t.cos(), -t.sin(), torch.tensor(0.0)]),
                         torch.stack([t.sin(), t.cos(), torch.tensor(0.0)])])[None].expand(len(x), 2, 3)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def splice_rows(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Top half of each image over the bottom half of another (a horizontal seam)."""
    n, h = x.shape[0], x.shape[-2]
    g = torch_generator(seed)
    partner = (torch.arange(n) + 1 + torch.randint(0, n - 1, (n,), generator=g)) % n
    out = x.clone()
    out[..., h // 2:, :] = x[partner][..., h // 2:, :]
    return out


def symmetric(x: torch.Tensor) -> torch.Tensor:
    """The left half mirrored onto the right: a chest with two hearts' borders (every patch real)."""
    w = x.shape[-1] // 2
    return torch.cat([x[..., :w], x[..., :w].flip(-1)], dim=-1)


def half_mirrored(x: torch.Tensor) -> torch.Tensor:
    """Every other image mirrored: what a generator trained with random horizontal flips (a common default of
    image augmentation) samples, half its chests with the heart on the right."""
    out = x.clone()
    out[1::2] = x[1::2].flip(-1)
    return out


def side_by_side(x: torch.Tensor) -> torch.Tensor:
    """Each image and the next squeezed to half width, next to each other: two chests in one film."""
    h, w = x.shape[-2:]
    half = F.interpolate(x, size=(h, w // 2), mode="area")
    return torch.cat([half, half.roll(1, dims=0)], dim=-1)


def tiled(x: torch.Tensor) -> torch.Tensor:
    """Four chests (this image and the next three) at half size in a 2 x 2 grid: a contact sheet, not a film."""
    h, w = x.shape[-2:]
    q = F.interpolate(x, size=(h // 2, w // 2), mode="area")
    top = torch.cat([q, q.roll(1, dims=0)], dim=-1)
    return torch.cat([top, torch.cat([q.roll(2, dims=0), q.roll(3, dims=0)], dim=-1)], dim=-2)


def elastic(x: torch.Tensor, amplitude: float, seed: int = 0) -> torch.Tensor:
    """A smooth random displacement field (a 4 x 4 grid of offsets up to ``amplitude`` of the side, upsampled
    bicubically): ribs, heart and diaphragm bent into shapes no body has, every patch still radiograph texture."""
    g = torch_generator(seed)
    n = len(x)
    coarse = (torch.rand(n, 2, 4, 4, generator=g) * 2 - 1) * 2 * amplitude
    flow = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    base = F.affine_grid(torch.eye(2, 3)[None].expand(n, 2, 3), x.shape, align_corners=False)
    return F.grid_sample(x, base + flow, align_corners=False, padding_mode="border")


def occluded(x: torch.Tensor, frac: float) -> torch.Tensor:
    """The central ``frac`` of the side (heart and both hila) filled with each image's mean intensity."""
    h = x.shape[-1]
    k = round(h * frac)
    o = (h - k) // 2
    out = x.clone()
    out[..., o:o + k, o:o + k] = x.mean(dim=(-2, -1), keepdim=True)
    return out


def motion_blur(x: torch.Tensor, length: int) -> torch.Tensor:
    """A horizontal box blur ``length`` px long (the patient moved during the exposure)."""
    k = torch.full((1, 1, 1, length), 1.0 / length)
    return F.conv2d(F.pad(x, (length // 2, length - 1 - length // 2, 0, 0), mode="replicate"), k)


def salt_pepper(x: torch.Tensor, frac: float, seed: int = 0) -> torch.Tensor:
    g = torch_generator(seed)
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < frac / 2, torch.zeros_like(x), torch.where(u > 1 - frac / 2, torch.ones_like(x), x))


def sets(real: torch.Tensor) -> list[tuple[str, str, torch.Tensor]]:
    return [
        ("degraded", "blur sigma 1.5 px", C.gaussian_blur(real, 1.5)),
        ("degraded", "blur sigma 3 px", C.gaussian_blur(real, 3.0)),
        ("degraded", "noise std 0.05", C.gaussian_noise(real, 0.05, seed=1)),
        ("degraded", "JPEG quality 5", C.jpeg(real, 5)),
        ("degraded", "contrast x0.25", C.contrast(real, 0.25)),
        ("degraded", "gamma 2 (darker)", real.clamp(0, 1) ** 2),
        ("degraded", "low resolution /8", C.low_resolution(real, 8)),
        ("degraded", "GAN grid amplitude 0.06", C.gan_artefacts(real, 0.06)),
        ("degraded", "motion blur 9 px", motion_blur(real, 9)),
        ("degraded", "salt and pepper 2%", salt_pepper(real, 0.02, seed=6)),
        ("violated", "left-right mirror (heart on the right)", real.flip(-1)),
        ("violated", "every other image mirrored (flip-augmented)", half_mirrored(real)),
        ("violated", "rotated 180 degrees", real.rot90(2, dims=(-2, -1))),
        ("violated", "rotated 45 degrees", rotate(real, 45)),
        ("violated", "patch shuffle 2 x 2", C.patch_shuffle(real, 2, seed=2)),
        ("violated", "patch shuffle 8 x 8", C.patch_shuffle(real, 8, seed=3)),
        ("violated", "top / bottom splice", splice_rows(real, seed=4)),
        ("violated", "rolled by half the height (the abdomen on top)", real.roll(real.shape[-2] // 2, dims=-2)),
        ("violated", "left half mirrored onto the right", symmetric(real)),
        ("violated", "two chests side by side", side_by_side(real)),
        ("violated", "central 25% blown up", zoom(real, 0.25)),
        ("violated", "negative, then blurred 2 px", C.gaussian_blur(1 - real, 2.0)),
        ("violated", "blobs of the suite, blurred 2 px", C.gaussian_blur(C.blobs(real, seed=5), 2.0)),
        ("violated", "four chests tiled 2 x 2", tiled(real)),
        ("violated", "elastic warp, 8% of the side", elastic(real, 0.08, seed=7)),
        ("violated", "centre 40% filled with the mean", occluded(real, 0.4)),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--extractor", default="cxr128")
    p.add_argument("--weights", default=None, help="the extractor's weights (default: its shipped ones)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = EvalConfig(extractors=(args.extractor,), progress=False, weights=args.weights)
    nets = build_extractors((args.extractor,), config, "cpu")
    cache = FeatureCache(config.cache_dir, enabled=config.use_cache)
    data = SuiteData(args.data, protocol=PROTOCOL_DATA["cxr128"], root=ROOT, skip_missing=True)

    def feats(x, name):
        return _features(x, args.extractor, nets, config, cache, "cpu", name)

    ref = feats(data.reference(), "validity reference")
    real = data.real()
    floor = fid(real=ref, fake=feats(real, "real")).value
    print(f"{args.extractor}: FID against the {len(ref)} reference images, {len(real)} images per set")
    print(f"{'class':<10}{'set':<44}{'FID':>10}{'x floor':>9}")
    print(f"{'real':<10}{'held-out real (the suite real row)':<44}{floor:10.2f}{1.0:9.2f}")
    for cls, name, x in sets(real):
        v = fid(real=ref, fake=feats(x.clamp(0, 1), f"extra:{name}")).value
        print(f"{cls:<10}{name:<44}{v:10.2f}{v / floor:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
