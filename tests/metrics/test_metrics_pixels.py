"""The ``pixels`` extractor: statistics equal numpy's, and equalised entropy counts the grey levels used."""

import numpy as np
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.features.pixels import FEATURE_NAMES, PixelStatsExtractor
from cxrbench.registry import EXTRACTORS


def test_registered_weight_free_statistics_extractor():
    ext = EXTRACTORS.get("pixels")(weights="random", seed=3, device="cpu")
    assert isinstance(ext, PixelStatsExtractor)
    spec = ext.spec()
    assert spec["kind"] == "statistics" and spec["weights"] == "none" and spec["num_features"] == len(FEATURE_NAMES)
    assert ext.dimension_names() == FEATURE_NAMES


def test_statistics_equal_numpy():
    x = synthetic_cxr(4, 24, seed=0)
    f = PixelStatsExtractor().extract(x).numpy()
    flat = x.reshape(4, -1).double().numpy()
    np.testing.assert_allclose(f[:, 0], flat.mean(1), rtol=1e-6)
    np.testing.assert_allclose(f[:, 1], flat.std(1), rtol=1e-5)
    np.testing.assert_allclose(f[:, 2:9], np.percentile(flat, [1, 5, 25, 50, 75, 95, 99], axis=1).T, rtol=1e-6)


def test_equalised_entropy_counts_the_grey_levels_in_use():
    rng = np.random.default_rng(1)
    imgs, expected = [], []
    for levels in (2, 8, 32):
        v = rng.integers(0, levels, size=(40, 40))
        imgs.append(v / (levels - 1))
        _, counts = np.unique(v, return_counts=True)
        p = counts / counts.sum()
        expected.append(-(p * np.log2(p)).sum())  # equalisation relabels levels; occupancy (hence entropy) stays
    imgs.append(np.full((40, 40), 0.7))  # flat image: one level
    expected.append(0.0)
    x = torch.as_tensor(np.stack(imgs), dtype=torch.float32)[:, None]
    ent = PixelStatsExtractor().extract(x)[:, FEATURE_NAMES.index("entropy_equalized")].numpy()
    np.testing.assert_allclose(ent, expected, atol=1e-5)
    # brightness and contrast do not change it
    y = x[:3] * 0.5 + 0.2
    ent2 = PixelStatsExtractor().extract(y)[:, -1].numpy()
    np.testing.assert_allclose(ent2, expected[:3], atol=1e-5)
    assert ent[0] == pytest.approx(1.0, abs=0.01) and ent[2] > ent[1] > ent[0]
