"""The augmentation block under the ``cxr128`` protocol: the Edema vs No Finding task of Malik & Humair
("Evaluating the feasibility of using Generative Models to generate Chest X-Ray Data", 2023) on the 256 px
NIH images' cxr128 splits, with a samples folder of its own (requested per class) that the entry records by
hash and ``verify`` re-hashes.

Entry tests use a planted task on tiny synthetic images in the NIH layout (``Edema`` = shifted images) whose
labels.csv ``split`` column stands in for the cxr128 splits (the real ones are decided by shipped hashes), the
shipped cxr128 network and 3 seeds, so they take seconds; the real-data test skips without ../shared/data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.cli import main
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError
from cxrbench.publish import augment_block

from ..conftest import SHARED_DATA, write_pngs

TASK = "Edema vs No Finding"
NIH256 = SHARED_DATA / "nih_extra_256px"

CARD = """\
name = "Tiny cDDPM"
authors = ["A. Author"]
training_data = "synthetic_cxr"
resolution = 32
conditioning = "labels"
license = "MIT"
"""


def _images(y: np.ndarray, seed: int) -> torch.Tensor:
    """Class 1 (Edema) shifted from class 0 (No Finding): a task the probe can learn."""
    x0 = synthetic_cxr(int((y == 0).sum()), 32, 0.0, seed=seed)
    x1 = synthetic_cxr(int((y == 1).sum()), 32, 0.5, seed=seed + 1)
    out = torch.empty(len(y), *x0.shape[1:])
    out[torch.from_numpy(y == 0)], out[torch.from_numpy(y == 1)] = x0, x1
    return out


def _real(folder: Path) -> Path:
    """NIH layout: 'train' holds 12 Edema / 30 No Finding images, 'test' 20 / 20; one patient per image."""
    y = np.r_[np.ones(12), np.zeros(30), np.ones(20), np.zeros(20)].astype(int)
    split = ["train"] * 42 + ["test"] * 40
    write_pngs(folder, _images(y, 10))
    pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(len(y))], "Edema": y, "No Finding": 1 - y,
                  "patient_id": [f"p{i}" for i in range(len(y))], "view_position": ["PA"] * len(y),
                  "split": split}).to_csv(folder / "labels.csv", index=False)
    return folder


def _samples(folder: Path, n_edema: int, n_nof: int, seed: int) -> Path:
    """What `cxrbench sample --labels-csv` writes: images plus manifest.csv with every label column."""
    from cxrbench.data.labels import LABELS

    y = np.r_[np.ones(n_edema), np.zeros(n_nof)].astype(int)
    write_pngs(folder, _images(y, seed))
    table = {"path": [f"img_{i:04d}.png" for i in range(len(y))], **{lab: np.zeros(len(y), int) for lab in LABELS}}
    table["Edema"], table["No Finding"] = y, 1 - y
    pd.DataFrame(table).to_csv(folder / "manifest.csv", index=False)
    return folder


def _small(mp):
    """The cxr128 setting on the synthetic NIH layout: its split column for the cxr128 splits, 3 seeds."""
    mp.setitem(augment_block.SETTING_CXR128, "train_split", "train")
    mp.setitem(augment_block.SETTING_CXR128, "test_split", "test")
    mp.setitem(augment_block.SETTING_CXR128, "seeds", 3)


def _submit(w, *extra, out="entries"):
    return main(["submit", "--samples", str(w["samples"]), "--card", str(w["root"] / "model.toml"), "--protocol",
                 "cxr128", "--n-bootstrap", "50", "--num-workers", "0", "--cache-dir", w["cache"], "--quiet",
                 "--entries", str(w["root"] / out), "--augment-real", str(w["real"]), *extra])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug128")
    w = {"root": root, "real": _real(root / "real"), "samples": _samples(root / "samples", 4, 36, 20),
         "aug": _samples(root / "samples-augment", 16, 16, 30), "cache": str(root / "cache")}
    (root / "model.toml").write_text(CARD)
    with pytest.MonkeyPatch.context() as mp:
        _small(mp)
        # asks for 20 per class: the real training split holds 12 Edema, so N is capped at 12
        assert _submit(w, "--augment-samples", str(w["aug"]), "--augment-n-per-class", "20") == 0
    w["entry"] = root / "entries" / "tiny-cddpm.json"
    return w


def _verify(entry, *extra):
    return main(["verify", str(entry), "--num-workers", "0", "--quiet", *extra])


def test_a_cxr128_entry_gets_malik_and_humairs_task_on_the_cxr128_splits(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path))
    assert augment_block.default_real("cxr128") == tmp_path / "nih_extra_256px"
    assert augment_block.default_real("cxr64") == tmp_path / "nih1000_64px"
    cfg = augment_block.config_for(TASK, setting=augment_block.setting_for("cxr128")[0])
    assert (cfg.task, cfg.extractor, cfg.classifier) == (TASK, "cxr128", "linear")
    assert (cfg.train_split, cfg.test_split) == ("cxr128-train", "cxr128-heldout,cxr128-reference")
    assert cfg.n_real is None and cfg.n_test is None  # decided by the data at submit, then stored
    # the retired protocol (and one's own reference) keep the setting their entries were made with
    assert augment_block.setting_for("cxr64")[:2] == (augment_block.SETTING, "Effusion vs No Finding")
    assert augment_block.setting_for("default")[0]["extractor"] == "cxr64"


def test_entry_holds_the_cxr128_block_with_its_own_samples_and_n_capped_by_the_data(world):
    from cxrbench.protocols.augmentation.config import OUTPUTS
    from cxrbench.publish.entry import load_entry

    e = load_entry(world["entry"])
    b = e["augmentation"]
    assert e["protocol"]["name"] == "cxr128" and b["task"] == TASK and set(b["metrics"]) == set(OUTPUTS)
    assert b["config"]["extractor"] == "cxr128" and b["weights"]["cxr128"] == e["weights"]["cxr128"]
    # N = 12 per class (what 'train' holds), not the 20 asked, and the block says so
    assert b["config"]["n_real"] == 24 and b["details"]["training_sizes"]["augmented"] == {"n_real": 24,
                                                                                            "n_synthetic": 24}
    assert b["details"]["training_sizes"]["mixed"] == {"n_real": 12, "n_synthetic": 12}
    assert any("N capped at 12 real images per class (asked 20)" in n for n in b["notes"])
    assert b["config"]["n_test"] == 40 and b["details"]["test_class_counts"] == {"Edema": 20, "No Finding": 20}
    # the block's synthetic images are its own folder (the entry's samples hold only 4 Edema), by hash
    assert b["details"]["synthetic_usable"] == {"Edema": 16, "No Finding": 16}
    assert b["samples"]["location"] == "../samples-augment" and b["samples"]["n"] == 32
    assert [f["path"] for f in b["samples"]["side_files"]] == ["manifest.csv"]
    for m in b["metrics"].values():
        assert m["ci"][0] <= m["value"] <= m["ci"][1] and len(m["per_seed"]) == 3
    assert b["metrics"]["aug_real_auroc"]["value"] > 0.8  # the planted task is learnt: the numbers mean something


def test_verify_recomputes_the_block_and_detects_a_tampered_augmentation_sample(world, tmp_path, capsys,
                                                                                   monkeypatch):
    _small(monkeypatch)
    # a copy of the whole tree, so the entry's relative locations hold and the fixture's files stay intact
    tree = shutil.copytree(world["root"], tmp_path / "tree", ignore=shutil.ignore_patterns("cache"))
    entry = tree / "entries" / "tiny-cddpm.json"
    assert _verify(entry, "--augment-real", str(world["real"])) == 0
    out = capsys.readouterr().out
    assert "not rechecked" not in out and "(and the augmentation block's 32) and weights match" in out
    # one synthetic image of the block replaced by another: the entry's own samples are untouched
    aug = tree / "samples-augment"
    shutil.copy(aug / "img_0000.png", aug / "img_0031.png")
    assert _verify(entry, "--augment-real", str(world["real"])) == 1
    out = capsys.readouterr().out
    assert "augmentation samples file img_0031.png" in out and "content changed" in out
    # the requested labels count too; and the hashes are checked without the real images
    shutil.copy(world["aug"] / "img_0031.png", aug / "img_0031.png")
    (aug / "manifest.csv").write_text((aug / "manifest.csv").read_text().replace("\n", "\r\n"))
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "none"))
    assert _verify(entry, "--augment-real", str(tmp_path / "none")) == 1
    assert "augmentation samples file manifest.csv" in capsys.readouterr().out


def test_verify_without_the_real_images_says_so_in_one_line(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "none"))
    e = json.loads(world["entry"].read_text())
    e["augmentation"]["real"]["path"] = str(tmp_path / "moved")
    moved = world["root"] / "entries-moved" / "tiny-cddpm.json"  # beside the samples, as the entry records them
    moved.parent.mkdir(exist_ok=True)
    moved.write_text(json.dumps(e))
    assert _verify(moved) == 0
    out = capsys.readouterr().out
    assert sum("augmentation block not rechecked" in line for line in out.splitlines()) == 1


def test_the_block_refuses_samples_that_do_not_request_both_classes(world, tmp_path, capsys, monkeypatch):
    _small(monkeypatch)
    only = _samples(tmp_path / "only-edema", 10, 0, 40)  # both label columns, but No Finding never requested
    assert _submit(world, "--augment-samples", str(only), out="e1") == 2
    err = capsys.readouterr().err
    assert "requests 10 Edema and 0 No Finding" in err and "Traceback" not in err and "--labels-csv" in err
    bare = shutil.copytree(only, tmp_path / "bare")
    (bare / "manifest.csv").unlink()  # an unconditional model's samples
    assert _submit(world, "--augment-samples", str(bare), out="e2") == 2
    assert "conditional models" in capsys.readouterr().err
    assert not (world["root"] / "e1").exists() and not (world["root"] / "e2").exists()


def test_too_few_synthetic_images_per_class_is_a_one_line_error(world, tmp_path, capsys, monkeypatch):
    _small(monkeypatch)
    few = _samples(tmp_path / "few", 5, 30, 50)  # N = 12 per class needs 12 Edema samples
    assert _submit(world, "--augment-samples", str(few), out="e3") == 1
    err = capsys.readouterr().err
    assert "needs 12 synthetic images of each class" in err and "requests 5 Edema and 30 No Finding" in err
    assert "Traceback" not in err


def test_plan_without_labels_csv_names_the_cxr128_folder(world, tmp_path):
    from cxrbench.data.sources import open_source

    src = open_source(world["aug"], role="samples")
    with pytest.raises(UsageError, match="nih_extra_256px"):
        augment_block.plan(src, task=None, real=str(tmp_path), protocol="cxr128", separate=True)
    # under cxr128 the block is not automatic: the entry's samples follow the training labels
    assert augment_block.plan(src, task=None, real=str(world["real"]), protocol="cxr128")[0] is None


@pytest.mark.skipif(not (NIH256 / "labels.csv").is_file(), reason="needs ../shared/data/nih_extra_256px")
def test_nih_256_supplies_43_edema_per_class_to_train_and_136_test_images(tmp_path):
    """The largest N of the real data: cxr128-train holds 43 Edema (258 No Finding); cxr128-heldout +
    cxr128-reference hold 68 Edema (341 No Finding), so the balanced test set is 136 images."""
    from cxrbench.data.sources import open_source

    src = open_source(NIH256, role="real", cache_dir=str(tmp_path))
    cfg = augment_block.config_for(TASK, setting=augment_block.SETTING_CXR128)
    notes: list[str] = []
    syn = open_source(_samples(tmp_path / "syn", 50, 50, 60), role="samples")
    resolved = augment_block._resolve_sizes(cfg, src, syn, NIH256, 50, notes)
    assert (resolved.n_real, resolved.n_test) == (86, 136)
    assert notes == [(f"N capped at 43 real images per class (asked 50): cxr128-train of {NIH256} holds 43 Edema "
                      "and 258 No Finding images")]


RECIPE = """
[model]
name = "ddpm"
config = { image_size = 16 }
[data]
path = "data"
split = "cxr128-train"
[sample]
n = 12
[augment]
task = "Edema vs No Finding"
n_per_class = 43
seed = 2
[submit]
protocol = "cxr128"
[card]
name = "Tiny DDPM"
authors = ["test"]
training_data = "synthetic"
resolution = 16
conditioning = "labels"
license = "MIT"
"""


def test_a_recipes_augment_section_samples_each_class_and_hands_the_folder_to_submit(tmp_path, capsys):
    import shlex

    from cxrbench.commands.reproduce import augment_requests
    from cxrbench.commands.sample import read_label_csv
    from cxrbench.data.labels import LABELS

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    args = ["reproduce", str(recipe), "--runs", "runs", "--samples-dir", "samples", "--entries", "entries", "--dry-run"]
    assert main(args) == 0
    steps = [shlex.split(line)[1:] for line in capsys.readouterr().err.splitlines() if line.startswith("cxrbench ")]
    assert [s[0] for s in steps] == ["train", "sample", "sample", "submit"]
    aug = steps[2]
    assert aug[aug.index("--labels-csv") + 1] == "runs/tiny.augment-requests.csv"
    assert (aug[aug.index("--out") + 1], aug[aug.index("--seed") + 1]) == ("samples/tiny-augment", "2")
    submit = steps[3]
    assert submit[submit.index("--augment") + 1] == "Edema vs No Finding"
    assert submit[submit.index("--augment-samples") + 1] == "samples/tiny-augment"
    assert submit[submit.index("--augment-n-per-class") + 1] == "43"
    # the requests file, read as `sample --labels-csv` reads it: 43 rows of each class, never both
    csv = tmp_path / "requests.csv"
    csv.write_bytes(augment_requests({"task": "Edema vs No Finding", "n_per_class": 43}))
    m = read_label_csv(csv)
    edema, nof = m[:, LABELS.index("Edema")], m[:, LABELS.index("No Finding")]
    assert len(m) == 86 and edema.sum() == nof.sum() == 43 and not (edema * nof).any()
    # a bad section is one line before anything trains
    recipe.write_text(RECIPE.replace("n_per_class = 43", "n_per_class = 1"))
    assert main(args) == 2
    assert "[augment] needs task" in capsys.readouterr().err
