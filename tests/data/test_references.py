"""Named references: NIH's and CheXpert's official splits, the patient-hash splits, hashing only the split."""

import pytest

from cxrbench.data import index as folder_index
from cxrbench.data.references import open_reference
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError

from ..conftest import write_pngs

# real NIH image indices (Data_Entry_2017): patients 1, 2 and 3
NIH_NAMES = ["00000001_000.png", "00000001_001.png", "00000001_002.png", "00000002_000.png", "00000003_000.png",
             "00000003_001.png", "00000003_002.png", "00000003_003.png"]


def _fake_nih(root, names=NIH_NAMES, subfolders=("images_001/images", "images_002/images")):
    """NIH's layout: PNGs spread over images_00X/images/, the split lists at the top."""
    imgs = synthetic_cxr(len(names), 16, seed=5)
    for i, n in enumerate(names):
        sub = root / subfolders[i % len(subfolders)]
        write_pngs(sub, imgs[i : i + 1], prefix=f"t{i}")
        (sub / f"t{i}_0000.png").rename(sub / n)
    return root


@pytest.fixture
def nih(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path / "data"))
    root = _fake_nih(tmp_path / "data" / "nih-cxr14")
    test = ["00000001_001.png", "00000003_000.png", "00000003_002.png"]
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for n in NIH_NAMES if n not in test) + "\n")
    return root, test


def _names(src):
    return sorted(p.rsplit("/", 1)[-1] for p in src.ids)


def test_nih_official_split_is_exactly_the_listed_files(nih):
    root, test = nih
    src = open_reference("nih-cxr14", split="test")
    assert _names(src) == sorted(test) and src.split == "test"
    # patient 3 sits in both official lists (NIH's split is not patient-hash): the lists, not a rule, decide
    rest = open_reference("nih-cxr14", split="train_val")
    assert _names(rest) == sorted(set(NIH_NAMES) - set(test))
    # labels follow the files: 00000001_001 is Cardiomegaly|Emphysema
    row = src.labels.set_index("path").loc["images_002/images/00000001_001.png"]
    assert row["Cardiomegaly"] == 1.0 and row["Emphysema"] == 1.0


def test_nih_hash_splits_stay_available_and_partition_patient_wise(nih):
    parts = [open_reference("nih-cxr14", split=s) for s in ("hash-train", "hash-valid", "hash-test")
             if _has_rows(s)]
    ids = [i for p in parts for i in p.ids]
    assert sorted(ids) == sorted(open_reference("nih-cxr14").ids)  # a partition of the whole set
    patients = [set(p.patient_ids) for p in parts]
    assert all(not (a & b) for i, a in enumerate(patients) for b in patients[i + 1 :])


def _has_rows(split):
    try:
        open_reference("nih-cxr14", split=split)
        return True
    except UsageError:
        return False


def test_nih_official_split_without_the_list_says_what_to_do(nih):
    root, _ = nih
    (root / "test_list.txt").unlink()
    with pytest.raises(UsageError, match="test_list.txt.*hash-test"):
        open_reference("nih-cxr14", split="test")
    with pytest.raises(UsageError, match="train_val and test"):
        open_reference("nih-cxr14", split="train")


def test_listed_images_missing_from_the_folder_are_noted(nih):
    root, test = nih
    (root / "test_list.txt").write_text("\n".join(test + ["00030805_000.png"]))
    src = open_reference("nih-cxr14", split="test")
    assert _names(src) == sorted(test)
    assert any("00030805_000.png" in n and "not the full official list" in n for n in src.notes)


def test_only_the_selected_split_is_hashed(nih, tmp_path):
    root, test = nih
    open_reference("nih-cxr14", split="test", cache_dir=tmp_path / "c")
    entries = folder_index._load(folder_index.index_path(root, tmp_path / "c"), str(root.resolve()))
    assert sorted(p.rsplit("/", 1)[-1] for p in entries) == sorted(test)


def test_chexpert_valid_csv_is_the_valid_split(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path / "data"))
    base = tmp_path / "data" / "chexpert" / "CheXpert-v1.0-small"
    rows = {"train": ["train/patient00001/study1/view1_frontal.jpg", "train/patient00002/study1/view1_frontal.jpg",
                      "train/patient00002/study2/view1_frontal.jpg"],
            "valid": ["valid/patient64541/study1/view1_frontal.jpg", "valid/patient64542/study1/view1_frontal.jpg"]}
    imgs = synthetic_cxr(5, 16, seed=2)
    k = 0
    for split, paths in rows.items():
        lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Edema,Pleural Effusion"]
        for p in paths:
            write_pngs((base / p).parent, imgs[k : k + 1], prefix="x")
            ((base / p).parent / "x_0000.png").rename((base / p).with_suffix(".png"))
            lines.append(f"CheXpert-v1.0-small/{p[:-4]}.png,Female,60,Frontal,AP,,1.0,0.0")
            k += 1
        (base / f"{split}.csv").write_text("\n".join(lines) + "\n")
    valid = open_reference("chexpert", split="valid")
    assert sorted(valid.ids) == sorted(f"CheXpert-v1.0-small/{p[:-4]}.png" for p in rows["valid"])
    assert sorted(set(valid.patient_ids)) == ["patient64541", "patient64542"]
    assert len(open_reference("chexpert", split="train")) == 3
    assert valid.labels["Edema"].tolist() == [1.0, 1.0]


def test_a_named_reference_is_a_registered_adapter(tmp_path, monkeypatch):
    """An outside dataset plugs in by registering a NamedReference: no if-chain to edit."""
    import pandas as pd

    from cxrbench.data.references import NamedReference
    from cxrbench.data.sources import open_source
    from cxrbench.data.synthetic import synthetic_cxr
    from cxrbench.registry import REFERENCES, RegistryError

    from ..conftest import write_pngs

    class Tiny(NamedReference):
        name = "tiny-test-set"
        description = "a tiny test set"
        official_splits = {}

        def table(self, folder, images, others, split):
            t = pd.DataFrame({"path": sorted(images)})
            t["patient_id"] = [f"p{i // 2}" for i in range(len(t))]
            t["Effusion"] = [float(i % 2) for i in range(len(t))]
            t["split"] = float("nan")
            return t, set(), []

    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path))
    write_pngs(tmp_path / "tiny-test-set", synthetic_cxr(12, 16, seed=0))
    REFERENCES.add("tiny-test-set", Tiny)
    try:
        src = open_source("tiny-test-set", role="reference", split="hash-train", index=False)
        assert 0 < len(src) < 12 and src.labels["Effusion"].notna().all()  # its table, then the common splits
        with pytest.raises(RegistryError, match="not a subclass"):
            REFERENCES.add("not-an-adapter", dict)
    finally:
        REFERENCES._entries.pop("tiny-test-set", None)
