"""Training-image preprocessing of the baselines as a recipe sets it: Kumar & Triana's histogram
equalisation ("Generating Synthetic Chest X-Rays with generative modeling") reaches the batches a model
trains on when ``[data] equalize = true``, and only then."""

from __future__ import annotations

import argparse

import pytest
import torch

from baselines import vae
from cxrbench.cli import main as cli_main
from cxrbench.commands import reproduce
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError

from ..conftest import write_pngs

RECIPE = """
[model]
name = "vae"
config = {{ image_size = 32, channels = [8, 16], z_dim = 8, batch_size = 4 }}

[data]
path = "{data}"
{equalize}

[train]
seed = 0
steps = 2
checkpoint_every = 100

[card]
name = "tiny"
authors = ["cxrbench"]
training_data = "synthetic"
resolution = 32
conditioning = "unconditional"
license = "Apache-2.0"
"""


def distance_from_flat(images: torch.Tensor) -> float:
    """Largest Kolmogorov-Smirnov distance of an image's pixel values from the uniform distribution on
    [0, 1]: about 1 / sqrt(pixels) for an equalised image, 0.2-0.3 for a synthetic chest."""
    out = 0.0
    for img in images:
        v = img.flatten().sort().values
        u = (torch.arange(len(v), dtype=v.dtype) + 0.5) / len(v)
        out = max(out, (v - u).abs().max().item())
    return out


def _recipe(tmp_path, equalize: str):
    data = write_pngs(tmp_path / "imgs", synthetic_cxr(8, 32, seed=0))
    path = tmp_path / "tiny.toml"
    path.write_text(RECIPE.format(data=data, equalize=equalize))
    args = argparse.Namespace(recipe=path, runs=tmp_path / "runs", samples_dir=tmp_path / "samples",
                              entries=tmp_path / "entries", max_minutes=None, steps=None, force=False, quiet=True)
    return reproduce.load_recipe(path), args


def _train_batches(tmp_path, monkeypatch, equalize: str) -> tuple[list[str], torch.Tensor]:
    """Run the recipe's train command as `cxrbench reproduce` does; return its argv and the images the
    model's training steps received."""
    recipe, args = _recipe(tmp_path, equalize)
    argvs, _, configs = reproduce.commands(recipe, args)
    for path, values in configs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k} = {reproduce._toml_value(v)}\n" for k, v in values.items()))
    seen = []
    original = vae.VAE.training_step

    def recording_step(self, batch, optimizers, step):
        seen.append(batch.images.detach().clone())
        return original(self, batch, optimizers, step)

    monkeypatch.setattr(vae.VAE, "training_step", recording_step)
    train = argvs[0]
    assert train[0] == "train"
    assert cli_main(train) == 0
    return train, torch.cat(seen)


def test_recipe_equalize_flattens_the_training_batches(tmp_path, monkeypatch):
    argv, images = _train_batches(tmp_path, monkeypatch, "equalize = true")
    assert "--equalize" in argv
    assert images.shape == (8, 1, 32, 32)  # two steps of four
    assert distance_from_flat(images) < 0.03


def test_without_equalize_the_training_batches_keep_their_histogram(tmp_path, monkeypatch):
    argv, images = _train_batches(tmp_path, monkeypatch, "")
    assert "--equalize" not in argv
    assert distance_from_flat(images) > 0.15


def test_recipe_equalize_reaches_every_stage_and_must_be_a_bool(tmp_path):
    recipe, args = _recipe(tmp_path, "equalize = true")
    recipe["stage"] = [{"id": "first", "name": "vae", "config": {"image_size": 32}}]
    argvs, _, _ = reproduce.commands(recipe, args)
    trains = [a for a in argvs if a[0] == "train"]
    assert len(trains) == 2 and all("--equalize" in a for a in trains)
    (tmp_path / "bad.toml").write_text(RECIPE.format(data=tmp_path, equalize='equalize = "yes"'))
    with pytest.raises(UsageError, match="equalize must be true or false"):
        reproduce.load_recipe(tmp_path / "bad.toml")


def test_resuming_with_other_preprocessing_is_refused(tmp_path, monkeypatch):
    argv, _ = _train_batches(tmp_path, monkeypatch, "equalize = true")
    plain = [a for a in argv if a != "--equalize"]
    assert cli_main(plain[:plain.index("--steps") + 1] + ["3"] + plain[plain.index("--steps") + 2:]) == 2
