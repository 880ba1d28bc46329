"""MS-SSIM diversity: identity, a collapsed generator scores higher, seeded pairs, size handling."""

import numpy as np
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.metrics.diversity import MSSSIM, pair_ms_ssim, random_pairs, to_square

from ..metric_helpers import context, feature_set


def images_set(name, imgs):
    return feature_set(name, {"e": imgs.flatten(1)[:, :4].numpy()}, images=imgs)


def test_pairs_are_seeded_and_distinct():
    p = random_pairs(5, 200, seed=1)
    assert (p[:, 0] != p[:, 1]).all() and p.min() >= 0 and p.max() < 5
    np.testing.assert_array_equal(p, random_pairs(5, 200, seed=1))
    assert len({tuple(r) for r in p}) == 20  # every ordered pair of 5 items shows up


def test_to_square_upsamples_small_and_crops_wide_images():
    assert to_square(torch.rand(2, 1, 32, 32), 176).shape == (2, 1, 176, 176)
    wide = torch.zeros(1, 1, 300, 400)
    wide[..., :, 150:250] = 1.0  # a centred band survives the centre crop
    sq = to_square(wide, 200)
    assert sq.shape == (1, 1, 200, 200) and sq[0, 0, 100, 100] == 1.0 and sq[0, 0, 100, 0] == 0.0


def test_identical_images_score_one():
    imgs = synthetic_cxr(2, 32, seed=0)
    fs = images_set("samples", torch.cat([imgs[:1], imgs[:1]]))
    assert pair_ms_ssim(fs, np.array([[0, 1]]), size=176)[0] == pytest.approx(1.0, abs=1e-5)


def test_collapsed_generator_scores_higher_than_a_diverse_one():
    ref = synthetic_cxr(40, 32, seed=1)
    diverse = synthetic_cxr(40, 32, seed=2)
    collapsed = synthetic_cxr(1, 32, seed=3).repeat(40, 1, 1, 1) + 0.01 * torch.randn(40, 1, 32, 32)
    out = {}
    for name, g in (("diverse", diverse), ("collapsed", collapsed.clamp(0, 1))):
        ctx = context(images_set("samples", g), images_set("reference", ref), ms_ssim_pairs=16, ms_ssim_size=176)
        out[name] = MSSSIM().compute(ctx)["ms_ssim"]
    assert out["collapsed"].value > 0.9 > out["diverse"].value
    assert abs(out["diverse"].extra["gap"]) < out["collapsed"].extra["gap"]
    assert out["diverse"].real_vs_real == out["collapsed"].real_vs_real == out["diverse"].extra["reference"]
    assert out["diverse"].ci[0] <= out["diverse"].value <= out["diverse"].ci[1]


def test_skipped_without_images():
    x = np.zeros((5, 3))
    ctx = context(feature_set("samples", {"e": x}), feature_set("reference", {"e": x}))
    assert "images" in MSSSIM().skip_reason(ctx) and MSSSIM().compute(ctx) == {}


def test_functional_entry_takes_image_arrays_and_is_the_registered_metric():
    from cxrbench.errors import DataError
    from cxrbench.metrics import functional as F

    ref, gen = synthetic_cxr(12, 32, seed=1), synthetic_cxr(12, 32, seed=2)
    reg = MSSSIM().compute(context(images_set("samples", gen), images_set("reference", ref), ms_ssim_pairs=8,
                                   ms_ssim_size=176, n_bootstrap=30))["ms_ssim"]
    f = F.ms_ssim(real=ref[:, 0].numpy(), fake=gen, pairs=8, size=176, ci=True, n_bootstrap=30)
    assert (f.value, f.real_vs_real, f.ci) == (reg.value, reg.real_vs_real, reg.ci)
    same = synthetic_cxr(1, 32, seed=4).repeat(6, 1, 1, 1)
    assert F.ms_ssim(real=ref, fake=same, pairs=8, size=176).value == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        F.ms_ssim(real=ref * 255, fake=gen, pairs=8, size=176)
