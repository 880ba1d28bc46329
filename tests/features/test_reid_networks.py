"""The verification networks behind the re-identification score: the published Siamese ResNet-50's state-dict
loader (tested on files made here from the architecture with random weights), its refusals, and the pair head."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrbench.errors import WeightsError
from cxrbench.features.reid import (
    PREPROCESSING,
    PackhaeuserSiamese,
    ReidNet,
    load_reid_network,
    load_siamese,
    random_reidnet,
)


@pytest.fixture(scope="module")
def published():
    torch.manual_seed(0)
    return PackhaeuserSiamese(in_channels=3).eval()


def _pair(seed=0, n=3, size=200):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.rand(n, 1, size + 37, size, generator=g)


def test_published_architecture_as_chexgenbench_builds_it(published):
    # torchvision ResNet-50, fc 2048 -> 128, fc_end 128 -> 1: the key names and shapes a published file carries
    sd = published.state_dict()
    assert sd["model.fc.weight"].shape == (128, 2048) and sd["fc_end.weight"].shape == (1, 128)
    assert sd["model.conv1.weight"].shape == (64, 3, 7, 7)
    assert sum(p.numel() for p in published.parameters()) == 23_508_032 + 2048 * 128 + 128 + 129  # ResNet-50 trunk, fc, fc_end


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loader_reads_a_plain_state_dict_and_gives_the_published_probabilities(published, tmp_path):
    f = tmp_path / "ResNet-50_epoch11_data_handling_RPN.pth"
    torch.save(published.state_dict(), f)  # what CheXGenBench's script loads with model.load_state_dict
    net, digest = load_siamese(f)
    assert isinstance(net, PackhaeuserSiamese) and len(digest) == 64 and not net.training
    assert _same_state(net, published)
    a, b = _pair(n=1)
    # CheXGenBench's preprocessing: 224 px, 3 channels, no normalisation (a [0, 1] image stays in [0, 1])
    x, y = net.preprocess(a), net.preprocess(b)
    assert x.shape == (1, 3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1
    with torch.no_grad():
        ea, eb = net.forward_once(x), net.forward_once(y)
        want = net.fc_end((ea - eb).abs())[:, 0]  # the published forward(): fc_end(|f(a) - f(b)|)
    torch.testing.assert_close(net.pair_logits(ea, eb)[:, 0], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.embed(a), ea)


def test_loader_reads_a_wrapped_one_channel_checkpoint(tmp_path):
    # Packhaeuser's training checkpoints: {"state_dict": ..., "epoch": ...}; DataParallel adds "module."
    torch.manual_seed(1)
    ref = PackhaeuserSiamese(in_channels=1, preprocessing="packhaeuser").eval()
    f = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, f)
    net, _ = load_siamese(f, preprocessing="packhaeuser")
    assert net.in_channels == 1 and _same_state(net, ref)
    x = net.preprocess(torch.full((1, 1, 300, 200), 0.485))
    assert x.shape == (1, 1, 256, 256) and float(x.abs().max()) < 1e-5  # 256 px, ImageNet mean subtracted


def test_loader_refuses_another_architecture_naming_what_differs(published, tmp_path):
    sd = published.state_dict()
    bad = {k: v for k, v in sd.items() if not k.startswith("fc_end")}
    bad["model.layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as e:
        load_siamese(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing 2 tensor(s) (fc_end.weight, fc_end.bias)" in msg and "\n" not in msg
    assert "model.layer1.0.conv1.weight (64, 64, 3, 3) (expected (64, 64, 1, 1))" in msg
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match="unexpected 2 tensor"):
        load_siamese(tmp_path / "linear.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: not a readable state dict"):
        load_siamese(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="absent.pth: no such weights file"):
        load_reid_network(str(tmp_path / "absent.pth"))


def test_pair_head_scores_every_pair_as_the_published_forward_does():
    net = random_reidnet(0)
    a, b = torch.rand(4, 1, 96, 96), torch.rand(5, 1, 140, 128)
    all_pairs = net.pair_logits(net.embed(a), net.embed(b))
    with torch.no_grad():
        brute = torch.stack([net(net.preprocess(a[i:i + 1]).expand(5, -1, -1, -1), net.preprocess(b))[:, 0]
                             for i in range(4)])
    torch.testing.assert_close(all_pairs, brute, rtol=1e-5, atol=1e-5)
    # the head is a function of |a - b|: symmetric, and an image against itself scores fc_end's bias
    torch.testing.assert_close(net.pair_logits(net.embed(b), net.embed(a)), all_pairs.T)
    assert torch.allclose(net.pair_logits(net.embed(a), net.embed(a)).diagonal(), net.fc_end.bias.expand(4))


def test_shipped_network_loads_pinned_and_its_file_is_small():
    net, digest = load_reid_network("cxrbench")
    assert isinstance(net, ReidNet) and len(digest) == 64
    from cxrbench.features.cxr128 import shipped_path
    from cxrbench.features.reid import REIDNET_FILE, REIDNET_SHA256

    assert digest == REIDNET_SHA256
    assert shipped_path(REIDNET_FILE).stat().st_size < 5_000_000


def test_an_altered_shipped_network_is_refused(tmp_path, monkeypatch):
    from cxrbench.features import reid

    torch.save(random_reidnet(1).state_dict(), tmp_path / "reid-net.pt")
    monkeypatch.setattr(reid, "shipped_path", lambda name: tmp_path / name)
    with pytest.raises(WeightsError, match="is not the pinned reid-net"):
        load_reid_network("cxrbench")
    (tmp_path / "reid-net.pt").unlink()
    with pytest.raises(WeightsError, match="shipped re-identification network is missing"):
        load_reid_network("cxrbench")


def test_preprocessing_recipes_are_the_published_ones():
    assert PREPROCESSING["chexgenbench"] == {"size": 224, "imagenet_norm": False}
    assert PREPROCESSING["packhaeuser"] == {"size": 256, "imagenet_norm": True}


@pytest.mark.weights
def test_real_published_checkpoint_loads():
    """CheXGenBench's checkpoint (Hugging Face raman07/Patient_ReIdentification_MIMIC) under $CXRBENCH_WEIGHTS/reid/."""
    root = os.environ.get("CXRBENCH_WEIGHTS")
    f = Path(root or "/nonexistent") / "reid" / "ResNet-50_epoch11_data_handling_RPN.pth"
    if not f.is_file():
        pytest.skip(f"{f} absent")
    net, _ = load_siamese(f)
    assert isinstance(net, PackhaeuserSiamese) and net.in_channels == 3 and net.n_features == 128
    a, b = _pair(n=2)
    p = torch.sigmoid(net.pair_logits(net.embed(a), net.embed(b)))
    assert p.shape == (2, 2) and bool(((p >= 0) & (p <= 1)).all())
