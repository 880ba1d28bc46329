"""``cxrbench train`` and ``cxrbench sample`` end to end on a tiny folder of synthetic PNGs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrbench.commands import sample as sample_cmd
from cxrbench.commands import train as train_cmd
from cxrbench.data.labels import LABELS
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError
from cxrbench.features.base import FeatureExtractor
from cxrbench.registry import EXTRACTORS, GENERATORS

VAE_TOML = "channels = [8, 16]\nz_dim = 8\nbatch_size = 4\n"
FS_TOML = (
    'encoder = "conv"\nconv_channels = [8, 16]\ntransition = false\nz_dim = 8\nk = 3\n'
    "linear_hidden = 32\nbatch_size = 4\nlabel_bank_size = 8\n"
)
PG_TOML = "z_dim = 8\nfmap_base = 32\nfmap_max = 16\nphase_steps = 1\nbatch_size = 4\nema_decay = 0.0\n"


def call(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return module.run(p.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    imgs = synthetic_cxr(8, 24, seed=0)[:, 0].numpy()
    rows = []
    for i, im in enumerate(imgs):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "Edema": i % 2, "Effusion": int(i < 3), "No Finding": int(i >= 6)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def train(tmp_path, folder, name, toml, *extra):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(toml)
    out = tmp_path / f"run-{name}"
    call(train_cmd, [name, "--data", folder, "--image-size", 16, "--out", out, "--config", cfg, "--quiet", *extra])
    return out


def read_png(path) -> np.ndarray:
    im = Image.open(path)
    arr = np.asarray(im)
    return arr.astype(np.float64) / (65535 if arr.dtype == np.uint16 else 255)


def test_train_then_resume_then_sample_reproduces_the_model(tmp_path, folder):
    out = train(tmp_path, folder, "vae", VAE_TOML, "--steps", 2)
    for f in ("config.json", "model.pt", "checkpoint.pt", "losses.csv", "train_state.json", "train_info.json"):
        assert (out / f).is_file(), f
    info = json.loads((out / "train_info.json").read_text())
    assert info["n_images"] == 8 and info["transform"]["image_size"] == 16
    train(tmp_path, folder, "vae", VAE_TOML, "--steps", 3)  # same command, larger budget: resumes
    assert json.loads((out / "train_state.json").read_text())["step"] == 3

    samples = tmp_path / "s"
    call(sample_cmd, [out, "--n", 5, "--out", samples, "--batch-size", 2, "--seed", 4])
    manifest = pd.read_csv(samples / "manifest.csv")
    assert list(manifest.columns) == ["path", "seed"] and len(manifest) == 5
    model = GENERATORS.get("vae").from_pretrained(out)
    for seed, rows in manifest.groupby("seed", sort=False):
        want = model.sample(len(rows), seed=int(seed))[:, 0].double().numpy()
        got = np.stack([read_png(samples / p) for p in rows["path"]])
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    with pytest.raises(UsageError, match="already holds samples"):
        call(sample_cmd, [out, "--n", 2, "--out", samples])

    deep = tmp_path / "s16"
    call(sample_cmd, [out, "--n", 2, "--out", deep, "--bit-depth", 16, "--seed", 4])
    assert Image.open(deep / "00000.png").mode.startswith("I;16")
    want = model.sample(2, seed=int(pd.read_csv(deep / "manifest.csv")["seed"][0]))[0, 0].double().numpy()
    assert np.abs(read_png(deep / "00000.png") - want).max() <= 0.5 / 65535 + 1e-6


def test_conditional_sampling_writes_requested_labels(tmp_path, folder):
    out = train(tmp_path, folder, "fs-gmvae", FS_TOML, "--steps", 2)
    model = GENERATORS.get("fs-gmvae").from_pretrained(out)
    # the label bank holds the folder's label vectors (unlabelled columns absent = 0)
    table = pd.read_csv(folder / "labels.csv")
    rows = {tuple(float(r.get(lab, 0)) for lab in LABELS) for r in table.to_dict("records")}
    assert {tuple(r.tolist()) for r in model.label_bank} <= rows

    s = tmp_path / "edema"
    call(sample_cmd, [out, "--n", 3, "--out", s, "--labels", "edema, Effusion"])
    m = pd.read_csv(s / "manifest.csv")
    assert list(m.columns) == ["path", *LABELS, "seed"]
    assert (m["Edema"] == 1).all() and (m["Effusion"] == 1).all()
    assert (m[[c for c in LABELS if c not in ("Edema", "Effusion")]] == 0).all().all()
    y = torch.from_numpy(m[LABELS].to_numpy(np.float32))
    want = model.sample(3, labels=y, seed=int(m["seed"][0]))[:, 0].double().numpy()
    got = np.stack([read_png(s / p) for p in m["path"]])
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6

    # one row per image from a CSV; N defaults to its rows
    s2 = tmp_path / "fromcsv"
    call(sample_cmd, [out, "--out", s2, "--labels-csv", folder / "labels.csv"])
    m2 = pd.read_csv(s2 / "manifest.csv")
    assert len(m2) == 8 and (m2["Edema"].to_numpy() == table["Edema"].to_numpy()).all()

    # no labels asked for: drawn from the training labels and recorded
    s3 = tmp_path / "drawn"
    call(sample_cmd, [out, "--n", 4, "--out", s3])
    m3 = pd.read_csv(s3 / "manifest.csv")
    assert {tuple(float(v) for v in r) for r in m3[LABELS].to_numpy()} <= rows

    with pytest.raises(UsageError, match="known labels"):
        call(sample_cmd, [out, "--n", 1, "--out", tmp_path / "bad", "--labels", "Broken Heart"])


def test_unconditional_models_refuse_labels_and_unknown_names_are_listed(tmp_path, folder):
    out = train(tmp_path, folder, "vae", VAE_TOML, "--steps", 1)
    with pytest.raises(UsageError, match="unconditional"):
        call(sample_cmd, [out, "--n", 1, "--out", tmp_path / "x", "--labels", "Edema"])
    with pytest.raises(UsageError, match="vae"):
        call(train_cmd, ["no-such-model", "--data", folder, "--out", tmp_path / "y", "--steps", 1])
    bad = tmp_path / "bad.toml"
    bad.write_text("z_dimension = 3\n")
    with pytest.raises(UsageError, match="known keys: .*z_dim"):
        call(train_cmd, ["vae", "--data", folder, "--out", tmp_path / "z", "--config", bad, "--steps", 1])


class PneumoniaFromBrightness(FeatureExtractor):
    """A differentiable stand-in classifier registered like the XRV one: bright images are 'Pneumonia'."""

    name = "test-brightness"
    kind = "probabilities"
    num_features = 2

    def __init__(self, **kwargs):  # weights=, device=, as extractors are built
        super().__init__()
        self.feature_names = ["No Finding", "Pneumonia"]

    def preprocess(self, x):
        return x

    def forward(self, x):
        p = torch.sigmoid(20 * (x.mean(dim=(1, 2, 3)) - 0.5))
        return torch.stack([1 - p, p], dim=1)


def test_optimize_toward_a_class(tmp_path, folder):
    out = train(tmp_path, folder, "pggan", PG_TOML, "--steps", 4)
    EXTRACTORS.add("test-brightness", PneumoniaFromBrightness)
    plain, guided = tmp_path / "plain", tmp_path / "guided"
    call(sample_cmd, [out, "--n", 4, "--out", plain, "--seed", 1])
    call(sample_cmd, [out, "--n", 4, "--out", guided, "--seed", 1, "--optimize-toward", "pneumonia",
                      "--classifier", "test-brightness", "--weights", "random", "--opt-steps", 20, "--opt-lr", 0.1])
    m = pd.read_csv(guided / "manifest.csv")
    assert list(m.columns) == ["path", "Pneumonia", "seed"] and (m["Pneumonia"] == 1).all()
    bright = np.mean([read_png(guided / p).mean() for p in m["path"]])
    base = np.mean([read_png(plain / p).mean() for p in m["path"]])
    assert bright > base
    info = json.loads((guided / "sample_info.json").read_text())
    assert info["optimize_toward"] == "Pneumonia" and info["log_p_end"] > info["log_p_start"]
    vae_run = train(tmp_path, folder, "vae", VAE_TOML, "--steps", 1)
    with pytest.raises(UsageError, match="optimize-toward"):
        call(sample_cmd, [vae_run, "--n", 1, "--out", tmp_path / "v", "--optimize-toward", "Pneumonia",
                          "--classifier", "test-brightness"])


@pytest.mark.slow  # builds two random-weight DenseNet121s (BatchNorm calibration at 224 px): ~30 s on 2 CPUs
def test_xrv_classifier_guidance_is_differentiable_in_the_image():
    # the derived xrv-classifier is composed with the xrv DenseNet so gradients reach the pixels
    clf = sample_cmd.build_classifier("xrv-classifier", "random", "cpu")
    assert "Pneumonia" in clf.feature_names
    x = synthetic_cxr(1, 16, seed=0).requires_grad_(True)
    p = clf(x)
    assert p.shape == (1, 18) and ((p >= 0) & (p <= 1)).all()
    (grad,) = torch.autograd.grad(p[0, clf.feature_names.index("Pneumonia")], x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_sample_output_evaluates_directly(tmp_path, folder):
    from cxrbench.cli import main
    from cxrbench.data import open_source

    out = train(tmp_path, folder, "fs-gmvae", FS_TOML, "--steps", 1)
    samples = tmp_path / "samples"
    assert main(["sample", str(out), "--n", "6", "--out", str(samples), "--labels", "Edema"]) == 0
    result_path = tmp_path / "result.json"
    rc = main(["evaluate", "--samples", str(samples), "--reference", str(folder), "--extractors", "random-conv",
               "--metrics", "fid", "--weights", "random", "--n-bootstrap", "0", "--num-workers", "0",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(result_path), "--quiet"])
    assert rc == 0
    result = json.loads(result_path.read_text())
    assert result["samples"]["n"] == 6 and np.isfinite(result["metrics"]["fid_random-conv"]["value"])
    # the manifest's requested labels are what the harness sees as the samples' labels
    src = open_source(samples)
    assert src.manifest is not None
    lab = src.label_matrix()
    assert (lab[:, LABELS.index("Edema")] == 1).all() and (np.nan_to_num(lab).sum(1) == 1).all()


@pytest.mark.parametrize("name,toml,bits", [("vae", VAE_TOML, 8), ("fs-gmvae", FS_TOML, 16)])
def test_cli_sample_writes_the_images_evaluate_generator_evaluates(tmp_path, folder, monkeypatch, name, toml, bits):
    # the same seed and batch size draw the same images through both doors (a conditional model draws the
    # same label vectors too): the evaluated images, PNG-encoded, are byte for byte the files written
    # (compared as sha256 sets: the harness puts images in hash order)
    import hashlib

    from cxrbench.cli import main
    from cxrbench.engine import evaluate as harness

    run = train(tmp_path, folder, name, toml, "--steps", 1)
    samples = tmp_path / "s"
    assert main(["sample", str(run), "--n", "7", "--batch-size", "3", "--seed", "5", "--bit-depth", str(bits),
                 "--out", str(samples)]) == 0
    written = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in samples.glob("*.png"))

    seen = []
    monkeypatch.setattr(harness, "evaluate", lambda src, reference, config=None: seen.append(src))
    harness.evaluate_generator(GENERATORS.get(name).from_pretrained(run), 7, folder, seed=5, batch_size=3)
    src = seen[0]
    evaluated = sorted(hashlib.sha256(sample_cmd.encode_png(src.load(i), bits)).hexdigest() for i in range(len(src)))
    assert len(written) == len(set(written)) == 7
    assert written == evaluated
