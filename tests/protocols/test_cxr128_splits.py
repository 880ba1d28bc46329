"""The cxr128 protocol's patient-disjoint NIH splits."""

import numpy as np
import pandas as pd
import pytest

from cxrbench.protocols import cxr128_splits as splits

from ..conftest import shared_folder


def test_fixed_patients_keep_their_split_and_the_rest_meet_the_targets():
    rng = np.random.default_rng(1)
    sizes = rng.geometric(0.5, size=800)
    pids = np.repeat([str(i) for i in range(800)], sizes)
    t = pd.DataFrame({"patient_id": pids, "view_position": rng.choice(["AP", "PA"], len(pids)),
                      "No Finding": rng.integers(0, 2, len(pids))})
    forced = ["3", "10", "0042"]  # "0042" is patient 42 written with leading zeros, as NIH ids sometimes are
    s = np.array(splits.image_splits(t, other_patients=forced))
    assert set(s[np.isin(pids, ["3", "10", "42"])]) == {"train"}
    assert pd.Series(s).groupby(pids).nunique().max() == 1  # patient-disjoint
    share = pd.Series(s).value_counts(normalize=True)
    for name, target in splits.SPLITS.items():
        assert share[name] == pytest.approx(target, abs=0.03)


def test_nih_splits_are_disjoint_across_both_nih_folders_and_hold_the_protocol_counts():
    root = shared_folder("nih_extra_256px").parent
    t = splits.nih_splits(root)
    counts = t["cxr128_split"].value_counts()
    assert counts["heldout"] >= 300 and 580 <= counts["reference"] <= 620
    assert t.groupby("patient_id")["cxr128_split"].nunique().max() == 1
    small = pd.read_csv(root / "nih1000_64px" / "labels.csv")
    shared = t["patient_id"].isin(set(small["patient_id"]))
    assert shared.any() and (t.loc[shared, "cxr128_split"] == "train").all()
    for name in ("reference", "heldout"):  # balanced: each split holds every view x normal/abnormal kind
        part = t[t["cxr128_split"] == name]
        assert part.groupby(["view_position", "No Finding"]).size().min() >= 0.1 * len(part)


def test_selecting_a_split_by_name_gives_the_protocol_s_split(tmp_path):
    """`train --split cxr128-train` on nih_extra_256px trains on exactly the split the protocol's features were
    made without; `cxr128-reference` / `cxr128-heldout` are the shipped sets' images."""
    from cxrbench.data.imageset import open_folder

    root = shared_folder("nih_extra_256px")
    table = splits.nih_splits(root.parent)
    src = open_folder(root, role="train", index=False)
    for name in ("train", "reference", "heldout"):
        got = splits.select_cxr128_split(src, f"cxr128-{name}")
        want = set(table.loc[table["cxr128_split"] == name, "path"])
        assert set(got.ids) == want, name
    with pytest.raises(Exception, match="cxr128-train"):
        splits.select_cxr128_split(src, "cxr128-test")


def test_train_refuses_the_protocol_s_reference_without_a_split(tmp_path, capsys):
    from cxrbench.cli import main

    root = shared_folder("nih_extra_256px")
    rc = main(["train", "vae", "--data", str(root), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cxr128 protocol's reference or held-out set" in err and "--split cxr128-train" in err
