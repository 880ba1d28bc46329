"""``cxrbench reproduce``: a recipe runs train -> sample -> submit, and running it again gives the same row."""

from __future__ import annotations

import json

import pytest

from cxrbench.cli import main
from cxrbench.data.synthetic import synthetic_cxr

from ..conftest import write_pngs

RECIPE = """
[model]
name = "vae"
config = {{ image_size = 16, channels = [8, 16], z_dim = 8 }}
[data]
path = "{data}"
split = "train"
[train]
seed = 0
steps = 3
[sample]
n = 12
seed = 3
[card]
name = "Tiny VAE"
authors = ["test"]
training_data = "synthetic"
resolution = 16
conditioning = "unconditional"
license = "MIT"
"""


@pytest.fixture
def recipe(tmp_path):
    data = write_pngs(tmp_path / "data", synthetic_cxr(24, 16, seed=0))
    rows = sorted(p.name for p in data.glob("*.png"))
    (data / "labels.csv").write_text("path,split\n" + "".join(f"{p},{'train' if i < 16 else 'test'}\n"
                                                              for i, p in enumerate(rows)))
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE.format(data=data))
    return path


def _run(recipe, tmp_path, *extra):
    return main(["reproduce", str(recipe), "--runs", str(tmp_path / "runs"), "--samples-dir",
                 str(tmp_path / "samples"), "--entries", str(tmp_path / "entries"), "--quiet", *extra])


def test_recipe_trains_samples_and_submits_reproducibly(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    assert _run(recipe, tmp_path) == 0
    entry = json.loads((tmp_path / "entries" / "tiny-vae.json").read_text())
    info = json.loads((tmp_path / "runs" / "tiny" / "train_info.json").read_text())
    assert info["split"] == "train" and info["n_images"] == 16  # the recipe's split, not the whole folder
    assert entry["samples"]["n"] == 12 and entry["protocol"]["name"] == "cxr128"  # the default protocol
    state = json.loads((tmp_path / "runs" / "tiny" / "train_state.json").read_text())
    cost = entry["card"]["training"]  # the training cost reaches the card, from the run's own record
    assert cost["steps"] == 3 and cost["images_seen"] == 3 * min(state["config"]["batch_size"], 16)
    assert cost["parameters"] == state["parameters"] > 0
    # the entry records where its samples are: verify needs no other argument
    assert main(["verify", str(tmp_path / "entries" / "tiny-vae.json"), "--quiet"]) == 0
    # again: the step budget is spent, so the same weights sample the same images and give the same numbers
    assert _run(recipe, tmp_path, "--force") == 0
    again = json.loads((tmp_path / "entries" / "tiny-vae.json").read_text())
    assert again["samples"]["sha256"] == entry["samples"]["sha256"]
    assert again["result"]["metrics"]["fid_cxr128"]["value"] == entry["result"]["metrics"]["fid_cxr128"]["value"]


def test_bad_recipe_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nname = "vae"\n[data]\npath = "x"\n[card]\nname = "x"\n[train]\nsteps_total = 3\n')
    assert main(["reproduce", str(bad), "--dry-run"]) == 2
    assert "unknown keys ['steps_total']" in capsys.readouterr().err
    assert main(["reproduce", str(tmp_path / "missing.toml")]) == 2


def test_stages_train_first_and_their_folders_reach_later_configs(recipe, tmp_path, monkeypatch):
    # the white paper's chain: a first diffusevae run, then a fine-tune that starts from its weights ("{base}")
    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    # unconditional (conditions = []): the tiny data set has no label columns
    arch = "image_size = 16, conditions = [], vae_channels = [8, 16], vae_z_dim = 8, block_out_channels = [8, 16], " \
           "layers_per_block = 1, attention = false, norm_groups = 4, sample_steps = 2"
    text = recipe.read_text().replace('name = "vae"\nconfig = { image_size = 16, channels = [8, 16], z_dim = 8 }',
                                      f'name = "diffusevae"\nconfig = {{ {arch}, init_from = "{{base}}" }}')
    text = f'[[stage]]\nid = "base"\nname = "diffusevae"\nconfig = {{ {arch} }}\ntrain = {{ steps = 2 }}\n' + text
    recipe.write_text(text)
    assert _run(recipe, tmp_path, "--dry-run") == 0
    assert _run(recipe, tmp_path) == 0
    base = json.loads((tmp_path / "runs" / "tiny-base" / "train_state.json").read_text())
    final = json.loads((tmp_path / "runs" / "tiny" / "train_info.json").read_text())
    assert base["step"] == 2
    assert final["config"]["init_from"] == str(tmp_path / "runs" / "tiny-base")
    # a stage reference that names no stage is one line, before anything trains
    recipe.write_text(text.replace('init_from = "{base}"', 'init_from = "{nope}"'))
    assert _run(recipe, tmp_path, "--dry-run") == 2


def test_every_shipped_recipe_is_valid_with_a_valid_card():
    """A recipe fails before training, not at submit 15 minutes later, on a card the leaderboard refuses."""
    from pathlib import Path

    from cxrbench.commands.reproduce import load_recipe
    from cxrbench.publish.card import card_from_dict
    from cxrbench.registry import GENERATORS, REPRESENTATIONS
    from cxrbench.training import config_from_overrides

    root = Path(__file__).resolve().parents[2] / "leaderboard" / "recipes"
    gpu, cpu = sorted((root / "gpu").glob("*.toml")), sorted((root / "cxr128").glob("*.toml"))
    recipes = sorted(root.rglob("*.toml"))  # every shipped recipe, wherever it lies
    assert len(gpu) == 8 and len(cpu) == 8 and len(recipes) >= 16
    for path in recipes:
        recipe = load_recipe(path)
        card_from_dict(recipe["card"], str(path))
        # every row trains on the cxr128 protocol's training split (on a full NIH folder: without the
        # protocol's evaluation patients) and names it for submit, whatever reproduce's default is
        assert (recipe["data"]["split"], recipe.get("submit", {}).get("protocol")) == ("cxr128-train", "cxr128")
        if path.parent.name == "cxr128":  # the board's budget: 60 CPU minutes on one thread, all stages counted
            stages = [*recipe.get("stage", []), {"train": recipe["train"]}]
            assert sum(st["train"]["cpu_minutes"] for st in stages) == 60
            assert all(st["train"]["threads"] == 1 for st in stages)
        for part in [*recipe.get("stage", []), recipe["model"]]:  # every Config override exists and is typed
            name = part["name"]
            cls = GENERATORS.get(name) if name in GENERATORS else REPRESENTATIONS.get(name)
            config_from_overrides(cls.Config, part.get("config", {}), source=str(path))
    for group in (gpu, cpu):
        assert len({p.stem for p in group}) == len(group)  # a recipe's name is its samples folder and run


def test_train_only_trains_and_passes_the_kept_marks(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    recipe.write_text(recipe.read_text().replace("steps = 3\n", "steps = 3\nkeep_cpu_minutes = [5, 7.5]\n"))
    assert _run(recipe, tmp_path, "--train-only", "--dry-run") == 0
    printed = capsys.readouterr().err
    assert "--keep-cpu-minutes 5,7.5" in printed and "cxrbench sample" not in printed
    assert _run(recipe, tmp_path, "--train-only") == 0
    assert (tmp_path / "runs" / "tiny" / "model.pt").is_file()
    assert not (tmp_path / "samples").exists() and not (tmp_path / "entries").exists()


def test_kept_models_become_the_entrys_learning_curve_ending_at_the_entry(recipe, tmp_path, monkeypatch, capsys):
    # a fake CPU clock in the trainer passes the marks within a few steps; each kept model is sampled and
    # evaluated under the protocol, and the entry ends its curve with its own headline value
    from baselines import trainer

    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    clock = iter(range(10**7))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.6 * next(clock))
    recipe.write_text(recipe.read_text().replace("steps = 3\n", "steps = 8\nkeep_cpu_minutes = [0.05, 0.1]\n"))
    assert _run(recipe, tmp_path) == 0
    entry = json.loads((tmp_path / "entries" / "tiny-vae.json").read_text())
    pts = entry["learning_curve"]["checkpoints"]
    assert [p["metric"] for p in pts] == ["fid_cxr128"] * 3
    assert [p["steps"] for p in pts] == sorted({p["steps"] for p in pts}) and pts[-1]["steps"] == 8
    assert pts[0]["cpu_minutes"] >= 0.05 and pts[1]["cpu_minutes"] >= 0.1
    assert pts[-1]["value"] == entry["result"]["metrics"]["fid_cxr128"]["value"]
    assert pts[-1]["cpu_minutes"] == entry["card"]["training"]["cpu_minutes"]
    kept = json.loads((tmp_path / "runs" / "tiny" / "cpu-0.05min" / "train_state.json").read_text())
    assert pts[0]["steps"] == kept["step"] and pts[0]["n_samples"] == 12
    # the checkpoints' samples are kept beside the entry's and recorded, so verify recomputes every point
    assert [p["samples"]["location"] for p in pts[:2]] == ["../samples/curves/tiny/cpu-0.05min",
                                                           "../samples/curves/tiny/cpu-0.1min"]
    assert "samples" not in pts[-1]  # the entry itself
    entry_file = tmp_path / "entries" / "tiny-vae.json"
    capsys.readouterr()
    assert main(["verify", str(entry_file), "--quiet"]) == 0
    assert "learning curve: 3 of 3 points rechecked" in capsys.readouterr().out
    # resubmit re-makes the entry from what it records (nothing trained or sampled): under the same protocol
    # version, the same numbers, curve included
    assert main(["resubmit", str(entry_file), "--quiet"]) == 0
    again = json.loads(entry_file.read_text())
    assert again["learning_curve"] == entry["learning_curve"] and again["samples"] == entry["samples"]
    assert {k: m["value"] for k, m in again["result"]["metrics"].items()} == \
        {k: m["value"] for k, m in entry["result"]["metrics"].items()}
    entry_file.write_text(json.dumps(entry))

    def tampered(edit) -> int:
        e = json.loads(json.dumps(entry))
        edit(e["learning_curve"]["checkpoints"])
        bad = tmp_path / "entries" / "tampered.json"
        bad.write_text(json.dumps(e))
        return main(["verify", str(bad), "--samples", str(tmp_path / "samples" / "tiny"), "--quiet"])

    assert tampered(lambda c: c[0].update(value=c[0]["value"] * 0.9)) == 1  # an earlier point improved
    assert tampered(lambda c: c[1].update(ci=[1.0, 2.0])) == 1  # an interval where none was computed (N = 12)
    assert tampered(lambda c: c[2].update(value=c[2]["value"] * 0.9)) == 1  # the final point is not the entry
    out = capsys.readouterr().out
    assert "learning_curve ../samples/curves/tiny/cpu-0.05min: fid_cxr128.value" in out
    assert "learning_curve final point (the entry): fid_cxr128.value" in out
    # a checkpoint's samples changed: the hash no longer matches
    first = min((tmp_path / "samples" / "curves" / "tiny" / "cpu-0.05min").glob("*.png"))
    first.write_bytes((tmp_path / "samples" / "tiny" / first.name).read_bytes())
    assert main(["verify", str(entry_file), "--quiet"]) == 1
    assert "cpu-0.05min sha256" in capsys.readouterr().out
    assert main(["resubmit", str(entry_file), "--quiet"]) == 2  # nor can it be re-made from changed samples
    assert "cpu-0.05min changed since the entry was made" in capsys.readouterr().err


def test_reconstruct_table_reconstructs_unseen_images_into_the_entrys_block(recipe, tmp_path, monkeypatch):
    """``[reconstruct]``: after sampling, the model reconstructs the split's real images (never trained on)
    into <samples-dir>/<recipe>-reconstructions, and submit scores them into the reconstruction block."""
    import functools

    from baselines import moco
    from cxrbench.data.imageset import open_folder, select_split
    from cxrbench.publish import reconstruction_block as rb

    monkeypatch.setenv("CXRBENCH_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    # the "held-out" real images: the data folder's test split (the cxr128 one needs ../shared/data), found where
    # the block looks for them; a tiny random MoCo model (the default is 224 px)
    monkeypatch.setenv("CXRBENCH_SHARED_DATA", str(tmp_path / "shared"))
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / rb.FOLDER).symlink_to(data)
    monkeypatch.setattr(rb, "heldout_images", lambda root: select_split(open_folder(root, index=False), "test"))
    monkeypatch.setattr(moco.MoCoCXR, "Config", functools.partial(moco.Config, image_size=16, width=8))
    recipe.write_text(recipe.read_text() + '[reconstruct]\nsplit = "test"\n')
    rec = tmp_path / "samples" / "tiny-reconstructions"
    assert _run(recipe, tmp_path, "--dry-run") == 0
    assert _run(recipe, tmp_path) == 0
    sources = (rec / "manifest.csv").read_text().splitlines()[1:]
    test_files = {line.split(",")[0] for line in (data / "labels.csv").read_text().splitlines()[1:]
                  if line.endswith(",test")}
    assert {s.split(",")[1] for s in sources} == test_files  # the split's 8 images, none the model trained on
    entry = json.loads((tmp_path / "entries" / "tiny-vae.json").read_text())
    block = entry["reconstruction"]
    assert block["samples"]["n"] == len(test_files) == 8 and block["metrics"]["rrs_moco"]["mode"] == "paired"
    assert block["samples"]["location"] == "../samples/tiny-reconstructions"
    # the card's training cost is written once, from the training run (the reconstruction step is no sampling)
    assert entry["card"]["training"]["steps"] == 3
