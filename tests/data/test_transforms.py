"""Training transforms: grayscale, resize + center crop, histogram equalisation (seeds 000/003)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.data.transforms import (
    CXRTransform,
    center_crop,
    equalize_histogram,
    resize_shorter,
    seed_preprocessing,
    to_grayscale,
)


def test_grayscale_matches_pillow_luma():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    got = to_grayscale(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)[0].numpy()
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6  # PIL rounds to 8 bits
    grey = torch.rand(1, 5, 5)
    assert torch.equal(to_grayscale(grey.expand(3, -1, -1)), grey) or torch.allclose(
        to_grayscale(grey.expand(3, -1, -1)), grey, atol=1e-6
    )


def test_resize_and_center_crop_geometry():
    img = torch.rand(1, 40, 60)
    r = resize_shorter(img, 20)
    assert r.shape == (1, 20, 30)
    c = center_crop(r, 20)
    assert c.shape == (1, 20, 20) and torch.equal(c, r[:, :, 5:25])
    out = CXRTransform(image_size=16)(torch.rand(3, 40, 60))
    assert out.shape == (1, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert CXRTransform(image_size=16, crop=False)(torch.rand(1, 40, 60)).shape == (1, 16, 16)
    assert CXRTransform(image_size=8, channels=3)(torch.rand(1, 8, 8)).shape == (3, 8, 8)


def test_equalisation_flattens_the_histogram_and_keeps_order():
    img = synthetic_cxr(1, 64, seed=0)[0]
    eq = equalize_histogram(img)
    x, y = img.flatten(), eq.flatten()
    order = torch.argsort(x)
    assert (torch.diff(y[order]) >= 0).all()  # a monotone map of the intensities
    assert eq.min() == 0 and eq.max() == 1
    # the empirical CDF of the output is close to the identity (uniform histogram); the input's is far
    grid = torch.linspace(0, 1, 101)

    def cdf_gap(v):
        return (torch.stack([(v <= t).float().mean() for t in grid]) - grid).abs().max()

    assert cdf_gap(y) < 0.05 < cdf_gap(x)


def test_equalisation_depends_only_on_the_order_of_levels():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 128, (1, 32, 32))
    a = torch.from_numpy(levels / 255).float()
    b = torch.from_numpy((2 * levels + 1) / 255).float()  # another strictly increasing map of the levels
    assert torch.allclose(equalize_histogram(a), equalize_histogram(b), atol=1e-6)
    flat = torch.full((1, 4, 4), 0.3)
    assert torch.equal(equalize_histogram(flat), flat)


def test_seed_preprocessing_is_resize_crop_equalise():
    t = seed_preprocessing()
    assert (t.image_size, t.crop, t.equalize, t.channels) == (224, True, True, 1)
    img = torch.rand(1, 300, 250)
    assert torch.equal(t(img), equalize_histogram(center_crop(resize_shorter(img, 224), 224)))
