"""The reconstruction block: ``submit --reconstructions DIR`` scores a model's reconstructions of held-out real
images (rrs_moco, paired by the manifest's ``source``), records their hashes and location, and ``verify``
re-hashes them and recomputes the score; the held-out images are found under ``$CXRBENCH_SHARED_DATA``.

Tiny: 8 synthetic 32-px "held-out" images stand in for the cxr128 held-out split (``heldout_images`` is
replaced), the seeded random MoCo model (the block's setting), 20 bootstrap replicates."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from baselines import moco
from cxrbench.cli import main
from cxrbench.data.imageset import open_folder
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import DataError
from cxrbench.publish import reconstruction_block as rb
from cxrbench.publish.entry import load_entry, validate_entry

from ..conftest import write_pngs

N, SIZE = 8, 32
CARD = """\
name = "Tiny VAE"
authors = ["A. Author"]
training_data = "synthetic_cxr(seed=2)"
resolution = 32
conditioning = "unconditional"
license = "MIT"
"""


def tiny_random_moco(mp):
    """The random MoCo model the block builds, at 32 px and width 8 (the default is 224 px, width 64)."""
    mp.setattr(moco.MoCoCXR, "Config", functools.partial(moco.Config, image_size=SIZE, width=8))


def write_reconstructions(folder: Path, images: torch.Tensor, sources: list[str]) -> Path:
    write_pngs(folder, images, prefix="rec")
    pd.DataFrame({"path": [f"rec_{i:04d}.png" for i in range(len(images))], "source": sources,
                  "seed": 0}).to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("recblock")
    repo = root / "repo"
    (repo / ".git").mkdir(parents=True)
    shared = root / "shared"
    real = synthetic_cxr(N, SIZE, seed=1)
    write_pngs(shared / rb.FOLDER / "images", real)
    ids = [f"images/img_{i:04d}.png" for i in range(N)]
    pd.DataFrame({"path": ids, "patient_id": range(N)}).to_csv(shared / rb.FOLDER / "labels.csv", index=False)
    g = torch.Generator().manual_seed(0)
    close = (real * 0.97 + 0.02 + 0.01 * torch.randn(real.shape, generator=g)).clamp(0, 1)
    samples = write_pngs(repo / "leaderboard" / "samples" / "tiny", synthetic_cxr(16, SIZE, seed=2))
    (repo / "model.toml").write_text(CARD)
    return {"repo": repo, "shared": shared, "ids": ids, "real": real, "close": close, "samples": samples}


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(world["shared"]))
    monkeypatch.setattr(rb, "heldout_images", lambda root: open_folder(root, role="reference", index=False))
    monkeypatch.chdir(world["repo"])
    tiny_random_moco(monkeypatch)
    return world


def submit(w, rec: Path, entries: Path, *extra) -> int:
    return main(["submit", "--samples", str(w["samples"]), "--card", str(w["repo"] / "model.toml"),
                 "--reference", str(w["shared"] / rb.FOLDER), "--extractors", "random-conv", "--metrics", "fid",
                 "--weights", "random", "--n-bootstrap", "20", "--entries", str(entries), "--no-cache", "--quiet",
                 "--reconstructions", str(rec), *extra])


@pytest.fixture(scope="module")
def entry_path(world, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CXRBENCH_SHARED_DATA", str(world["shared"]))
    mp.setattr(rb, "heldout_images", lambda root: open_folder(root, role="reference", index=False))
    mp.chdir(world["repo"])
    tiny_random_moco(mp)
    try:
        rec = write_reconstructions(world["repo"] / "leaderboard" / "samples" / "tiny-reconstructions",
                                    world["close"], world["ids"])
        assert submit(world, rec, world["repo"] / "leaderboard" / "entries") == 0
    finally:
        mp.undo()
    return world["repo"] / "leaderboard" / "entries" / "tiny-vae.json"


def test_block_holds_score_level_hashes_and_location(entry_path, world):
    e = load_entry(entry_path)
    b = e[rb.KEY]
    m = b["metrics"]["rrs_moco"]
    assert b["metric"] == "rrs_moco" and m["mode"] == "paired" and m["n_gen"] == N and m["n_ref"] == N
    assert m["ci"][0] <= m["value"] <= m["ci"][1] and m["real_vs_real"] > 0
    # each reconstruction is a mild copy of its own source: well below another held-out image's distance
    assert m["value"] < 0.5 * m["real_vs_real"]
    assert b["samples"]["location"] == "../samples/tiny-reconstructions"
    assert [f["path"] for f in b["samples"]["files"]] == [f"rec_{i:04d}.png" for i in range(N)]
    assert [f["path"] for f in b["samples"]["side_files"]] == ["manifest.csv"]
    assert b["real"]["split"] == "cxr128-heldout" and b["real"]["n"] == N
    # random MoCo weights: the block says so and is not comparable
    assert b["weights"] == {"moco": "random:0"} and b["comparable"] is False and "random" in b["note"]


def test_paired_sources_matter(env, tmp_path, entry_path):
    """The same images named as reconstructions of other sources score worse (pairing is by `source`)."""
    w = env
    shuffled = w["ids"][1:] + w["ids"][:1]
    rec = write_reconstructions(w["repo"] / "leaderboard" / "samples" / "shuffled", w["close"], shuffled)
    b = rb.compute(rec, w["repo"] / "leaderboard" / "entries", n_bootstrap=0)
    assert b["metrics"]["rrs_moco"]["value"] > load_entry(entry_path)[rb.KEY]["metrics"]["rrs_moco"]["value"]


def test_verify_recomputes_and_catches_tampering(env, entry_path, capsys):
    assert main(["verify", str(entry_path), "--quiet"]) == 0
    assert "reconstructions match by sha256; rrs_moco recomputed" in capsys.readouterr().out
    # an edited score
    e = json.loads(entry_path.read_text())
    e[rb.KEY]["metrics"]["rrs_moco"]["value"] *= 1.5
    edited = entry_path.with_name("edited.json")
    edited.write_text(json.dumps(e))
    assert main(["verify", str(edited), "--quiet"]) == 1
    assert "reconstruction.rrs_moco.value" in capsys.readouterr().out
    edited.unlink()


def test_verify_names_a_changed_reconstruction(env, entry_path, capsys):
    folder = entry_path.parent / json.loads(entry_path.read_text())[rb.KEY]["samples"]["location"]
    backup = folder.with_name("backup")
    shutil.copytree(folder, backup)
    try:
        write_pngs(folder, env["real"][:1], prefix="rec")  # rec_0000.png replaced by its source itself
        assert main(["verify", str(entry_path), "--quiet"]) == 1
        assert "file rec_0000.png" in capsys.readouterr().out
    finally:
        shutil.rmtree(folder)
        backup.rename(folder)


def test_verify_without_the_real_images_is_one_note(env, entry_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "nowhere"))
    assert main(["verify", str(entry_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "rrs_moco not recomputed: held-out real images" in out and "CXRBENCH_SHARED_DATA" in out


def test_untrusted_block_is_schema_checked(entry_path):
    e = json.loads(entry_path.read_text())
    bad = copy.deepcopy(e)
    bad[rb.KEY]["samples"]["files"][0]["path"] = "../../etc/passwd"
    with pytest.raises(DataError, match="inside its folder"):
        validate_entry(bad)
    bad = copy.deepcopy(e)
    del bad[rb.KEY]["note"]
    with pytest.raises(DataError, match="must hold exactly"):
        validate_entry(bad)
    bad = copy.deepcopy(e)
    bad[rb.KEY]["samples"]["location"] = "../../../../../../tmp"
    with pytest.raises(DataError, match="outside"):
        rb.folder_of(bad[rb.KEY], entry_path)


def test_submit_refuses_a_folder_without_sources(env, tmp_path, capsys):
    plain = write_pngs(tmp_path / "plain", env["close"])
    assert submit(env, plain, tmp_path / "entries") == 2
    err = capsys.readouterr().err
    assert "no `source` column" in err and "fid" not in err.lower()  # refused before evaluating
    assert not (tmp_path / "entries" / "tiny-vae.json").exists()


def test_submit_without_the_held_out_images_is_one_line(env, entry_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "nowhere"))
    folder = entry_path.parent / json.loads(entry_path.read_text())[rb.KEY]["samples"]["location"]
    assert submit(env, folder, tmp_path / "entries") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CXRBENCH_SHARED_DATA" in err[0]


@pytest.mark.skipif(not (Path(os.environ.get("CXRBENCH_SHARED_DATA", "../shared/data")) / rb.FOLDER).is_dir(),
                    reason="needs ../shared/data/nih_extra_256px")
def test_heldout_images_are_the_shipped_heldout_split():
    from cxrbench.protocols.cxr128 import load_features

    src = rb.heldout_images(Path(os.environ.get("CXRBENCH_SHARED_DATA", "../shared/data")) / rb.FOLDER)
    assert sorted(src.hashes) == sorted(load_features("heldout").hashes)
