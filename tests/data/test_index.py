"""The persistent folder hash index: reads only new or changed files, survives damage, never lies."""

import os

import pytest

from cxrbench.data import index as folder_index
from cxrbench.data.imageset import open_folder
from cxrbench.data.io import sha256_file
from cxrbench.data.synthetic import synthetic_cxr

from ..conftest import write_pngs


@pytest.fixture
def folder(tmp_path):
    return write_pngs(tmp_path / "imgs", synthetic_cxr(6, 16, seed=3))


def _counting(monkeypatch):
    """Record which files are read for hashing."""
    from cxrbench.data import imageset as sources

    read = []
    orig = sources._hash_files

    def counted(paths, workers=8):
        read.extend(p.name for p in paths)
        return orig(paths, workers)

    monkeypatch.setattr(sources, "_hash_files", counted)
    return read


def test_second_open_reads_nothing_and_agrees(folder, tmp_path, monkeypatch):
    read = _counting(monkeypatch)
    a = open_folder(folder, cache_dir=tmp_path / "c")
    assert len(read) == 6
    read.clear()
    b = open_folder(folder, cache_dir=tmp_path / "c")
    assert read == [] and (a.ids, a.hashes) == (b.ids, b.hashes)
    assert b.hashes == open_folder(folder, index=False).hashes == sorted(sha256_file(folder / i) for i in b.ids)


def test_changed_file_with_same_size_is_hashed_again(folder, tmp_path, monkeypatch):
    open_folder(folder, cache_dir=tmp_path / "c")
    read = _counting(monkeypatch)
    p = folder / "img_0002.png"
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF  # same size, new content (a damaged CRC is fine: only hashing reads it here)
    st = os.stat(p)
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even the old mtime: ctime still moves
    src = open_folder(folder, cache_dir=tmp_path / "c")
    assert read == ["img_0002.png"]
    assert dict(zip(src.ids, src.hashes))["img_0002.png"] == sha256_file(p)


def test_new_and_removed_files(folder, tmp_path, monkeypatch):
    open_folder(folder, cache_dir=tmp_path / "c")
    read = _counting(monkeypatch)
    write_pngs(folder, synthetic_cxr(1, 16, seed=9), prefix="new")
    (folder / "img_0000.png").unlink()
    src = open_folder(folder, cache_dir=tmp_path / "c")
    assert read == ["new_0000.png"] and "img_0000.png" not in src.ids
    entries = folder_index._load(folder_index.index_path(folder, tmp_path / "c"), str(folder.resolve()))
    assert "img_0000.png" not in entries and "new_0000.png" in entries


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"schema": "cxrbench.index/1", "root": "/elsewhere"}',
                                    b"GARBAGE" * 100])
def test_corrupt_index_is_ignored_and_rebuilt(folder, tmp_path, monkeypatch, damage):
    ref = open_folder(folder, index=False)
    open_folder(folder, cache_dir=tmp_path / "c")
    path = folder_index.index_path(folder, tmp_path / "c")
    path.write_bytes(damage)
    read = _counting(monkeypatch)
    src = open_folder(folder, cache_dir=tmp_path / "c")
    assert len(read) == 6 and src.hashes == ref.hashes
    read.clear()
    open_folder(folder, cache_dir=tmp_path / "c")  # rebuilt: the next open reads nothing
    assert read == []


def test_entry_whose_stat_differs_is_not_trusted(folder, tmp_path, monkeypatch):
    """An entry is trusted only when size, mtime, ctime and inode all match."""
    import json

    open_folder(folder, cache_dir=tmp_path / "c")
    path = folder_index.index_path(folder, tmp_path / "c")
    doc = json.loads(path.read_bytes())
    doc["files"]["img_0001.png"][2] += 1  # ctime no longer matches
    path.write_text(json.dumps(doc))
    read = _counting(monkeypatch)
    open_folder(folder, cache_dir=tmp_path / "c")
    assert read == ["img_0001.png"]


def test_file_changed_during_its_scan_is_hashed_again(folder, tmp_path, monkeypatch):
    """A file whose mtime is not before the scan that hashed it could have changed unseen within one timestamp
    tick: the next open reads it again; once older than that scan it is trusted."""
    import json

    open_folder(folder, cache_dir=tmp_path / "c")
    path = folder_index.index_path(folder, tmp_path / "c")
    doc = json.loads(path.read_bytes())
    e = doc["files"]["img_0003.png"]
    e[5] = max(e[1], e[2])  # as if hashed in the same tick it was written
    path.write_text(json.dumps(doc))
    read = _counting(monkeypatch)
    open_folder(folder, cache_dir=tmp_path / "c")
    assert read == ["img_0003.png"]
    read.clear()
    open_folder(folder, cache_dir=tmp_path / "c")
    assert read == []


def test_folder_split_hashes_only_its_images(folder, tmp_path, monkeypatch):
    """labels.csv's split column: opening one split reads only that split's files, with the same result as
    selecting it from the whole set."""
    from cxrbench.data.imageset import select_split
    from cxrbench.data.sources import open_source

    names = sorted(p.name for p in folder.glob("*.png"))
    rows = [f"{n},{'test' if i % 3 == 0 else 'train'}" for i, n in enumerate(names)]
    (folder / "labels.csv").write_text("path,split\n" + "\n".join(rows) + "\n")
    read = _counting(monkeypatch)
    src = open_source(folder, split="test", cache_dir=tmp_path / "c")
    assert sorted(read) == sorted(src.ids) == names[::3] and src.split == "test"
    whole = select_split(open_folder(folder, index=False), "test")
    assert (src.ids, src.hashes, src.labels["split"].tolist()) == (whole.ids, whole.hashes, ["test"] * 2)
