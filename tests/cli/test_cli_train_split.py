"""``cxrbench train --split``: only the rows of labels.csv's ``split`` column with that value are trained on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.commands import train as train_cmd
from cxrbench.data.labels import LABELS
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError
from cxrbench.registry import GENERATORS

from .test_cli_train_sample import FS_TOML, call


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    # train rows are all Edema, test rows all Effusion: the label bank shows which rows were read
    root = tmp_path_factory.mktemp("split")
    rows = []
    for i, im in enumerate(synthetic_cxr(10, 16, seed=0)[:, 0].numpy()):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(root / f"{i}.png")
        train = i < 6
        rows.append({"path": f"{i}.png", "split": "train" if train else "test", "Edema": int(train),
                     "Effusion": int(not train)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_split_trains_on_its_rows_only_and_is_recorded(tmp_path, split_folder):
    cfg = tmp_path / "fs.toml"
    cfg.write_text(FS_TOML)
    out = tmp_path / "run"
    call(train_cmd, ["fs-gmvae", "--data", split_folder, "--split", "train", "--image-size", 16, "--out", out,
                     "--config", cfg, "--steps", 1, "--quiet"])
    info = json.loads((out / "train_info.json").read_text())
    assert info["split"] == "train" and info["n_images"] == 6
    bank = GENERATORS.get("fs-gmvae").from_pretrained(out).label_bank
    assert (bank[:, LABELS.index("Edema")] == 1).all() and (bank[:, LABELS.index("Effusion")] == 0).all()

    full = tmp_path / "all"
    call(train_cmd, ["fs-gmvae", "--data", split_folder, "--image-size", 16, "--out", full, "--config", cfg,
                     "--steps", 1, "--quiet"])
    info = json.loads((full / "train_info.json").read_text())
    assert info["split"] == "all" and info["n_images"] == 10


def test_unknown_split_names_the_values_present_and_writes_nothing(tmp_path, split_folder):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match=r"split 'valid'.*\['test', 'train'\]"):
        call(train_cmd, ["vae", "--data", split_folder, "--split", "valid", "--image-size", 32, "--out", out,
                         "--steps", 1, "--quiet"])
    assert not out.exists()


def test_split_column_of_a_labels_csv_given_with_labels(tmp_path, split_folder):
    # --labels replaces the folder's table; its split column is the one --split reads
    table = pd.read_csv(split_folder / "labels.csv")
    table["split"] = ["a" if i % 2 else "b" for i in range(len(table))]
    table.to_csv(tmp_path / "other.csv", index=False)
    out = tmp_path / "run"
    call(train_cmd, ["vae", "--data", split_folder, "--labels", tmp_path / "other.csv", "--split", "a",
                     "--image-size", 32, "--out", out, "--steps", 1, "--quiet", "--batch-size", 2])
    assert json.loads((out / "train_info.json").read_text())["n_images"] == 5


def _protocol_patient_folder(root):
    """Synthetic images labelled with patient ids, the first of them a patient of the cxr64 reference set."""
    from cxrbench.protocols.cxr64 import load_features

    ref_patient = load_features("reference").patient_ids[0]
    rows = []
    for i, im in enumerate(synthetic_cxr(6, 16, seed=1)[:, 0].numpy()):
        Image.fromarray(np.round(im * 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "patient_id": ref_patient if i == 0 else f"9999{i}",
                     "split": "train" if i < 4 else "test"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_training_on_the_protocols_reference_patients_is_refused_without_a_split(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    data = _protocol_patient_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["vae", "--data", data, "--image-size", 32, "--steps", 1, "--quiet", "--batch-size", 2]
    with pytest.raises(UsageError, match=r"1 of the 6 images .*patients in the cxr64 protocol's reference.*"
                                         r"--split cxr64-disjoint.*--split all"):
        call(train_cmd, [*args, "--out", out])
    assert not out.exists()
    # --split all says it is meant; a split of the folder's own trains with a warning naming the fix
    call(train_cmd, [*args, "--out", tmp_path / "all", "--split", "all"])
    assert json.loads((tmp_path / "all" / "train_info.json").read_text())["n_images"] == 6
    capsys.readouterr()
    call(train_cmd, [*args, "--out", tmp_path / "own", "--split", "train"])
    err = capsys.readouterr().err
    assert "warning: 1 of the 4 images of split 'train'" in err and "--split cxr64-disjoint" in err


def test_the_nih_thumbnails_without_a_split_name_the_cxr64_train_split(tmp_path):
    from ..conftest import shared_folder

    nih = shared_folder("nih1000_64px")
    with pytest.raises(UsageError, match=r"of the 1000 images .* are images of the cxr64 protocol's reference.*"
                                         r"--split cxr64-train"):
        call(train_cmd, ["ddpm", "--data", nih, "--image-size", 32, "--steps", 1, "--quiet", "--out",
                         tmp_path / "run"])
    assert not (tmp_path / "run").exists()
