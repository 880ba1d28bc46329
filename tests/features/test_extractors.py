"""Feature extractors agree with the peer implementations loaded with the same weights."""

import copy

import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr


@pytest.fixture(scope="module")
def inception():
    from cxrbench.features.inception import InceptionV3Extractor

    return InceptionV3Extractor(weights="random", seed=0)


def test_inception_matches_torch_fidelity(inception, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from cxrbench.features.inception import InceptionV3Extractor

    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(inception.net.state_dict(), path)
    # resolves the file name in the folder; a self-made file is not the published one, so it must be allowed
    ours = InceptionV3Extractor(weights=str(tmp_path), allow_unpublished=True)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    imgs = synthetic_cxr(3, 80, seed=4)
    u8 = (imgs * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    torch.testing.assert_close(ours.extract(imgs), theirs(u8)[0], atol=1e-4, rtol=0)
    assert len(ours.weights_id) == 64  # sha256 of the loaded file


def test_tf1_resize_matches_torch_fidelity():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from cxrbench.features.inception import resize_bilinear_tf1

    x = torch.rand(2, 3, 37, 53) * 255
    ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(resize_bilinear_tf1(x, 299), ref, atol=1e-4, rtol=0)


def test_random_inception_is_seeded_and_well_scaled(inception):
    from cxrbench.features.inception import InceptionV3Extractor

    x = synthetic_cxr(4, 64, seed=1)
    f = inception.extract(x)
    assert 1e-2 < f.std() < 10 and torch.isfinite(f).all()
    torch.testing.assert_close(InceptionV3Extractor(weights="random", seed=0).extract(x), f)


@pytest.mark.parametrize("as_module", [True, False])
def test_xrv_matches_torchxrayvision_densenet(tmp_path, as_module):
    import torchxrayvision as xrv

    from cxrbench.features.xrv import XRVDenseNetExtractor

    torch.manual_seed(5)
    ref = xrv.models.DenseNet(weights=None).eval()
    path = tmp_path / "w.pt"
    torch.save(ref if as_module else ref.state_dict(), path)  # xrv publishes pickled modules
    ours = XRVDenseNetExtractor(weights=str(path))
    x = synthetic_cxr(2, 224, seed=2)
    with torch.no_grad():
        want = ref.features2(x * 2048 - 1024)  # xrv.utils.normalize to [-1024, 1024] at 224 px
    torch.testing.assert_close(ours.extract(x), want, atol=1e-4, rtol=1e-4)


def test_xrv_refuses_a_pickle_with_code(tmp_path):
    import os

    from cxrbench.errors import WeightsError
    from cxrbench.features.xrv import XRVDenseNetExtractor

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="evil.pt"):
        XRVDenseNetExtractor(weights=str(tmp_path / "evil.pt"))
    assert not (tmp_path / "pwned").exists()


def test_extractors_are_eval_only():
    from cxrbench.features.random_conv import RandomConvExtractor

    with pytest.raises(RuntimeError, match="eval-only"):
        RandomConvExtractor().train()


def test_missing_weights_message_names_file_and_folder(tmp_path, monkeypatch):
    from cxrbench.errors import WeightsError
    from cxrbench.features.inception import InceptionV3Extractor

    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    with pytest.raises(WeightsError) as e:
        InceptionV3Extractor(weights=str(tmp_path))
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value) and str(tmp_path) in str(e.value)


def test_inference_rewrite_keeps_the_peer_features(inception, tmp_path):
    """BatchNorm folding + channels_last (the harness default) stays on torch-fidelity's and torchxrayvision's
    features, folds every foldable pair, and is part of the spec (so it keys the cache)."""
    import copy

    import torchxrayvision as xrv
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from cxrbench.engine.extraction import run_extractor
    from cxrbench.features.inception import InceptionV3Extractor
    from cxrbench.features.xrv import XRVDenseNetExtractor

    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(inception.net.state_dict(), path)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    fast = InceptionV3Extractor(weights=str(tmp_path), allow_unpublished=True).prepare_inference()
    assert fast.inference_kernels == "bn-folded:94,channels_last"  # every BasicConv2d of Inception-v3
    assert fast.spec()["kernels"] == fast.inference_kernels and "kernels" not in inception.spec()
    imgs = synthetic_cxr(3, 96, seed=4)
    u8 = (imgs * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    got, want = run_extractor(fast, imgs), theirs(u8)[0]
    assert (got - want).abs().max() < 1e-3 * want.abs().max()  # a wrong fold would be off by O(1)
    # float32 round-off: the rewritten network is about as far from a float64 forward as the published one
    with torch.no_grad():
        exact = copy.deepcopy(inception).double().forward(inception.preprocess(imgs).double())
    err_fast = (got.double() - exact).abs().max()
    err_plain = (run_extractor(inception, imgs).double() - exact).abs().max()
    assert err_fast < 3 * err_plain + 1e-6 * exact.abs().max()

    torch.manual_seed(5)
    ref = xrv.models.DenseNet(weights=None).eval()
    with torch.no_grad():  # BatchNorm statistics away from the (0, 1) init, so a wrong fold would show
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    torch.save(ref.state_dict(), tmp_path / "x.pt")
    plain = XRVDenseNetExtractor(weights=str(tmp_path / "x.pt"))
    fast = copy.deepcopy(plain).prepare_inference()
    assert fast.inference_kernels == "bn-folded:59,channels_last,dense-concat-free"  # conv0+norm0, 58 conv1+norm2
    x = synthetic_cxr(2, 224, seed=2)
    with torch.no_grad():
        want = ref.features2(x * 2048 - 1024)
    torch.testing.assert_close(run_extractor(fast, x), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run_extractor(plain, x), want, atol=1e-4, rtol=1e-4)


def test_derived_extractor_is_keyed_by_its_base_kernels():
    from cxrbench.config import EvalConfig
    from cxrbench.engine.extraction import build_extractors, extractor_spec

    for fast in (True, False):
        cfg = EvalConfig(weights="random", fast_kernels=fast)
        ex = build_extractors(["xrv", "xrv-classifier"], cfg, "cpu")
        spec = extractor_spec(ex["xrv-classifier"], cfg)
        assert spec.get("kernels") == ("bn-folded:59,channels_last,dense-concat-free" if fast else None)
        assert spec.get("kernels") == extractor_spec(ex["xrv"], cfg).get("kernels")


def _cleanfid_torchscript(net, folder):
    """clean-fid's network file (``inception-2015-12-05.pt``, NVIDIA's TorchScript) rebuilt from ``net``'s
    weights: a scripted module with ``layers`` (image in (x-128)/128, 2048-d out), which is all clean-fid's
    ``InceptionV3W`` calls when it does not resize inside."""

    class Wrapper(torch.nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.layers((x - 128) / 128)

    traced = torch.jit.trace(copy.deepcopy(net).eval(), torch.zeros(1, 3, 299, 299), check_trace=False)
    torch.jit.save(torch.jit.script(Wrapper(traced)), folder / "inception-2015-12-05.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_clean_resize_matches_clean_fid_pipeline(inception, tmp_path):
    """Same PNG files through clean-fid's own pipeline (``get_files_features``: its file reading, its "clean"
    resizer, its ``InceptionV3W`` normalisation) and through ``InceptionV3Extractor(resize="clean")``, on the
    same (random) weights: clean-fid's TorchScript file cannot be downloaded here, so it is rebuilt from the
    weights cxrbench loads."""
    from cleanfid.fid import get_files_features
    from cleanfid.inception_torchscript import InceptionV3W

    from cxrbench.data.io import load_image
    from cxrbench.features.inception import InceptionV3Extractor

    from ..conftest import write_pngs

    torch.save(inception.net.state_dict(), tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    _cleanfid_torchscript(inception.net, tmp_path)
    theirs_model = InceptionV3W(str(tmp_path), download=False, resize_inside=False).eval()
    folder = tmp_path / "imgs"
    for i, size in enumerate((64, 333)):  # enlarge; shrink from an odd size
        write_pngs(folder, synthetic_cxr(1, size, seed=i), prefix=f"s{size}")
    files = sorted(folder.glob("*.png"))
    with torch.no_grad():
        theirs = get_files_features(files, model=theirs_model, num_workers=0, batch_size=1,
                                    device=torch.device("cpu"), mode="clean", verbose=False)
    ours = InceptionV3Extractor(weights=str(tmp_path), resize="clean", allow_unpublished=True)
    got = torch.cat([ours.extract(torch.from_numpy(load_image(f))[None, None]) for f in files])
    torch.testing.assert_close(got, torch.from_numpy(theirs), atol=1e-4, rtol=1e-4)
    assert "clean-fid" in ours.spec()["resize_filter"] and ours.spec() != inception.spec()
    # and it is a different convention from the TF1 default
    x = torch.from_numpy(load_image(files[1]))[None, None]
    assert (inception.preprocess(x) - ours.preprocess(x)).abs().max() > 1e-2


@pytest.mark.slow  # torch.compile's CPU code generation: 15-20 s, for an opt-in path (--compile)
def test_compiled_forward_keeps_features_and_is_keyed_apart():
    """``compile=True`` (torch.compile of each network) moves features no more than the BatchNorm fold does,
    and is recorded in the spec, so compiled features never share a cache entry with eager ones."""
    from cxrbench.config import EvalConfig
    from cxrbench.engine.extraction import build_extractors, extractor_spec, run_extractor

    x = synthetic_cxr(8, 64, seed=1)
    cfg_e, cfg_c = EvalConfig(weights="random"), EvalConfig(weights="random", compile=True)
    eager = build_extractors(["cxr64"], cfg_e, "cpu")["cxr64"]
    compiled = build_extractors(["cxr64"], cfg_c, "cpu")["cxr64"]
    fe, fc = run_extractor(eager, x), run_extractor(compiled, x)
    assert (fe - fc).abs().max() <= 1e-5 * fe.abs().max()
    assert extractor_spec(compiled, cfg_c)["kernels"] == extractor_spec(eager, cfg_e)["kernels"] + ",compiled"
