"""The embedded protocol cxr64: shipped files pinned, offline and comparable, and it measures what it should."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import cxrbench
from cxrbench.cli import main
from cxrbench.config import EvalConfig
from cxrbench.data.io import load_image, sha256_file
from cxrbench.engine.protocol import protocol_samples
from cxrbench.errors import UsageError, WeightsError
from cxrbench.features import cxr64 as feat
from cxrbench.metrics.fid import fid_from_features
from cxrbench.metrics.prdc import prdc_result
from cxrbench.protocols import cxr64 as proto
from cxrbench.protocols.cxr64_splits import SPLITS, image_splits, patient_splits

from ..conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "cxr64-samples"
NIH = SHARED_DATA / "nih1000_64px"
KERMANY = SHARED_DATA / "kermany_pediatric_covid_skytells"
needs_data = pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def extractor():
    return feat.CXR64Extractor()


def _features(ext, x: torch.Tensor) -> np.ndarray:
    return ext.extract(x).numpy().astype(np.float64)


def _images(folder: Path, paths) -> torch.Tensor:
    """``(N, 1, 64, 64)``: each image through the protocol's own crop and resize (sizes differ in a folder)."""
    return torch.cat([feat.to_cxr64(torch.from_numpy(load_image(folder / p))[None, None]) for p in paths])


@pytest.fixture(scope="module")
def heldout():
    t = pd.read_csv(NIH / "labels.csv")
    t = t[np.array(image_splits(t)) == "heldout"].head(proto.SAMPLE_COUNT)
    return _images(NIH, t["path"])


def _offline(samples):
    return cxrbench.evaluate(samples, config=EvalConfig(protocol="cxr64", use_cache=False, progress=False))


# --- shipped files ---------------------------------------------------------------------------------------


def test_shipped_files_are_the_pinned_ones():
    net, digest = feat.load_network()
    assert digest == feat.WEIGHTS_SHA256 == sha256_file(feat.shipped_path(feat.WEIGHTS_FILE))
    ref, train = proto.load_features("reference"), proto.load_features("train")
    held = proto.load_features("heldout")
    assert ref.features["cxr64"].shape == (350, feat.EMBED_DIM) and np.isfinite(ref.features["cxr64"]).all()
    assert train.features["cxr64"].shape[1] == feat.EMBED_DIM and len(train) > len(ref)
    assert held.features["cxr64"].shape == (201, feat.EMBED_DIM)
    assert ref.specs["cxr64"]["weights"] == held.specs["cxr64"]["weights"] == feat.WEIGHTS_SHA256
    pids = [set(x.patient_ids) for x in (ref, train, held)]
    assert not pids[0] & pids[1] and not pids[0] & pids[2] and not pids[1] & pids[2]  # patient-disjoint


def test_altered_or_missing_shipped_file_is_refused(tmp_path, monkeypatch):
    for name in (feat.WEIGHTS_FILE, "cxr64-reference.npz", "cxr64-train.npz", "cxr64-heldout.npz", feat.HEAD_FILE):
        shutil.copy(feat.shipped_path(name), tmp_path / name)
    data = bytearray((tmp_path / feat.WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / feat.WEIGHTS_FILE).write_bytes(bytes(data))
    ref = bytearray((tmp_path / "cxr64-reference.npz").read_bytes())
    ref[-100] ^= 1
    (tmp_path / "cxr64-reference.npz").write_bytes(bytes(ref))
    (tmp_path / "cxr64-train.npz").unlink()
    held = bytearray((tmp_path / "cxr64-heldout.npz").read_bytes())
    held[-100] ^= 1
    (tmp_path / "cxr64-heldout.npz").write_bytes(bytes(held))
    (tmp_path / feat.HEAD_FILE).write_text((tmp_path / feat.HEAD_FILE).read_text().replace("0.", "0.9", 1))
    monkeypatch.setattr(feat, "shipped_path", lambda name: tmp_path / name)
    monkeypatch.setattr(proto, "shipped_path", lambda name: tmp_path / name)
    with pytest.raises(WeightsError, match=r"cxr64-net\.pt: sha256 .* not the pinned .*reinstall"):
        feat.CXR64Extractor()
    with pytest.raises(WeightsError, match=r"cxr64-reference\.npz: sha256 .*altered"):
        proto.load_features("reference")
    with pytest.raises(WeightsError, match=r"cxr64-train\.npz: .*missing; reinstall"):
        proto.load_features("train")
    with pytest.raises(WeightsError, match=r"cxr64-heldout\.npz: sha256 .*altered"):
        protocol_samples("cxr64:heldout")  # a reference row's samples are pinned like the reference
    monkeypatch.setattr(feat, "WEIGHTS_SHA256", "any")  # past the network: the head file is checked on its own
    with pytest.raises(WeightsError, match=r"cxr64-labels\.json: sha256 .*label head"):
        feat.CXR64ClassifierExtractor()


def test_label_head_reproduces_its_recorded_reference_auroc():
    """The shipped calibration file, the shipped head and the shipped reference features agree."""
    from sklearn.metrics import roc_auc_score

    clf = feat.CXR64ClassifierExtractor()
    calib = json.loads(feat.shipped_path(feat.HEAD_FILE).read_text())
    ref = proto.load_features("reference")
    probs = clf.from_features(torch.from_numpy(ref.features["cxr64"])).numpy()
    assert clf.feature_names == calib["labels"] and len(calib["labels"]) >= 2
    for j, name in enumerate(calib["labels"]):
        auc = roc_auc_score(ref.labels[name].to_numpy() > 0.5, probs[:, j])
        assert auc == pytest.approx(calib["per_label"][name]["auroc_reference"], abs=1e-6)
        assert auc >= 0.65


# --- splits -----------------------------------------------------------------------------------------------


def test_patient_splits_are_disjoint_deterministic_and_near_their_targets():
    rng = np.random.default_rng(0)
    sizes = rng.geometric(0.3, size=300)  # a few patients with many images, as in NIH
    pids = np.repeat([f"p{i}" for i in range(300)], sizes)
    views = rng.choice(["AP", "PA"], size=len(pids))
    a = patient_splits(list(pids), list(views))
    perm = rng.permutation(len(pids))
    assert patient_splits(list(pids[perm]), list(views[perm])) == a  # row order does not matter
    counts = pd.Series([a[p] for p in pids]).value_counts(normalize=True)
    for s, share in SPLITS.items():
        assert counts[s] == pytest.approx(share, abs=0.03)


@needs_data
@pytest.mark.parametrize("which", ["reference", "heldout"])
def test_shipped_sets_are_their_splits_and_their_features_recompute(extractor, which):
    t = pd.read_csv(NIH / "labels.csv")
    t["s"] = image_splits(t)
    ref = proto.load_features(which)
    rows = t.set_index("image_index").loc[ref.ids]
    assert (rows["s"] == which).all() and len(ref) == int((t["s"] == which).sum())
    assert [sha256_file(NIH / p) for p in rows["path"][:20]] == ref.hashes[:20]
    got = _features(extractor, _images(NIH, rows["path"]))
    assert np.abs(got - ref.features["cxr64"]).max() < 1e-4 * np.abs(ref.features["cxr64"]).max()


@needs_data
def test_network_training_data_excludes_reference_heldout_and_probe_images():
    from baselines.cxr64net import training_tables

    t = pd.read_csv(NIH / "labels.csv")
    held_out = set(t["path"][np.array(image_splits(t)) != "train"])
    for folder, rows in training_tables(SHARED_DATA):
        if folder.name == NIH.name:
            assert not set(rows["path"]) & held_out and len(rows) > 400
        if folder.name == KERMANY.name:
            assert set(rows["split"]) == {"NonAugmentedTrain"}  # ValData is the linear-probe test set


# --- evaluation under the protocol -------------------------------------------------------------------------


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cxrbench", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT)


# cxr128's test_cxr128_is_the_default_and_runs_offline_on_example_samples runs the same embedded-protocol code,
# and its test_retired_cxr64_entries_still_verify recomputes a cxr64 evaluation through verify
@pytest.mark.slow
def test_evaluate_under_cxr64_runs_offline_and_comparable(tmp_path):
    """Retired from the default (cxr128 replaced it), cxr64 still runs when named: its entries verify."""
    env = {**os.environ, "CXRBENCH_CACHE": str(tmp_path / "cache"), "CXRBENCH_SHARED_DATA": "/nonexistent"}
    out = tmp_path / "r.json"
    r = _cli("evaluate", "--samples", str(EXAMPLES), "--protocol", "cxr64", "--out", str(out), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["protocol"]["name"] == "cxr64" and res["comparable"] is True, res["not_comparable_because"]
    assert res["extractors"]["cxr64"]["weights"] == feat.WEIGHTS_SHA256
    assert res["reference"]["kind"] == "features" and res["samples"]["n_used"] == proto.SAMPLE_COUNT
    for key in ("fid", "kid", "precision", "recall", "density", "coverage", "memorization", "ks_features"):
        assert res["metrics"][f"{key}_cxr64"]["value"] is not None, key
    for key in ("ks_labels", "label_mae", "label_js"):
        assert res["metrics"][key]["value"] is not None, key
    assert "protocol cxr64" in r.stdout


@pytest.mark.slow  # the refusals are shared code (protocols/embedded.py, commands/evaluate.py): test_cxr128 runs them
def test_protocol_refuses_a_reference_or_extractors_of_ones_own():
    r = _cli("evaluate", "--samples", str(EXAMPLES), "--protocol", "cxr64", "--reference", str(EXAMPLES))
    assert r.returncode != 0 and "fixes its reference" in r.stderr and "Traceback" not in r.stderr
    r = _cli("evaluate", "--samples", str(EXAMPLES), "--extractors", "xrv")
    assert r.returncode == 2 and "fixes its extractors" in r.stderr
    with pytest.raises(UsageError, match="fixes its reference"):
        cxrbench.evaluate(EXAMPLES, EXAMPLES, config=EvalConfig(protocol="cxr64"))


def test_any_input_size_is_centre_cropped_and_resized(extractor):
    """Inputs of any size go through the protocol's crop and resize (named in the spec); side padding is cropped."""
    x = torch.stack([torch.from_numpy(load_image(p))[None] for p in sorted(EXAMPLES.glob("*.png"))[:64]])
    big = F.interpolate(x, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    wide = torch.cat([torch.rand(64, 1, 128, 32), big, torch.rand(64, 1, 128, 32)], dim=3)  # 128 x 192
    f0, f1, f2 = (_features(extractor, v) for v in (x, big, wide))
    assert np.abs(f2 - f1).max() <= 1e-5 * np.abs(f1).max()  # the centre crop removes the sides exactly
    # the documented pipeline: crop + antialiased bilinear to 64 px, then the network (64 px input untouched)
    assert np.abs(_features(extractor, feat.to_cxr64(big)) - f1).max() <= 1e-5 * np.abs(f1).max()
    assert np.abs(_features(extractor, feat.to_cxr64(x)) - f0).max() == 0
    assert feat.to_cxr64(wide).shape[-2:] == (64, 64) and "64 px" in extractor.spec()["resize_filter"]


@needs_data
def test_fid_rises_monotonically_with_blur_noise_jpeg_and_contrast_loss(extractor, heldout):
    from tests.benchmarks.cxr64_validity import LADDERS

    ref = proto.load_features("reference").features["cxr64"]
    for name, (fn, levels) in LADDERS.items():
        vals = [fid_from_features(_features(extractor, fn(heldout, lv)), ref) for lv in levels[::2] + levels[-1:]]
        assert all(b > a for a, b in zip(vals, vals[1:])), (name, vals)


@needs_data
def test_mode_collapse_lowers_recall_and_coverage(extractor, heldout):
    f = _features(extractor, heldout)
    ref = proto.load_features("reference").features["cxr64"]
    rng = np.random.default_rng(0)
    out = []
    for frac in (0.0, 0.5, 0.9):
        g = f.copy()
        idx = rng.permutation(len(g))[: int(frac * len(g))]
        g[idx] = f[rng.choice(5, size=len(idx))]
        out.append(prdc_result(ref, g, k=5).as_dict())
    assert out[0]["coverage"] > out[1]["coverage"] > out[2]["coverage"], out
    # recall (k-NN balls of the samples) sees only heavy collapse: copies shrink their own balls to 0, but the
    # few distinct samples left get wider ones (Naeem et al.'s reason to prefer coverage)
    assert out[2]["recall"] < out[0]["recall"], out


@needs_data
def test_pediatric_population_is_far_above_the_adult_floor(extractor, heldout):
    k = pd.read_csv(KERMANY / "labels.csv")
    k = k[k["split"] == "ValData"].sample(proto.SAMPLE_COUNT, random_state=0)
    ref = proto.load_features("reference").features["cxr64"]
    floor = fid_from_features(_features(extractor, heldout), ref)
    shifted = fid_from_features(_features(extractor, _images(KERMANY, k["path"])), ref)
    assert shifted > 3 * floor, (shifted, floor)


@needs_data
def test_linear_probe_on_cxr64_beats_random_features(extractor):
    from tests.benchmarks.cxr64_validity import probe_auroc

    k = pd.read_csv(KERMANY / "labels.csv")
    k = k[k["split"] == "ValData"].sample(400, random_state=0)
    x = _images(KERMANY, k["path"])
    y = k["Pneumonia"].to_numpy()
    shipped = probe_auroc(_features(extractor, x), y)
    rand = probe_auroc(_features(feat.CXR64Extractor(weights="random"), x), y)
    assert shipped > rand + 0.03 and shipped > 0.85, (shipped, rand)


@needs_data
def test_train_split_cxr64_train_is_the_protocol_split():
    from cxrbench.data.sources import open_source
    from cxrbench.protocols.cxr64_splits import select_cxr64_split as _protocol_split

    src = _protocol_split(open_source(NIH, role="data"), "cxr64-train")
    t = pd.read_csv(NIH / "labels.csv")
    want = set(t["path"][np.array(image_splits(t)) == "train"])
    assert set(src.ids) == want
    with pytest.raises(UsageError, match="cxr64 splits are"):
        _protocol_split(src, "cxr64-test")
    # a GPU recipe's data: any NIH folder without the reference and held-out patients; on nih1000 (every
    # patient in one of the three splits) that is exactly the training split
    assert set(_protocol_split(open_source(NIH, role="data"), "cxr64-disjoint").ids) == want


# five CLI runs end to end; submit, verify and check are tested in process (tests/publish/test_submission.py) and a
# cxr64 entry's verify by test_cxr128::test_retired_cxr64_entries_still_verify
@pytest.mark.slow
def test_submit_verify_and_check_under_cxr64(tmp_path):
    """An entry made offline under the protocol verifies, passes its own check, and a noisier set regresses
    (blur would not do: these LSGAN samples are noisy, and blurring them brings them nearer the reference)."""
    from tests.benchmarks.cxr64_validity import noise

    from ..conftest import write_pngs

    env = {**os.environ, "CXRBENCH_CACHE": str(tmp_path / "cache")}
    r = _cli("submit", "--samples", str(EXAMPLES), "--card", str(ROOT / "examples" / "model.toml"),
             "--protocol", "cxr64", "--entries", str(tmp_path / "entries"), "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    (entry,) = (tmp_path / "entries").glob("*.json")
    e = json.loads(entry.read_text())
    assert e["comparable"] is True and e["protocol"] == {"name": "cxr64", "version": proto.VERSION}
    assert _cli("verify", str(entry), "--samples", str(EXAMPLES), "--quiet", env=env).returncode == 0
    assert _cli("check", "--samples", str(EXAMPLES), "--against", str(entry), "--quiet", env=env).returncode == 0
    x = torch.stack([torch.from_numpy(load_image(p))[None] for p in sorted(EXAMPLES.glob("*.png"))])
    write_pngs(tmp_path / "noisier", noise(x, 0.1))
    r = _cli("check", "--samples", str(tmp_path / "noisier"), "--against", str(entry), "--metrics", "fid",
             "--quiet", env=env)
    assert r.returncode == 1 and "fid_cxr64" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow  # submit and verify end to end, as two CLI runs under the retired protocol
def test_submit_of_more_samples_than_the_protocol_count_lists_the_evaluated_ones_and_verifies(tmp_path):
    """228 images under a 200-sample protocol: the entry is the 200 the protocol evaluated (first in sha256
    order), not the whole folder, and verify of the same folder picks the same 200."""
    from PIL import Image

    folder = tmp_path / "s228"
    folder.mkdir()
    pngs = sorted(EXAMPLES.glob("*.png"))
    for p in pngs:
        shutil.copy(p, folder / p.name)
    for i, p in enumerate(pngs[:28]):  # one pixel changed: new files, new hashes
        a = np.array(Image.open(p)).astype(np.int64)
        a[0, 0] = (a[0, 0] + 1) % 256
        Image.fromarray(a.astype(np.uint8)).save(folder / f"extra_{i:03d}.png")
    env = {**os.environ, "CXRBENCH_CACHE": str(tmp_path / "cache")}
    r = _cli("submit", "--samples", str(folder), "--card", str(ROOT / "examples" / "model.toml"),
             "--protocol", "cxr64", "--entries", str(tmp_path / "entries"), "--quiet", "--no-augment", env=env)
    assert r.returncode == 0, r.stderr
    (entry,) = (tmp_path / "entries").glob("*.json")
    e = json.loads(entry.read_text())
    first = sorted((sha256_file(p), p.name) for p in folder.glob("*.png"))[:proto.SAMPLE_COUNT]
    assert sorted((f["sha256"], f["path"]) for f in e["samples"]["files"]) == first
    assert e["samples"]["n"] == e["result"]["samples"]["n_used"] == proto.SAMPLE_COUNT
    assert any("first 200 of the folder's 228" in w for w in e["result"]["warnings"])
    r = _cli("verify", str(entry), "--quiet", env=env)  # the folder where the entry records it
    assert r.returncode == 0, r.stdout + r.stderr


def test_reference_rows_heldout_scores_near_the_floor_and_the_memorizer_is_flagged(tmp_path):
    """The leaderboard's real-image rows run from the shipped features alone (no images, no data folder)."""
    from cxrbench.publish.submission import samples_location, snapshot

    held, mem = _offline("cxr64:heldout"), _offline("cxr64:train")
    for r in (held, mem):
        assert r["comparable"] is True and r["samples"]["n_used"] == proto.SAMPLE_COUNT
    # the training images are the memorizer's samples: every one is its own nearest training image
    assert mem["metrics"]["memorization_cxr64"]["value"] == 1.0
    assert held["metrics"]["memorization_cxr64"]["value"] < 0.2
    # held-out real images sit within the real-vs-real noise floor; the example LSGAN far above it
    fid = held["metrics"]["fid_cxr64"]
    assert fid["value"] < fid["real_vs_real"] < _offline(EXAMPLES)["metrics"]["fid_cxr64"]["value"] / 5
    snap = snapshot("cxr64:heldout")  # an entry lists the images the features came from, by sha256
    assert len(snap.files) == 201 and samples_location("cxr64:heldout", tmp_path) == "cxr64:heldout"


def test_leaderboard_ranks_cxr64_by_its_headline_metric():
    from cxrbench.publish.ranking import default_rank_key

    keys = ["coverage_cxr64", "fd_inf_cxr64", "fid_cxr64", "fid_inception", "kid_cxr64"]
    assert default_rank_key(keys, "cxr64") == proto.CXR64Protocol.headline == "fid_cxr64"
    # no headline: the first of the fid metric's outputs for the table's extractors, alphabetically
    assert default_rank_key(keys, "default", ["cxr64", "inception"]) == "fid_cxr64"
    assert default_rank_key(["fid_inception", "kid_xrv"], "cxr64", ["inception", "xrv"]) == "fid_inception"


def test_augmentation_labels_synthetic_images_with_the_probe_extractors_own_head():
    from cxrbench.protocols.augmentation.labels import _labeller

    assert _labeller("cxr64", ("Effusion", "No Finding")) == ("cxr64", "cxr64-classifier")  # offline
    assert _labeller("cxr64", ("Pneumonia", "No Finding")) == ("xrv", "xrv-classifier")  # not among its labels
    assert _labeller("xrv", ("Effusion", "No Finding")) == ("xrv", "xrv-classifier")


def test_training_the_network_on_a_wrong_data_root_is_one_clear_error(tmp_path, capsys):
    # in-process (the CLI's own error path; a subprocess cost 11-14 s of interpreter and torch start-up)
    assert main(["train", "cxr64-net", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "pass --data the folder that holds them" in err and "Traceback" not in err
