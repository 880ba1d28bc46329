"""Protocol ``chexgenbench``: CheXGenBench's RadDino preprocessing against its own pipeline (PIL, torchvision,
transformers' PIL image processor), its FID / KID / PRDC against torchmetrics calling the extractor itself and
against cxrbench's own implementations, the settings in the result, and the refusals. A RadDino of 2 layers of
width 64 (random weights, the published 518 px preprocessing) keeps each test to seconds."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchmetrics
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from cxrbench.cli import main
from cxrbench.config import EvalConfig
from cxrbench.data.io import load_image
from cxrbench.engine.evaluate import evaluate
from cxrbench.errors import DataError, UsageError, WeightsError
from cxrbench.features.interop import TorchmetricsFeature
from cxrbench.features.vit import (
    CONFIGS,
    RadDinoExtractor,
    preprocess_chexgenbench,
    shipped_config,
    shipped_preprocessor,
)
from cxrbench.metrics import functional as F
from cxrbench.metrics.kid import mmd2_unbiased
from cxrbench.protocols.chexgenbench import KID_SUBSETS, SOURCE, PassThrough, chexgenbench_numbers
from cxrbench.registry import EXTRACTORS
from tests.conftest import shared_folder
from tests.features.test_extractors_vit import no_weights_anywhere  # noqa: F401 - the fixture

transformers = pytest.importorskip("transformers")
compute_prdc = pytest.importorskip("prdc").compute_prdc


SMALL = dict(shipped_config("rad-dino"), num_hidden_layers=2, hidden_size=64, num_attention_heads=4)


class TinyRadDino(RadDinoExtractor):
    """RadDino's preprocessing and output, 2 layers of width 64."""

    def __init__(self, **kw):
        super().__init__(**kw, _config=SMALL)


@pytest.fixture
def tiny_raddino(monkeypatch):
    monkeypatch.setitem(EXTRACTORS._entries, "raddino", TinyRadDino)


def linked(folder, dest, n):
    """``n`` real radiographs of ``folder`` linked (not copied) into ``dest``."""
    dest.mkdir()
    files = sorted((shared_folder(folder) / "images").rglob("*.png"))[:n]
    assert len(files) == n, folder
    for p in files:
        (dest / p.name).symlink_to(p)
    return dest


@pytest.fixture
def sets(tmp_path):
    # 12 each: cxrbench's PRDC floor needs 2k + 2 reference images; equal sizes make every KID subset the whole set
    return (linked("adult_covid_extra_256px", tmp_path / "gen", 12),
            linked("nih_extra_256px", tmp_path / "ref", 12))


def config(tmp_path, **kw):
    return EvalConfig(**{"weights": "random", "n_bootstrap": 0, "cache_dir": str(tmp_path / "cache"),
                         "progress": False, "num_workers": 0, "protocol": "chexgenbench", **kw})


def test_preprocessing_is_chexgenbench_pipeline_on_real_images():
    """metrics/fid.py: PIL RGB, Resize((299, 299)), ToTensor, * 255 to uint8, then the PIL BitImageProcessor."""
    from PIL import Image
    from torchvision import transforms

    v = torch.arange(256, dtype=torch.uint8)  # its float32 round trip keeps every 8-bit value
    assert torch.equal((v.float().div(255) * 255).to(torch.uint8), v)
    proc = transformers.BitImageProcessorPil.from_pretrained(CONFIGS / "rad-dino")
    load = transforms.Compose([transforms.Resize((299, 299)), transforms.ToTensor()])
    pp = shipped_preprocessor("rad-dino")
    for folder, n in [("kermany_pediatric_covid_skytells", 2), ("nih_extra_256px", 1), ("nih_fullres_samples", 1)]:
        root = shared_folder(folder)
        for rel in [r.split(",")[0] for r in (root / "labels.csv").read_text().splitlines()[1 : n + 1]]:
            batch = (load(Image.open(root / rel).convert("RGB"))[None] * 255).to(torch.uint8)
            theirs = proc(images=batch, return_tensors="pt")["pixel_values"]
            ours = preprocess_chexgenbench(torch.from_numpy(load_image(root / rel))[None, None], pp)
            assert ours.shape == theirs.shape == (1, 3, 518, 518)
            assert (ours - theirs).abs().max() <= 1e-4, rel
            # the extractor's own processor path is another image (no 299 px squash): the test tells them apart
            assert (TinyRadDino(weights="random").preprocess(torch.from_numpy(load_image(root / rel))[None, None])
                    - theirs).abs().max() > 0.05


def test_numbers_agree_with_cxrbench_implementations_and_kid_subset_settings():
    g = np.random.default_rng(0)
    real = g.normal(size=(60, 24)).astype(np.float32)
    fake = (g.normal(size=(45, 24)) * 1.3 + 0.4).astype(np.float32)
    got = chexgenbench_numbers(real, fake, seed=7)
    assert got["fid"] == pytest.approx(F.fid(real=real, fake=fake).value, rel=1e-4)
    p = F.prdc(real=real, fake=fake, k=5)
    for k in ("precision", "recall", "density", "coverage"):
        assert got[k] == pytest.approx(p[k].value, abs=1e-4), k
    # KID: CheXGenBench's subsets, min(N_gen, N_ref) rows, 100 of them, torchmetrics' draw order, seeded
    torch.manual_seed(7)
    r, f = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    vals = []
    for _ in range(KID_SUBSETS):
        ir, jf = torch.randperm(60)[:45], torch.randperm(45)[:45]
        vals.append(mmd2_unbiased(f[jf], r[ir]))
    assert got["kid"] == pytest.approx(np.mean(vals), abs=1e-4, rel=1e-4)
    assert got["kid_std"] == pytest.approx(np.std(vals), abs=1e-4, rel=1e-3) and got["kid_std"] > 0
    assert chexgenbench_numbers(real, fake, seed=7) == got  # seeded, and the global generator left alone
    with pytest.raises(DataError, match="at least 6 images"):
        chexgenbench_numbers(real[:5], fake)


@pytest.mark.usefixtures("tiny_raddino")
def test_end_to_end_equals_torchmetrics_calling_the_extractor(tmp_path, sets):
    gen, ref = sets
    res = evaluate(str(gen), str(ref), config=config(tmp_path))
    m = res.metrics
    # torchmetrics as CheXGenBench runs it: the extractor as the feature module, fed uint8 RGB images
    feature = TorchmetricsFeature(TinyRadDino(weights="random", seed=0, resize="chexgenbench"))
    fid = FrechetInceptionDistance(feature=feature)
    rows = {True: [], False: []}
    for folder, real in ((ref, True), (gen, False)):
        for p in sorted(folder.iterdir()):
            x = (torch.from_numpy(load_image(p)) * 255).round().to(torch.uint8)[None, None].expand(1, 3, -1, -1)
            fid.update(x, real=real)
            rows[real].append(fid.inception(x))  # what FID's feature module gives for x
    # KID and PRDC of those rows (one forward per image keeps the test short)
    kid = KernelInceptionDistance(feature=PassThrough(SMALL["hidden_size"]), subset_size=12)
    real_f, fake_f = torch.cat(rows[True]), torch.cat(rows[False])
    kid.update(real_f, real=True)
    kid.update(fake_f, real=False)
    theirs = compute_prdc(real_features=real_f.numpy(), fake_features=fake_f.numpy(), nearest_k=5)
    assert m["chexgenbench_fid_raddino"]["value"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert m["chexgenbench_kid_raddino"]["value"] == pytest.approx(float(kid.compute()[0]), rel=1e-4, abs=1e-6)
    for k in ("precision", "recall", "density", "coverage"):
        assert m[f"chexgenbench_{k}_raddino"]["value"] == pytest.approx(float(theirs[k]), abs=1e-4), k
    # cxrbench's own FID on the same features, beside it
    assert m["fid_raddino"]["value"] == pytest.approx(m["chexgenbench_fid_raddino"]["value"], rel=1e-4)
    assert {"kid_raddino", "precision_raddino", "coverage_raddino"} <= set(m) and not res["skipped_metrics"]

    # what the numbers were made with
    sec = res["chexgenbench"]
    assert sec["mode"] == "chexgenbench" and sec["source"] == SOURCE
    assert sec["versions"]["torchmetrics"] == torchmetrics.__version__
    assert sec["settings"]["kid"] == {"class": "torchmetrics KernelInceptionDistance(feature=RadDino)",
                                      "subset_size": 12, "subsets": 100, "degree": 3, "gamma": None, "coef": 1.0}
    assert sec["settings"]["prdc"]["nearest_k"] == 5
    assert m["chexgenbench_kid_raddino"]["subset_size"] == 12
    assert m["chexgenbench_fid_raddino"]["chexgenbench_column"] == "FID (RadDino)"
    assert m["chexgenbench_fid_raddino"]["implementation"] == f"torchmetrics {torchmetrics.__version__} " \
                                                              "FrechetInceptionDistance"
    assert res["protocol"] == {"name": "chexgenbench", "version": "1"}
    assert res["extractors"]["raddino"]["resize_filter"].startswith("CheXGenBench (metrics/fid.py)")
    assert res["comparable"] is False and "raddino: random:0 weights" in res["not_comparable_because"]


@pytest.mark.usefixtures("tiny_raddino")
def test_unreadable_file_is_refused_not_a_black_image(tmp_path, sets):
    gen, ref = sets
    (gen / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png"):
        evaluate(str(gen), str(ref), config=config(tmp_path))


@pytest.mark.usefixtures("no_weights_anywhere")
def test_refused_without_weights_and_without_reference(tmp_path, sets, capsys):
    gen, ref = sets
    with pytest.raises(WeightsError, match="RadDino .*microsoft/rad-dino.*weights not found"):
        evaluate(str(gen), str(ref), config=config(tmp_path, weights="auto"))
    assert main(["evaluate", "--samples", str(gen), "--reference", str(ref), "--protocol", "chexgenbench",
                 "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huggingface-cli download microsoft/rad-dino" in err[0] and "--weights DIR" in err[0]
    with pytest.raises(UsageError, match="pass --reference"):
        evaluate(str(gen), None, config=config(tmp_path))
    assert main(["evaluate", "--samples", str(gen), "--reference", str(ref), "--protocol", "chexgenbench",
                 "--extractors", "xrv"]) == 2
    assert "fixes its extractor" in capsys.readouterr().err


def test_prdc_missing_gives_the_install_hint(tmp_path, sets, monkeypatch):
    monkeypatch.setitem(sys.modules, "prdc", None)
    with pytest.raises(UsageError, match=r'pip install "cxrbench\[chexgenbench\]"'):
        evaluate(str(sets[0]), str(sets[1]), config=config(tmp_path))
