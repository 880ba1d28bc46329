"""The xrv extractor's preprocessing equals torchxrayvision's XRayCenterCrop + XRayResizer(224).

Tolerance: 1e-3 absolute on xrv's [-1024, 1024] scale (5e-7 of the range): the two differ only in float32
summation order (measured: at most 2e-4).
"""

import numpy as np
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr

from ..conftest import shared_folder

ATOL = 1e-3


def xrv_reference(img01: np.ndarray) -> np.ndarray:
    """torchxrayvision's own pipeline on one [0, 1] image: normalize, XRayCenterCrop, XRayResizer(224)."""
    import torchxrayvision as xrv

    a = xrv.utils.normalize(img01.astype(np.float32), 1.0)[None]
    return xrv.datasets.XRayResizer(224)(xrv.datasets.XRayCenterCrop()(a))[0]


class _Pre:
    """The xrv extractor's ``preprocess`` without building its network."""

    def __init__(self, resize="xrv"):
        self.resize = resize

    def preprocess(self, x):
        from cxrbench.features.xrv import preprocess_xrv

        return preprocess_xrv(x, self.resize)


@pytest.fixture
def extractor():
    return _Pre()


@pytest.fixture
def fast_densenet(monkeypatch):
    """An untrained DenseNet121 without BatchNorm calibration (seconds, not tens): enough to check wiring."""
    import torchxrayvision as xrv

    from cxrbench.features import xrv as xrv_module

    monkeypatch.setattr(xrv_module, "build_densenet",
                        lambda weights, seed: (xrv.models.DenseNet(weights=None), f"random:{seed}", None))


@pytest.mark.parametrize("shape", [(64, 64), (100, 81), (223, 300), (225, 225), (300, 257), (517, 512),
                                   (1000, 1023), (1024, 1024), (224, 301)])
def test_xrv_preprocess_equals_torchxrayvision_on_synthetic_images(extractor, shape):
    """Shrinking (Gaussian pre-blur), enlarging (zero border blended in), odd/even sides, non-square inputs."""
    h, w = shape
    rng = np.random.default_rng(h * 7 + w)
    # a radiograph-like image plus fine noise, so both the blur and the border are exercised
    img = 0.7 * torch.nn.functional.interpolate(synthetic_cxr(1, 64, seed=h), size=shape, mode="bilinear")[0, 0]
    img = (img.numpy() + 0.3 * rng.random(shape)).clip(0, 1).astype(np.float32)
    got = extractor.preprocess(torch.from_numpy(img)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, xrv_reference(img), atol=ATOL, rtol=0)


def test_clip_widens_to_zero_as_skimage_does(extractor):
    """An all-bright image enlarged: skimage clips to the input's range unless 0 lies inside the output's."""
    for img in (np.full((50, 50), 0.9, np.float32), np.linspace(0.6, 1, 70 * 70, dtype=np.float32).reshape(70, 70)):
        got = extractor.preprocess(torch.from_numpy(img)[None, None])[0, 0].numpy()
        np.testing.assert_allclose(got, xrv_reference(img), atol=ATOL, rtol=0)


@pytest.mark.parametrize("folder", ["nih_fullres_samples", "covid_chestxray_ieee8023_2020-03_fork", "nih1000_64px"])
def test_xrv_preprocess_equals_torchxrayvision_on_real_images(extractor, folder):
    """Real radiographs: NIH at 512 and 1024 px, adult CXRs with odd and even long sides, 64 px thumbnails."""
    from cxrbench.data.io import load_image

    root = shared_folder(folder)
    paths = sorted((root / "images").glob("*.png"))[:6] or sorted(root.rglob("*.png"))[:6]
    shapes = set()
    for p in paths:
        img = load_image(p)
        shapes.add(img.shape)
        got = extractor.preprocess(torch.from_numpy(img)[None, None])[0, 0].numpy()
        np.testing.assert_allclose(got, xrv_reference(img), atol=ATOL, rtol=0, err_msg=str(p))
    assert shapes


def test_batched_equals_one_by_one(extractor):
    x = synthetic_cxr(5, 300, seed=3)
    one = torch.cat([extractor.preprocess(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(extractor.preprocess(x), one)


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (6, 9), (7, 7), (10, 3), (4, 11)])
def test_center_crop_is_xrvs(shape):
    """xrv's offset is n // 2 - s // 2: one pixel from (n - s) // 2 for an odd short side and even long side."""
    import torchxrayvision as xrv

    from cxrbench.features.resize import center_crop_xrv

    a = np.arange(np.prod(shape), dtype=np.float32).reshape(1, *shape)
    np.testing.assert_array_equal(center_crop_xrv(torch.from_numpy(a)).numpy(), xrv.datasets.XRayCenterCrop()(a))


def test_resize_option_is_named_and_keys_the_cache(fast_densenet):
    from cxrbench.features.cache import chunk_key
    from cxrbench.features.xrv import XRVClassifierExtractor, XRVDenseNetExtractor

    a, b = XRVDenseNetExtractor(weights="random"), XRVDenseNetExtractor(weights="random", resize="torch-antialias")
    assert "XRayResizer" in a.spec()["resize_filter"] and "antialias" in b.spec()["resize_filter"]
    assert chunk_key(["h"], a.spec()) != chunk_key(["h"], b.spec())
    assert XRVClassifierExtractor(weights="random", resize="torch-antialias").spec()["resize_filter"] == \
        b.spec()["resize_filter"]
    x = synthetic_cxr(2, 512, seed=1)
    # the two filters differ (else the option would be moot) but only slightly on a smooth radiograph
    d = (a.preprocess(x) - b.preprocess(x)).abs()
    assert 0.5 < d.max() < 300


def test_harness_passes_the_option(fast_densenet):
    from cxrbench.config import EvalConfig
    from cxrbench.engine.extraction import build_extractors
    from cxrbench.errors import UsageError

    nets = build_extractors(("xrv", "xrv-classifier"), EvalConfig(weights="random", xrv_resize="torch-antialias"),
                            "cpu")
    assert {e.spec()["resize_filter"] for e in nets.values()} == {"xrv XRayCenterCrop + bilinear-antialias (torch)"}
    with pytest.raises(UsageError, match="--xrv-resize"):
        build_extractors(("xrv",), EvalConfig(weights="random", xrv_resize="bicubic"), "cpu")
