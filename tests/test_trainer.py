"""The shared baseline trainer: exact resumption, budgets, loss log, config overrides."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cxrbench.training import TrainOptions, config_from_overrides, load_config_file
from baselines.trainer import resolve_device
from baselines.vae import VAE, VAEConfig
from cxrbench.errors import DataError, UsageError

from .generator_contract import LabelledImages

CFG = VAEConfig(image_size=16, channels=(8, 16), z_dim=8, batch_size=4)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    ds = LabelledImages(10, 16, seed=0)  # 2 batches per epoch: the resume point falls mid-epoch and across
    opts = dict(checkpoint_every=100, progress=False, log_every=1, seed=3)
    straight = VAE.train(ds, CFG, tmp_path / "a", options=TrainOptions(steps=5, **opts))
    VAE.train(ds, CFG, tmp_path / "b", options=TrainOptions(steps=3, **opts))
    resumed = VAE.train(ds, CFG, tmp_path / "b", options=TrainOptions(steps=5, **opts))
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_a = list(csv.DictReader(open(tmp_path / "a" / "losses.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "losses.csv")))
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4", "5"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["step"] == 5 and state["stopped_because"] == "steps" and state["epoch"] == 2


def test_seed_changes_the_run_and_same_seed_repeats_it(tmp_path):
    ds = LabelledImages(8, 16, seed=0)

    def run(name, seed):
        return weights(VAE.train(ds, CFG, tmp_path / name, options=TrainOptions(steps=2, seed=seed, progress=False)))

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_budgets(tmp_path):
    ds = LabelledImages(12, 16, seed=0)  # 3 steps per epoch
    VAE.train(ds, CFG, tmp_path / "e", options=TrainOptions(epochs=2, progress=False))
    assert json.loads((tmp_path / "e" / "train_state.json").read_text())["step"] == 6
    VAE.train(ds, CFG, tmp_path / "m", options=TrainOptions(steps=100, max_minutes=0.0, progress=False))
    state = json.loads((tmp_path / "m" / "train_state.json").read_text())
    assert state["step"] == 0 and state["stopped_because"] == "max_minutes"
    assert (tmp_path / "m" / "model.pt").is_file()  # even a stopped run leaves a loadable model
    with pytest.raises(UsageError, match="budget"):
        VAE.train(ds, CFG, tmp_path / "x", options=TrainOptions(progress=False))


def test_cpu_minutes_counts_the_resumed_calls(tmp_path):
    # a recipe's budget is the run's own CPU clock: once a run has used it, calling again adds nothing
    ds = LabelledImages(12, 16, seed=0)
    VAE.train(ds, CFG, tmp_path / "t", options=TrainOptions(steps=4, progress=False))
    before = json.loads((tmp_path / "t" / "train_state.json").read_text())
    budget = before["cpu_s"] / 60 / 2  # less than the CPU time already spent
    VAE.train(ds, CFG, tmp_path / "t", options=TrainOptions(steps=8, cpu_minutes=budget, progress=False))
    after = json.loads((tmp_path / "t" / "train_state.json").read_text())
    assert after["step"] == 4 and after["stopped_because"] == "max_minutes"
    VAE.train(ds, CFG, tmp_path / "t", options=TrainOptions(steps=8, cpu_minutes=budget + 10, progress=False))
    assert json.loads((tmp_path / "t" / "train_state.json").read_text())["step"] == 8


def test_resume_with_another_config_is_refused(tmp_path):
    ds = LabelledImages(8, 16, seed=0)
    VAE.train(ds, CFG, tmp_path, options=TrainOptions(steps=1, progress=False))
    other = VAEConfig(image_size=16, channels=(8, 16), z_dim=8, batch_size=4, beta=1.0)
    with pytest.raises(UsageError, match="different config"):
        VAE.train(ds, other, tmp_path, options=TrainOptions(steps=2, progress=False))


def test_wrong_image_size_names_the_fix(tmp_path):
    ds = LabelledImages(8, 32, seed=0)
    with pytest.raises(DataError, match="--image-size 16"):
        VAE.train(ds, CFG, tmp_path, options=TrainOptions(steps=1, progress=False))


def test_log_callback_sees_every_record(tmp_path):
    seen = []
    VAE.train(LabelledImages(8, 16), CFG, tmp_path, options=TrainOptions(steps=4, log_every=2, progress=False),
              log=seen.append)
    assert [r["step"] for r in seen] == [2, 4] and all({"loss", "rec", "kl"} <= r.keys() for r in seen)


def test_config_overrides(tmp_path):
    cfg = config_from_overrides(VAEConfig, {"channels": [4, 8], "beta": 1, "image_size": 16})
    assert cfg.channels == (4, 8) and cfg.beta == 1.0 and isinstance(cfg.beta, float)
    with pytest.raises(UsageError, match="known keys: batch_size, beta, channels"):
        config_from_overrides(VAEConfig, {"betta": 0.1})
    with pytest.raises(UsageError, match="beta"):
        config_from_overrides(VAEConfig, {"beta": "big"})
    with pytest.raises(UsageError, match="convs_per_block"):
        config_from_overrides(VAEConfig, {"convs_per_block": True})
    with pytest.raises(UsageError, match="multiple of"):  # the Config's own check, as a usage error
        config_from_overrides(VAEConfig, {"image_size": 100})
    f = tmp_path / "vae.toml"
    f.write_text("beta = 0.5\nchannels = [8, 16]\n")
    assert load_config_file(f, VAEConfig) == VAEConfig(beta=0.5, channels=(8, 16))
    f.write_text("beta = \n")
    with pytest.raises(UsageError, match="vae.toml"):
        load_config_file(f, VAEConfig)


def test_device_auto_and_explicit():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA"):
            resolve_device("cuda")
