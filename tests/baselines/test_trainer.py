"""The shared baseline trainer: exact resumption, budgets, loss log, config overrides."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from baselines.trainer import resolve_device
from baselines.vae import VAE, VAEConfig
from cxrbench.errors import DataError, UsageError
from cxrbench.training import TrainOptions, config_from_overrides, load_config_file

from ..generator_contract import LabelledImages

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


def test_kept_snapshots_are_the_run_as_it_stood_and_do_not_disturb_it(tmp_path, monkeypatch):
    # a fake CPU clock (0.6 s per reading, several readings per step) passes 0.05 and 0.1 CPU minutes
    # within a handful of steps; each kept folder must hold exactly the weights of a plain run stopped at its
    # recorded step, and the run that kept them must end where a run without marks ends
    from baselines import trainer

    ds = LabelledImages(10, 16, seed=0)
    opts = dict(checkpoint_every=100, progress=False, log_every=1, seed=3)
    clock = iter(range(10**6))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.6 * next(clock))
    kept = VAE.train(ds, CFG, tmp_path / "kept", options=TrainOptions(steps=8, keep_cpu_minutes=(0.1, 0.05), **opts))
    monkeypatch.undo()
    steps = []
    for m in (0.05, 0.1):
        folder = tmp_path / "kept" / trainer.snapshot_name(m)
        state = json.loads((folder / "train_state.json").read_text())
        assert state["cpu_s"] >= m * 60 and state["stopped_because"] == "keep_cpu_minutes"
        plain = VAE.train(ds, CFG, tmp_path / f"plain{m}", options=TrainOptions(steps=state["step"], **opts))
        snap = weights(VAE.from_pretrained(folder))
        assert all(torch.equal(snap[k], v) for k, v in weights(plain).items())
        steps.append(state["step"])
    assert 0 < steps[0] < steps[1] < 8
    straight = VAE.train(ds, CFG, tmp_path / "straight", options=TrainOptions(steps=8, **opts))
    assert all(torch.equal(weights(kept)[k], v) for k, v in weights(straight).items())
    assert trainer.snapshot_name(5.0) == "cpu-5min" and trainer.snapshot_name(7.5) == "cpu-7.5min"


def test_a_mark_passed_in_an_earlier_call_is_not_saved_again(tmp_path, monkeypatch):
    from baselines import trainer

    ds = LabelledImages(10, 16, seed=0)
    opts = dict(checkpoint_every=1, progress=False, seed=0, keep_cpu_minutes=(0.05,))
    clock = iter(range(10**6))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.6 * next(clock))
    VAE.train(ds, CFG, tmp_path / "r", options=TrainOptions(steps=4, **opts))
    first = (tmp_path / "r" / "cpu-0.05min" / "model.pt").read_bytes()
    VAE.train(ds, CFG, tmp_path / "r", options=TrainOptions(steps=6, **opts))  # resumed, past the mark
    assert (tmp_path / "r" / "cpu-0.05min" / "model.pt").read_bytes() == first


def test_image_folder_cache_returns_the_same_tensors_and_reads_each_file_once(tmp_path):
    from cxrbench.data import ImageFolder
    from cxrbench.data.synthetic import synthetic_cxr
    from cxrbench.data.transforms import CXRTransform

    from ..conftest import write_pngs

    folder = write_pngs(tmp_path / "imgs", synthetic_cxr(5, 40, seed=1))
    t = CXRTransform(image_size=16)
    plain, cached = ImageFolder(folder, transform=t), ImageFolder(folder, transform=t, cache=True)
    reads = []
    load = cached.source.load
    cached.source.load = lambda i: reads.append(i) or load(i)
    for _ in range(3):
        for i in range(5):
            assert torch.equal(plain[i][0], cached[i][0])
    assert sorted(reads) == list(range(5))


def test_a_kept_mark_is_also_a_checkpoint_the_run_resumes_from(tmp_path, monkeypatch):
    # a run killed after passing a mark, long before its next checkpoint_every step, resumes from the mark and
    # ends with the weights of a run that was never stopped
    from baselines import trainer

    ds = LabelledImages(10, 16, seed=0)
    opts = dict(checkpoint_every=100, progress=False, seed=0, keep_cpu_minutes=(0.05,))
    clock = iter(range(10**6))
    monkeypatch.setattr(trainer.time, "process_time", lambda: 0.6 * next(clock))
    step = VAE.training_step

    def killed_at_6(self, batch, optimizers, i):
        if i == 6:
            raise KeyboardInterrupt  # the machine going away
        return step(self, batch, optimizers, i)

    monkeypatch.setattr(VAE, "training_step", killed_at_6)
    with pytest.raises(KeyboardInterrupt):
        VAE.train(ds, CFG, tmp_path / "r", options=TrainOptions(steps=8, **opts))
    monkeypatch.setattr(VAE, "training_step", step)
    kept = json.loads((tmp_path / "r" / "cpu-0.05min" / "train_state.json").read_text())["step"]
    assert 0 < kept < 6
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == kept
    resumed = VAE.train(ds, CFG, tmp_path / "r", options=TrainOptions(steps=8, **opts))
    monkeypatch.undo()
    straight = VAE.train(ds, CFG, tmp_path / "straight", options=TrainOptions(steps=8, **opts))
    assert all(torch.equal(weights(resumed)[k], v) for k, v in weights(straight).items())
