"""Paired reconstruction (``reconstruct``) of the VAE family: vae, gmvae and fs-gmvae encode each image to
its posterior mean and decode it, so ``cxrbench sample --reconstruct`` works for them as for DiffuseVAE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from baselines import gmvae, vae
from cxrbench.cli import main
from cxrbench.data import ImageFolder, load_image
from cxrbench.data.labels import LABELS
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.data.transforms import CXRTransform
from cxrbench.errors import UsageError

from ..conftest import write_pngs

SIZE = 16


def tiny(name):
    if name == "vae":
        return vae.VAE(vae.VAEConfig(image_size=SIZE, channels=(8, 16), z_dim=16, beta=1e-4, lr=3e-3))
    if name == "gmvae":
        return gmvae.GMVAE(gmvae.GMVAEConfig(
            image_size=SIZE, encoder="conv", conv_channels=(8, 16), transition=False, z_dim=16, k=3,
            decoder="linear", linear_hidden=64, beta=1e-4, lr=3e-3))
    return gmvae.FSGMVAE(gmvae.FSGMVAEConfig(
        image_size=SIZE, encoder="conv", conv_channels=(8, 16), transition=False, z_dim=16, k=3,
        decoder="linear", linear_hidden=64, beta=1e-4, lr=3e-3, label_bank_size=8))


def images_and_labels(n=6, seed=0):
    x = synthetic_cxr(n, SIZE, seed=seed)
    # spread the images apart (shifted, some upside down), so "its own source" is a sharp question
    x = torch.stack([torch.roll(im, shifts=3 * (i % 3), dims=-1).flip(-2) if i % 2 else
                     torch.roll(im, shifts=3 * (i % 3), dims=-1) for i, im in enumerate(x)])
    y = (torch.rand(n, len(LABELS), generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    return x, y


def trained(name, x, y, steps=100):
    torch.manual_seed(0)
    model = tiny(name)
    labels = y if model.label_dim else None
    opt = torch.optim.Adam(model.parameters(), lr=model.config.lr)
    for _ in range(steps):
        loss = model.loss(x, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def pixel_mse(a, b):
    """(N, M) mean squared pixel error between every image of a and every image of b."""
    return ((a.flatten(1)[:, None] - b.flatten(1)[None]) ** 2).mean(-1).numpy()


@pytest.mark.parametrize("name", ["vae", "gmvae", "fs-gmvae"])
def test_reconstruction_is_closest_to_its_own_source(name):
    x, y = images_and_labels()
    model = trained(name, x, y)
    kw = {"labels": y} if model.label_dim else {}
    rec = model.reconstruct(x, seed=0, **kw)
    assert rec.shape == x.shape and rec.dtype == torch.float32
    assert float(rec.min()) >= 0 and float(rec.max()) <= 1
    d = pixel_mse(rec, x)
    assert (d.argmin(1) == np.arange(len(x))).all(), d
    # the posterior mean, not a draw: the seed changes nothing
    assert torch.equal(rec, model.reconstruct(x, seed=1, **kw))
    # an untrained model of the same architecture does not pass this check (so the test is no tautology)
    torch.manual_seed(0)
    fresh = tiny(name).eval()
    assert not (pixel_mse(fresh.reconstruct(x, seed=0, **kw), x).argmin(1) == np.arange(len(x))).all()


def test_reconstruct_checks_shapes_and_labels():
    for name in ("vae", "gmvae"):
        m = tiny(name)
        with pytest.raises(UsageError, match=r"\(N, 1, 16, 16\)"):
            m.reconstruct(torch.zeros(2, 1, 8, 8))
        with pytest.raises(UsageError, match="unconditional"):
            m.reconstruct(torch.zeros(2, 1, SIZE, SIZE), labels=torch.zeros(2, len(LABELS)))
    with pytest.raises(UsageError, match="labels"):
        tiny("fs-gmvae").reconstruct(torch.zeros(2, 1, SIZE, SIZE))


@pytest.mark.parametrize("name", ["vae", "fs-gmvae"])
def test_sample_reconstruct_cli_names_each_source(tmp_path, name):
    x, y = images_and_labels(6)
    model = trained(name, x, y, steps=20)
    model.save_pretrained(tmp_path / "run")
    write_pngs(tmp_path / "src" / "images", x)
    rows = [f"images/img_{i:04d}.png" for i in range(len(x))]
    table = pd.DataFrame(y.numpy().astype(int), columns=LABELS)
    table.insert(0, "path", rows)
    table["split"] = ["keep", "drop"] * 3
    table.to_csv(tmp_path / "src" / "labels.csv", index=False)
    out = tmp_path / "rec"
    argv = ["sample", str(tmp_path / "run"), "--reconstruct", str(tmp_path / "src"), "--out", str(out),
            "--batch-size", "4", "--reconstruct-split", "keep"]
    assert main(argv) == 0
    man = pd.read_csv(out / "manifest.csv")
    assert list(man.columns) == ["path", "source", "seed"]
    assert sorted(man["source"]) == rows[0::2]  # only the split's images, named relative to DIR
    folder = ImageFolder(tmp_path / "src", transform=CXRTransform(image_size=SIZE))
    for _, row in man.iterrows():
        image, labels = folder[folder.ids.index(row["source"])]
        kw = {"labels": labels[None]} if model.label_dim else {}
        want = model.reconstruct(image[None], seed=0, **kw)[0, 0].numpy()
        got = load_image(out / row["path"])
        assert got.shape == (SIZE, SIZE) and abs(got - want).max() <= 1 / 255 + 1e-6


def test_reconstruct_split_needs_reconstruct(tmp_path, capsys):
    tiny("vae").save_pretrained(tmp_path / "run")
    assert main(["sample", str(tmp_path / "run"), "--n", "2", "--reconstruct-split", "half0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "give --reconstruct DIR too" in capsys.readouterr().err
