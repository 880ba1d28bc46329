"""cxrbench extractors as torchmetrics' ``feature`` module: the same FID / KID as cxrbench on the same images."""

import numpy as np
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.features import torchmetrics_feature

from ..conftest import write_pngs


def _images(folder):
    from cxrbench.data.io import load_image

    return torch.stack([torch.from_numpy(load_image(p)) for p in sorted(folder.glob("*.png"))])[:, None]


@pytest.fixture
def sets(tmp_path):
    a = write_pngs(tmp_path / "real", synthetic_cxr(24, 40, 0.0, seed=1))
    b = write_pngs(tmp_path / "gen", synthetic_cxr(24, 40, 0.6, seed=2))
    return a, b


def _cxrbench(sets, tmp_path, extractor, metrics):
    from cxrbench.config import EvalConfig
    from cxrbench.engine.evaluate import evaluate

    cfg = EvalConfig(extractors=(extractor,), metrics=metrics, weights="random", n_bootstrap=2, progress=False,
                     num_workers=0, cache_dir=str(tmp_path / "cache"))
    return evaluate(sets[1], sets[0], config=cfg)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
@pytest.mark.parametrize("as_uint8", [True, False])
def test_torchmetrics_fid_and_kid_equal_cxrbench(sets, tmp_path, as_uint8):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, gen = (_images(f) for f in sets)
    if as_uint8:  # torchmetrics' default input: uint8 RGB; grey files read as three equal channels
        real, gen = ((x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1) for x in (real, gen))
    feat = torchmetrics_feature("random-conv", weights="random")
    fid = FrechetInceptionDistance(feature=feat, normalize=not as_uint8)
    kid = KernelInceptionDistance(feature=feat, normalize=not as_uint8, subset_size=len(real))  # every subset: all
    for m in (fid, kid):
        for i in range(0, len(real), 10):  # several update() calls, as in a training loop
            m.update(real[i : i + 10], real=True)
            m.update(gen[i : i + 10], real=False)
    r = _cxrbench(sets, tmp_path, "random-conv", ("fid", "kid"))
    assert r.value("fid_random-conv") > 0.1  # the sets differ, so agreement is not 0 == 0
    np.testing.assert_allclose(float(fid.compute()), r.value("fid_random-conv"), rtol=1e-5)
    np.testing.assert_allclose(float(kid.compute()[0]), r.value("kid_random-conv"), rtol=1e-5)


@pytest.mark.slow  # two DenseNet121s on CPU (~1 min); the adapter itself is covered by the random-conv test
def test_xrv_feature_equals_cxrbench_fid(sets, tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, gen = (_images(f)[:8] for f in sets)
    fid = FrechetInceptionDistance(feature=torchmetrics_feature("xrv", weights="random"), normalize=True)
    fid.update(real, real=True)
    fid.update(gen, real=False)
    for f in sets:  # cxrbench on the same 8 files
        for p in sorted(f.glob("*.png"))[8:]:
            p.unlink()
    r = _cxrbench(sets, tmp_path, "xrv", ("fid",))
    np.testing.assert_allclose(float(fid.compute()), r.value("fid_xrv"), rtol=1e-4)


def test_stays_in_eval_mode_inside_a_training_model():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class LitModel(torch.nn.Module):  # what a LightningModule does: the metric is a submodule
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)
            self.fid = FrechetInceptionDistance(feature=torchmetrics_feature("random-conv", weights="random"))

    m = LitModel().train()
    assert m.net.training and not m.fid.inception.training and not m.fid.inception.extractor.training
    with pytest.raises(ValueError, match="random-conv: expected"):
        m.fid.update(torch.zeros(2, 16, 16), real=True)
