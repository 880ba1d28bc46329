"""The augmentation protocol's test draw and cxr64 splits, and the ``augmentation`` block of leaderboard entries.

Entry tests use a planted task on synthetic images in the NIH layout (``Effusion`` = shifted images), the
shipped cxr64 network, and a reduced leaderboard setting (monkeypatched sizes), so they take seconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.cli import main
from cxrbench.data.sources import open_source
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.evaluate import images_source
from cxrbench.features.cxr64 import CXR64Extractor
from cxrbench.protocols.augmentation.config import OUTPUTS, AugmentConfig
from cxrbench.protocols.augmentation.labels import binary_labels
from cxrbench.protocols.augmentation.splits import _default_splits, _test_split
from cxrbench.protocols.cxr64_splits import image_splits

CXR64_TRAIN_SPLIT, CXR64_TEST_SPLIT = CXR64Extractor.augmentation_splits

from ..conftest import SHARED_DATA, write_pngs

TASK = "Effusion vs No Finding"
NIH = SHARED_DATA / "nih1000_64px"


def _nih_like(imgs: torch.Tensor, y: np.ndarray, patients: list[str], name: str):
    """An in-memory source with NIH-layout labels in the source's canonical (hash) order."""
    src = images_source(imgs, name)
    order = [int(i.split("[")[1][:-1]) for i in src.ids]
    src.labels = pd.DataFrame({
        "Effusion": y[order], "No Finding": 1 - y[order], "patient_id": [patients[i] for i in order],
        "view_position": ["PA" if i % 3 else "AP" for i in order],
    })
    src.patient_ids = list(src.labels["patient_id"].astype(str))
    return src


def test_test_draw_fills_quotas_that_whole_patients_cannot():
    """Every Effusion patient has 3 images and the test set wants 5: no set of whole patients gives 5. The
    old draw took whole patients only and stopped with 30 Effusion images available."""
    n_pos, n_neg = 30, 30
    imgs = synthetic_cxr(n_pos + n_neg, 16, 0.0, seed=1)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.int64)
    patients = [f"e{i // 3}" for i in range(n_pos)] + [f"n{i}" for i in range(n_neg)]
    src = _nih_like(imgs, y, patients, "real")
    yy = src.labels["Effusion"].to_numpy().astype(np.int64)
    test, pool = _test_split(src, yy, AugmentConfig(n_test=10, seed=0), ("Effusion", "No Finding"))
    assert (yy[test] == 1).sum() == 5 and (yy[test] == 0).sum() == 5
    test_patients = {src.patient_ids[i] for i in test}
    assert not test_patients & {src.patient_ids[i] for i in pool}  # a partly used patient leaves the pool
    # only one patient is split: 5 = 3 + 2, so the pool loses 6 Effusion images (two patients), not more
    assert (yy[pool] == 1).sum() == n_pos - 6 and (yy[pool] == 0).sum() == n_neg - 5


def test_cxr64_extractor_trains_on_cxr64_train_and_tests_on_the_unseen_splits():
    rng = np.random.default_rng(2)
    n = 160
    imgs = synthetic_cxr(n, 16, 0.0, seed=3)
    y = rng.integers(0, 2, n)
    patients = [f"p{i // 2}" for i in range(n)]
    src = _nih_like(imgs, y, patients, "real")
    split = np.array(image_splits(src.labels))
    yy = src.labels["Effusion"].to_numpy().astype(np.int64)
    cfg = _default_splits(AugmentConfig(extractor="cxr64", n_test=20), src)
    assert (cfg.test_split, cfg.train_split) == (CXR64_TEST_SPLIT, CXR64_TRAIN_SPLIT)
    test, pool = _test_split(src, yy, cfg, ("Effusion", "No Finding"))
    assert set(split[test]) <= {"heldout", "reference"} and set(split[pool]) == {"train"}
    assert len(pool) == int(((split == "train") & (yy >= 0)).sum())  # the whole train split, test patients aside
    # other extractors, or splits given explicitly, are left alone
    assert _default_splits(AugmentConfig(extractor="xrv"), src).test_split is None
    assert _default_splits(AugmentConfig(extractor="cxr64", test_split="cxr64-heldout"), src).train_split is None


@pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data")
def test_nih_effusion_draw_from_the_cxr64_splits():
    """The issue's command: 60 balanced Effusion / No Finding test images from the NIH thumbnails."""
    from cxrbench.protocols.cxr64 import load_features

    src = open_source(NIH, role="real")
    y = binary_labels(src.label_matrix(), "Effusion", "No Finding")
    cfg = _default_splits(AugmentConfig(extractor="cxr64", n_test=160), src)
    test, pool = _test_split(src, y, cfg, ("Effusion", "No Finding"))
    assert (y[test] == 1).sum() == (y[test] == 0).sum() == 80
    # the pool is the generators' (and the network's) training split, the test set outside it, by file hash
    shipped_train = set(load_features("train").hashes)
    assert {src.hashes[i] for i in pool} <= shipped_train
    assert not {src.hashes[i] for i in test} & shipped_train
    assert ((y[pool] == 1).sum(), (y[pool] == 0).sum()) == (82, 224)


# --- entries ------------------------------------------------------------------------------------------------

CARD = """\
name = "Tiny cGAN"
authors = ["A. Author"]
training_data = "synthetic_cxr"
resolution = 32
conditioning = "labels"
license = "MIT"
"""


def _write_task(folder, n: int, seed: int, csv: str, patients: bool):
    x0 = synthetic_cxr(n // 2, 32, 0.0, seed=seed)
    x1 = synthetic_cxr(n - n // 2, 32, 0.4, seed=seed + 1)
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    write_pngs(folder, torch.cat([x0, x1]))
    table = {"path": [f"img_{i:04d}.png" for i in range(n)], "Effusion": y, "No Finding": 1 - y}
    if patients:
        table.update(patient_id=[f"p{i // 2}" for i in range(n)], view_position=["PA"] * n)
    pd.DataFrame(table).to_csv(folder / csv, index=False)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("augentry")
    w = {"root": root, "real": _write_task(root / "nih", 200, 10, "labels.csv", True),
         "samples": _write_task(root / "samples", 60, 20, "manifest.csv", False), "cache": str(root / "cache")}
    (root / "model.toml").write_text(CARD)
    with pytest.MonkeyPatch.context() as mp:
        _small(mp)
        assert _submit(w, "--augment", TASK, "--augment-real", str(w["real"])) == 0
    w["entry"] = root / "entries" / "tiny-cgan.json"
    return w


def _small(mp):
    from cxrbench.publish import augment_block

    mp.setitem(augment_block.SETTING, "n_real", 20)
    mp.setitem(augment_block.SETTING, "n_test", 30)
    mp.setitem(augment_block.SETTING, "seeds", 3)


def _submit(w, *extra, samples=None, out="entries"):
    return main(["submit", "--samples", str(samples or w["samples"]), "--card", str(w["root"] / "model.toml"),
                 "--reference", str(w["real"]), "--weights", "random", "--extractors", "random-conv", "--metrics",
                 "fid", "--n-bootstrap", "50", "--num-workers", "0", "--cache-dir", w["cache"], "--quiet",
                 "--entries", str(w["root"] / out), *extra])


def _verify(entry, w, *extra):
    return main(["verify", str(entry), "--samples", str(w["samples"]), "--num-workers", "0", "--quiet", *extra])


def test_entry_holds_the_augmentation_block_with_cis(world):
    from cxrbench.publish.entry import load_entry

    e = load_entry(world["entry"])
    b = e["augmentation"]
    assert set(b["metrics"]) == set(OUTPUTS) and b["task"] == TASK
    assert b["config"]["extractor"] == "cxr64" and b["config"]["classifier"] == "linear" and b["config"]["seeds"] >= 3
    assert b["details"]["synthetic_label_source"] == "manifest"
    assert b["details"]["splits"] == {"test": CXR64_TEST_SPLIT, "train": CXR64_TRAIN_SPLIT}
    assert b["real"]["sha256"] == open_source(world["real"], role="real").sha256
    for m in b["metrics"].values():
        assert m["ci"][0] <= m["value"] <= m["ci"][1] and len(m["per_seed"]) == 3
    # the planted task is learnable from the real images: the numbers measure something
    assert b["metrics"]["aug_real_auroc"]["value"] > 0.8


def test_verify_rechecks_the_block_and_fails_on_a_tampered_aug_value(world, tmp_path, capsys):
    assert _verify(world["entry"], world) == 0
    assert "not rechecked" not in capsys.readouterr().out
    e = json.loads(world["entry"].read_text())
    gain = e["augmentation"]["metrics"]["aug_gain_auroc"]
    gain["value"] += gain["verify_atol"] + 1e-3  # beyond the one test pair a recomputation may move
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(e))
    assert _verify(edited, world) == 1
    assert "augmentation.aug_gain_auroc.value" in capsys.readouterr().out


def test_a_rank_statistic_may_move_one_test_pair_as_the_recomputation_states_and_no_more():
    from cxrbench.protocols.augmentation.stats import resolution_fields
    from cxrbench.publish.compare import metric_differences

    step = 1 / (80 * 80 * 5)  # one test pair of 80 x 80, averaged over 5 seeds
    stored = {"aug_real_auroc": {"value": 0.75, "ci": [0.7, 0.8], **resolution_fields(step)}}

    def rows(value, ci=(0.7, 0.8), claimed=None):
        entry = json.loads(json.dumps(stored))
        if claimed is not None:
            entry["aug_real_auroc"]["verify_atol"] = claimed
        new = {"aug_real_auroc": {**stored["aug_real_auroc"], "value": value, "ci": list(ci)}}
        return [r[0] for r in metric_differences(entry, new, 1e-6, 1e-12)]

    assert rows(0.75 + step) == [] and rows(0.75, (0.7 - step, 0.8 + step)) == []
    assert rows(0.75 + 2 * step) == ["aug_real_auroc.value"]
    assert rows(0.75, (0.7, 0.8 + 3 * step)) == ["aug_real_auroc.ci_hi"]
    # an entry cannot widen its own tolerance: the recomputation's is used, and the claim is reported
    assert rows(0.76, claimed=1.0) == ["aug_real_auroc.verify_atol", "aug_real_auroc.value"]


@pytest.mark.skipif(not (SHARED_DATA / "nih_extra_256px" / "labels.csv").is_file(), reason="nih_extra_256px not available")
def test_shipped_augmentation_block_recomputes_exactly_on_other_cpu_kernels(tmp_path):
    """The board's DDPM entry's block (cxr128: Edema vs No Finding on nih_extra_256px, its own per-class
    samples) recomputed with OpenBLAS forced to its oldest x86 kernel and PyTorch / oneDNN to their baseline
    ISA (what another CPU runs): every number equal to the stored one. Before the probe was solved to
    convergence, 7 of the cxr64 board's block's numbers moved there (one or two test pairs per seed)."""
    import os
    import subprocess
    import sys

    from ..conftest import REPO

    entry = REPO / "leaderboard" / "entries" / "ddpm-32-60-cpu-min.json"
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from cxrbench.publish import augment_block\n"
        "from cxrbench.publish.submission import _recorded_augment_samples, recorded_samples, snapshot\n"
        "e = json.loads(Path(sys.argv[1]).read_text()); b = e['augmentation']; p = e['protocol']['name']\n"
        "src = _recorded_augment_samples(e, sys.argv[1]) if b.get('samples') else recorded_samples(e, sys.argv[1])\n"
        "new = augment_block.compute(snapshot(src).source, augment_block.default_real(p), b['task'], protocol=p,"
        " stored_config=b['config'], use_cache=False)\n"
        "print(json.dumps(new['metrics']))\n"
    )
    env = {**os.environ, "OPENBLAS_CORETYPE": "Prescott", "ATEN_CPU_CAPABILITY": "default",
           "ONEDNN_MAX_CPU_ISA": "SSE41", "OMP_NUM_THREADS": "1", "CXRBENCH_SHARED_DATA": str(SHARED_DATA)}
    out = subprocess.run([sys.executable, "-c", script, str(entry)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    new, stored = json.loads(out.splitlines()[-1]), json.loads(entry.read_text())["augmentation"]["metrics"]
    assert json.loads(entry.read_text())["protocol"]["name"] == "cxr128"
    for key, m in stored.items():
        assert (new[key]["value"], new[key]["ci"]) == (m["value"], m["ci"]), key


def test_verify_without_the_real_images_says_so_and_checks_the_rest(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "none"))
    e = json.loads(world["entry"].read_text())
    e["augmentation"]["real"]["path"] = str(tmp_path / "moved")
    e["augmentation"]["metrics"]["aug_gain_auroc"]["value"] += 1e-3  # not rechecked, so not noticed
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(e))
    assert _verify(moved, world) == 0
    out = capsys.readouterr().out
    assert sum("augmentation block not rechecked" in line for line in out.splitlines()) == 1
    e["result"]["metrics"]["fid_random-conv"]["value"] *= 1.001  # the rest is still checked
    moved.write_text(json.dumps(e))
    assert _verify(moved, world) == 1


def test_augmentation_is_automatic_only_for_conditional_samples_under_cxr64(world, tmp_path, monkeypatch):
    from cxrbench.publish import augment_block

    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(world["root"]))  # default_real() -> root/nih1000_64px
    shutil.copytree(world["real"], world["root"] / "nih1000_64px", dirs_exist_ok=True)
    cond = open_source(world["samples"], role="samples")
    plain = open_source(world["real"], role="samples")
    plain.labels = None
    assert augment_block.plan(cond, task=None, real=None, protocol="cxr64")[0] == world["root"] / "nih1000_64px"
    assert augment_block.plan(cond, task=None, real=None, protocol="default")[0] is None
    assert augment_block.plan(plain, task=None, real=None, protocol="cxr64")[0] is None
    assert augment_block.plan(cond, task=None, real=None, protocol="cxr64", enabled=False)[0] is None
    real, _, note = augment_block.plan(cond, task=None, real=str(tmp_path / "none"), protocol="cxr64")
    assert real is None and "not computed" in note and "--augment-real" in note


def test_augment_on_unconditional_samples_is_one_line_error(world, tmp_path, capsys):
    bare = shutil.copytree(world["samples"], tmp_path / "bare")
    (bare / "manifest.csv").unlink()
    rc = _submit(world, "--augment", TASK, "--augment-real", str(world["real"]), samples=bare, out="bare-entries")
    err = capsys.readouterr().err
    assert rc == 2 and "conditional models" in err and "Traceback" not in err
    assert not (world["root"] / "bare-entries").exists()


def test_tampered_block_shape_is_refused_on_load(world, tmp_path):
    from cxrbench.errors import DataError
    from cxrbench.publish.entry import load_entry

    e = json.loads(world["entry"].read_text())
    del e["augmentation"]["metrics"]["aug_gain_auroc"]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(e))
    with pytest.raises(DataError, match="augmentation: metrics must be exactly"):
        load_entry(p)


# --- intervals ----------------------------------------------------------------------------------------------


def test_interval_covers_the_training_draw_variance_that_test_resampling_misses():
    """Simulated coverage: a seed's statistic = true value + its training draw's offset (sd 0.04, as a seed's
    gain on the NIH Effusion pool) + mean per-image noise. Resampling only test images ignores the draws
    and misses the true value often; resampling seeds too covers it near the nominal rate."""
    from cxrbench.metrics.bootstrap import bootstrap_ci
    from cxrbench.protocols.augmentation.stats import seed_and_test_ci

    rng = np.random.default_rng(0)
    n_test, n_seeds, sims = 80, 5, 120
    hit_both = hit_test = 0
    for r in range(sims):
        offsets = rng.normal(0, 0.04, n_seeds)
        per_image = rng.normal(0, 0.1, (n_seeds, n_test))  # sd of a seed's mean: 0.011

        def stat(idx, k):
            return offsets[k] + per_image[k, idx].mean()

        lo, hi = seed_and_test_ci(stat, n_test, n_seeds, n_boot=200, seed=r)
        hit_both += lo <= 0 <= hi
        lo, hi = bootstrap_ci(lambda idx: np.mean([stat(idx, k) for k in range(n_seeds)]), n_test, n_boot=200, seed=r)
        hit_test += lo <= 0 <= hi
    assert hit_both / sims >= 0.8  # a few points under 0.95: a bootstrap over 5 seeds underestimates their spread
    assert hit_test / sims < 0.6


@pytest.mark.skipif(not NIH.is_dir(), reason="needs ../shared/data")
def test_copies_of_real_training_images_show_no_gain_on_nih(tmp_path):
    """Planted check on the real task: 'synthetic' images that are copies of cxr64-train images (true labels)."""
    from cxrbench.data.labels import LABELS
    from cxrbench.protocols.augmentation.run import augment

    t = pd.read_csv(NIH / "labels.csv")
    t = t[np.array(image_splits(t)) == "train"].sample(200, random_state=0)
    (tmp_path / "copies").mkdir()
    for k, p in enumerate(t["path"]):
        shutil.copy(NIH / p, tmp_path / "copies" / f"{k:05d}.png")
    t.assign(path=[f"{k:05d}.png" for k in range(len(t))])[["path", *LABELS]].to_csv(
        tmp_path / "copies" / "manifest.csv", index=False)
    cfg = AugmentConfig(task=TASK, extractor="cxr64", n_real=50, n_test=160, seeds=5, progress=False,
                        cache_dir=str(tmp_path / "cache"), num_workers=0)
    out = augment(str(NIH), str(tmp_path / "copies"), config=cfg)
    gain = out.metrics["aug_gain_auroc"]
    assert gain.ci[0] <= 0 <= gain.ci[1], gain
    assert out.details["splits"] == {"test": CXR64_TEST_SPLIT, "train": CXR64_TRAIN_SPLIT}
