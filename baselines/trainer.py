"""The small shared trainer every bundled baseline uses, and the interface it drives.

The interface (one for every baseline; DDPM, DiffuseVAE and LDM plug into it the same way)::

    @dataclass
    class MyConfig:                    # architecture + optimisation hyperparameters; JSON-able values
        image_size: int = 64           # side of the square (1, S, S) training images
        batch_size: int = 64
        lr: float = 1e-4
        ...

    class MyModel(Trainable, Generator):
        name = "my-model"              # the name it is registered under (cxrbench.generators entry point)
        Config = MyConfig

        def __init__(self, config): ...                       # builds the networks; no I/O
        def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
        def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
            # one optimisation step on ``batch.images`` (B, 1, S, S) in [0, 1] and ``batch.labels``
            # (B, 15) in LABELS order, NaN where unknown. It does its own zero_grad / backward / step
            # (a GAN alternates several updates) and returns scalar losses for the log.
        def sample(self, n, *, labels=None, seed=None) -> torch.Tensor: ...   # (n, 1, S, S) in [0, 1]
        # optional: on_train_start(dataset) runs once before the first step of a fresh run
        # (a conditional model fills its label bank from the training labels there)

    model = MyModel.train(dataset, MyModel.Config(image_size=32), "runs/x",
                          options=TrainOptions(steps=1000, max_minutes=5), device="auto")

``Model.train(dataset, config, out_dir, *, options=None, device="auto", log=None)`` on the *class* builds a
seeded model and calls :func:`fit`; on an *instance*, ``model.train(mode)`` stays ``nn.Module.train``.
``dataset[i]`` returns ``(image (1, S, S) float32 in [0, 1], labels (15,) float32)``, as
``cxrbench.data.ImageFolder`` with a ``CXRTransform`` does (a bare image tensor is accepted too).

What :func:`fit` does:
- seeding: ``options.seed`` seeds the model init and every random draw; batch order is a function of
  (seed, epoch) only, so a resumed run takes exactly the batches the uninterrupted run would have;
- resumable checkpoints: ``out_dir/checkpoint.pt`` (weights, optimiser states, step, epoch position, RNG
  state, loss log) every ``checkpoint_every`` steps and at the end; calling again with the same config
  continues from it (a larger ``steps`` trains further); a different config is refused;
- budgets: ``steps`` and/or ``epochs`` (whichever ends first), ``max_minutes`` of wall clock per call and
  ``cpu_minutes`` of this process's CPU time over the whole run (resumed calls included; a checkpoint
  without a CPU clock counts its wall clock);
- progress: before every step ``model.progress`` is set to the fraction of the budget used so far, the
  largest of step / steps, CPU time / cpu_minutes and this call's wall clock / max_minutes (never
  decreasing, kept in the checkpoint), so that a model can lay out a schedule over a time budget whose step
  count nobody knows in advance (PGGAN's growth phases, DiffuseVAE's stages). Under a time budget it depends
  on the machine's speed: ``--steps N`` then gives the schedule's shape over N steps, not the same weights;
- snapshots: at each of ``keep_cpu_minutes`` (CPU minutes of the whole run) the model as it stands is saved
  to ``out_dir/cpu-<m>min/`` (a model folder with its own ``train_state.json``), so one run gives its
  learning curve under one schedule; a mark passed in an earlier call is not saved again;
- device ``"auto"``: cuda > mps > cpu;
- progress on stderr (tqdm); the loss log as ``out_dir/losses.csv`` (step, epoch, elapsed_s, one column
  per loss, averaged over ``log_every`` steps) and a summary ``out_dir/train_state.json``;
- at the end the model folder itself: ``out_dir/config.json`` + ``out_dir/model.pt`` (``save_pretrained``),
  which ``cxrbench sample out_dir`` and ``Model.from_pretrained(out_dir)`` read.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cxrbench.data.labels import LABELS
from cxrbench.errors import CxrbenchError, DataError, UsageError
from cxrbench.fileio import atomic_torch_save, atomic_write_bytes
from cxrbench.seeding import seed_everything, torch_generator
from cxrbench.training import TrainOptions, config_to_dict

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "cxrbench.checkpoint/1"


class Batch(NamedTuple):
    images: torch.Tensor  # (B, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor  # (B, 15) float32, LABELS order, NaN = unknown


# ---------------------------------------------------------------------------------------------------------
# devices, configs


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# labels for conditional models


def label_matrix(labels, n: int, *, num_labels: int = len(LABELS)) -> torch.Tensor:
    """Validate requested labels: a ``(n, num_labels)`` 0/1 tensor (NaN, "unknown", counts as absent)."""
    lab = torch.as_tensor(labels, dtype=torch.float32)
    if lab.ndim == 1:
        lab = lab.unsqueeze(0).expand(n, -1)
    if lab.shape != (n, num_labels):
        raise UsageError(
            f"labels must have shape ({n}, {num_labels}) (one 0/1 column per label in LABELS order), "
            f"got {tuple(lab.shape)}"
        )
    return torch.nan_to_num(lab, nan=0.0).clamp(0.0, 1.0)


class LabelBankMixin:
    """For conditional models: a bank of training label vectors to draw from when no labels are requested.

    The model registers a ``label_bank`` buffer ``(label_bank_size, 15)``; ``on_train_start`` fills it with
    the label vectors of a seeded random subset of the training set, so it is saved with the weights.
    """

    def on_train_start(self, dataset) -> None:
        bank = self.label_bank
        n = len(dataset)
        idx = torch.randperm(n, generator=torch_generator(0))[: bank.shape[0]]
        rows = []
        for i in idx.tolist():
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                rows = []
                break
            rows.append(torch.as_tensor(item[1], dtype=torch.float32))
        if not rows or torch.stack(rows).isnan().all():
            raise DataError(
                f"{self.name} is conditional and needs training labels: give a folder with labels.csv "
                "or --labels CSV (columns named as in cxrbench.data.labels.LABELS)"
            )
        lab = torch.nan_to_num(torch.stack(rows), nan=0.0)
        reps = math.ceil(bank.shape[0] / len(lab))
        bank.copy_(lab.repeat(reps, 1)[: bank.shape[0]])

    def draw_labels(self, n: int, *, seed: int | None = None) -> torch.Tensor:
        """``n`` label vectors drawn (with replacement) from the training label bank."""
        g = torch_generator(seed) if seed is not None else None
        idx = torch.randint(0, self.label_bank.shape[0], (n,), generator=g)
        return self.label_bank.detach().cpu()[idx].clone()


# ---------------------------------------------------------------------------------------------------------
# exponential moving average of the weights, for sampling (DDPM, DiffuseVAE, LDM)


class EMA(nn.Module):
    """An exponential moving average of some of a model's submodules, which sampling uses.

    The averaged copies are submodules themselves (``ema.averaged.<name>``), so the trainer's checkpoint (a
    resumed run restores them exactly) and the saved ``model.pt`` carry them. The update is diffusers'
    ``EMAModel`` with its warm-up: decay ``min(decay, 1 - (1 + step) ** -power)``, so that the average covers
    the latest part of a short CPU run as it does of a long one (power 3/4: 0.994 at 1k steps, 0.999 at 10k,
    0.9999 at 215k). Parameters are averaged; buffers (BatchNorm statistics) are copied.
    """

    def __init__(self, modules: dict[str, nn.Module], *, decay: float, power: float):
        super().__init__()
        self.averaged = copy.deepcopy(nn.ModuleDict(modules)).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # the live modules, not registered (they are the model's own and saved under their own names)
        object.__setattr__(self, "_live", list(modules.values()))
        # on use: diffusers takes 3 s to import, and every baseline imports this module (VAE and GAN runs and
        # `cxrbench train`'s error paths never need it)
        from diffusers.training_utils import EMAModel

        object.__setattr__(self, "_ema", EMAModel([], decay=decay, use_ema_warmup=True, power=power))
        self._swapped = False

    def _live_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._live for p in m.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step toward the live weights (call after the optimiser step)."""
        ema = self._ema
        ema.shadow_params = list(self.averaged.parameters())  # EMAModel updates these tensors in place
        ema.optimization_step = int(self.steps)  # from the state dict: a resumed run continues the schedule
        ema.step(self._live_parameters())
        # buffers (BatchNorm statistics) are copied, not averaged, so the averaged modules are whole models
        for avg, live in zip(self.averaged.buffers(), (b for m in self._live for b in m.buffers())):
            avg.copy_(live)
        self.steps += 1

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the live modules hold the averaged weights; their own come back after it.
        Re-entrant (``sample`` calls ``refine``, both swap), as EMAModel keeps one stored copy."""
        if self._swapped:
            yield
            return
        live = self._live_parameters()
        self._ema.shadow_params = list(self.averaged.parameters())
        self._ema.store(live)
        self._ema.copy_to(live)
        self._swapped = True
        try:
            yield
        finally:
            self._swapped = False
            self._ema.restore(live)


def attach_ema(model: nn.Module, names: tuple[str, ...], *, decay: float, power: float) -> None:
    """``model.ema``: an :class:`EMA` of ``model``'s submodules ``names``, or None when ``decay`` is 0.

    A model folder saved before the model had one loads with the average equal to its trained weights.
    """
    model.ema = EMA({n: getattr(model, n) for n in names}, decay=decay, power=power) if decay > 0 else None
    if model.ema is not None:
        model.register_load_state_dict_pre_hook(_average_from_live_weights)


def _average_from_live_weights(module, state_dict, prefix, *args) -> None:
    if module.ema is None or any(k.startswith(prefix + "ema.") for k in state_dict):
        return
    for key in module.ema.state_dict():
        if key.startswith("averaged."):
            live = prefix + key[len("averaged."):]
            if live in state_dict:
                state_dict[prefix + "ema." + key] = state_dict[live]
    state_dict[prefix + "ema.steps"] = torch.zeros((), dtype=torch.long)


def averaged_weights(model: nn.Module):
    """Context in which ``model`` samples with its EMA weights (a no-op for a model without an EMA)."""
    ema = getattr(model, "ema", None)
    return ema.applied() if ema is not None else contextlib.nullcontext()


def clip_gradients(parameters, max_norm: float) -> float:
    """Clip the gradients' global norm to ``max_norm`` (0: no clipping); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if max_norm > 0:
        return float(nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0


# ---------------------------------------------------------------------------------------------------------
# the class-level ``train``


class _TrainDescriptor:
    """``Model.train(dataset, config, out_dir, ...)`` trains a new model; ``model.train(mode)`` is nn.Module's."""

    def __get__(self, obj, cls):
        if obj is None:
            return lambda dataset, config=None, out_dir=None, **kw: _train_new(cls, dataset, config, out_dir, **kw)
        return nn.Module.train.__get__(obj, cls)


def _train_new(cls, dataset, config, out_dir, *, options: TrainOptions | None = None, device="auto", log=None):
    if out_dir is None:
        raise UsageError("train needs an output folder (out_dir)")
    options = options or TrainOptions()
    config = config if config is not None else cls.Config()
    seed_everything(options.seed)  # the weight init is part of the seeded run
    return fit(cls(config), dataset, out_dir, options=options, device=device, log=log)


def set_cosine_lr(optimizer: torch.optim.Optimizer, base_lr: float, step: int, schedule_steps: int) -> float:
    """Cosine decay of the learning rate over ``schedule_steps`` (0: constant); sets it and returns it."""
    lr = base_lr
    if schedule_steps:
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(step, schedule_steps) / schedule_steps))
    for pg in optimizer.param_groups:
        pg["lr"] = lr
    return lr


class Trainable:
    """Mixin giving a baseline the class-level ``train(dataset, config, out_dir, ...)`` that drives :func:`fit`."""

    train = _TrainDescriptor()
    #: fraction of the training budget used before the current step, in [0, 1]; :func:`fit` sets it
    #: before every step (0 when ``training_step`` is called outside it)
    progress: float = 0.0

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:  # pragma: no cover - interface
        raise NotImplementedError

    def training_step(self, batch: Batch, optimizers: dict, step: int) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# the loop


def _collate(items):
    if isinstance(items[0], torch.Tensor):
        images = torch.stack(items)
        return images, torch.full((len(items), len(LABELS)), float("nan"))
    images = torch.stack([it[0] for it in items])
    labels = torch.stack([torch.as_tensor(it[1], dtype=torch.float32) for it in items])
    return images, labels


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    # batch order depends on (seed, epoch) only: resuming mid-epoch replays the same permutation
    s = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(n, generator=torch_generator(s))


def _write_log_csv(path: Path, records: list[dict]) -> None:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    atomic_write_bytes(path, buf.getvalue().encode())


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Run:
    """One call of :func:`fit`: what a checkpoint carries (step, epoch position, the clocks of earlier calls,
    the loss log, progress), this call's clocks and budgets, and the losses not yet logged."""

    def __init__(self, model, optimizers: dict, out: Path, options: TrainOptions, total: float,
                 log: Callable[[dict], None] | None):
        self.model, self.optimizers, self.out, self.options, self.total, self.log = (
            model, optimizers, out, options, total, log)
        self.cfg = model.config
        self.ckpt_path = out / CHECKPOINT
        self.step, self.epoch, self.pos, self.elapsed_before, self.cpu_before, self.progress = 0, 0, 0, 0.0, 0.0, 0.0
        self.records: list[dict] = []
        self.acc: dict[str, list[float]] = {}

    def resume(self, dataset, dev: torch.device) -> None:
        """Continue from ``out/checkpoint.pt`` when there is one (same generator and config only); a fresh run
        calls the model's ``on_train_start``."""
        model, ckpt_path = self.model, self.ckpt_path
        if ckpt_path.is_file():
            try:
                ckpt = torch.load(ckpt_path, map_location=dev, weights_only=True)
            except Exception as e:
                raise CxrbenchError(
                    f"{ckpt_path}: unreadable checkpoint ({e.__class__.__name__}); delete it to restart"
                ) from e
            if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
                raise CxrbenchError(f"{ckpt_path}: not a cxrbench training checkpoint; delete it to restart")
            if ckpt.get("generator") != model.name or ckpt.get("config") != config_to_dict(self.cfg):
                raise UsageError(
                    f"{ckpt_path}: holds a checkpoint of {ckpt.get('generator')!r} with a different config; "
                    "use a new --out folder, or the same config to resume"
                )
            model.load_state_dict(ckpt["model"])
            for k, opt in self.optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][k])
            self.step, self.epoch, self.pos = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["pos"])
            self.elapsed_before = float(ckpt["elapsed_s"])
            self.cpu_before = float(ckpt.get("cpu_s", self.elapsed_before))
            self.records = list(ckpt["log"])
            self.progress = float(ckpt.get("progress", 0.0))
            _set_rng_state(ckpt["rng"])
        elif hasattr(model, "on_train_start"):
            model.on_train_start(dataset)

    def start_clocks(self) -> None:
        """This call's wall clock and CPU clock, their deadlines, and the progress bar."""
        options = self.options
        self.t0 = time.monotonic()
        self.deadline = self.t0 + options.max_minutes * 60 if options.max_minutes is not None else math.inf
        self.c0 = time.process_time()
        self.cpu_deadline = (self.c0 + options.cpu_minutes * 60 - self.cpu_before if options.cpu_minutes is not None
                             else math.inf)
        self.bar = tqdm(
            total=None if math.isinf(self.total) else self.total,
            initial=self.step,
            desc=f"train {self.model.name}",
            disable=not options.progress,
            dynamic_ncols=True,
        )

    def save_checkpoint(self) -> None:
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "generator": self.model.name,
                "config": config_to_dict(self.cfg),
                "step": self.step,
                "epoch": self.epoch,
                "pos": self.pos,
                "elapsed_s": self.elapsed_before + (time.monotonic() - self.t0),
                "cpu_s": self.cpu_before + (time.process_time() - self.c0),
                "model": self.model.state_dict(),
                "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
                "rng": _rng_state(),
                "log": self.records,
                "progress": self.progress,
            },
            self.ckpt_path,
        )
        _write_log_csv(self.out / "losses.csv", self.records)

    def budget_used(self) -> float:
        options = self.options
        used = [self.progress]  # never decreases, also when a resumed call sets a longer budget
        if not math.isinf(self.total):
            used.append(self.step / self.total)
        if options.cpu_minutes is not None:
            used.append((self.cpu_before + time.process_time() - self.c0) / (options.cpu_minutes * 60))
        if options.max_minutes is not None:
            used.append((time.monotonic() - self.t0) / (options.max_minutes * 60))
        return min(1.0, max(used))

    def out_of_budget(self) -> bool:
        # the recipe budget is the run's own CPU clock, so calling again after it trains nothing more
        return time.monotonic() >= self.deadline or time.process_time() >= self.cpu_deadline

    def flush_log(self) -> None:
        if not self.acc:
            return
        rec = {"step": self.step, "epoch": self.epoch,
               "elapsed_s": round(self.elapsed_before + time.monotonic() - self.t0, 3)}
        rec.update({k: float(np.mean(v)) for k, v in self.acc.items()})
        self.acc.clear()
        self.records.append(rec)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k not in ("step", "epoch", "elapsed_s")})
        if self.log is not None:
            self.log(rec)

    def train(self, dataset, dev: torch.device, n: int, batch_size: int, steps_per_epoch: int) -> None:
        """Steps until ``total`` or a time budget ends, epoch by epoch from the checkpoint's position."""
        options = self.options
        out_of_time = False
        checked_size = False
        self.snapshot_args = (dev, n, batch_size)
        self.model.train(True)
        while self.step < self.total:
            if self.out_of_budget():
                out_of_time = True
                break
            order = _epoch_order(n, options.seed, self.epoch)[self.pos * batch_size : steps_per_epoch * batch_size]
            for images, labels in _loader(dataset, order, batch_size, options):
                if not checked_size:
                    checked_size = True
                    _check_image_size(images, self.model)
                self.training_step(images, labels, dev)
                if self.step >= self.total:
                    break
                if self.out_of_budget():
                    out_of_time = True
                    break
            if out_of_time:
                break
            if self.pos >= steps_per_epoch:
                self.epoch, self.pos = self.epoch + 1, 0

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, dev: torch.device) -> None:
        """One step of the model, with ``progress`` set before it; the log and checkpoint when they are due."""
        self.progress = self.budget_used()
        self.model.progress = self.progress
        losses = self.model.training_step(Batch(images.to(dev), labels.to(dev)), self.optimizers, self.step)
        self.step += 1
        self.pos += 1
        for k, v in losses.items():
            self.acc.setdefault(k, []).append(float(v))
        if self.step % self.options.log_every == 0 or self.step >= self.total:
            self.flush_log()
        self.bar.update(1)
        if self.step % self.options.checkpoint_every == 0:
            self.save_checkpoint()
        if self.options.keep_cpu_minutes:
            self.keep_snapshots(*self.snapshot_args)

    def cpu_used_s(self) -> float:
        return self.cpu_before + time.process_time() - self.c0

    def keep_snapshots(self, dev: torch.device, n: int, batch_size: int) -> None:
        """Save the model folder ``cpu-<m>min/`` for each mark of ``keep_cpu_minutes`` the run has passed."""
        used = self.cpu_used_s()
        for m in sorted(self.options.keep_cpu_minutes):
            folder = self.out / snapshot_name(m)
            if used < m * 60 or (folder / "train_state.json").is_file():
                continue
            self.model.train(False)
            self.model.save_pretrained(folder)
            self.write_state(folder, dev, n, batch_size, stopped_because="keep_cpu_minutes")
            self.model.train(True)
            # and a checkpoint: a run stopped after a mark resumes from it, not from the last checkpoint_every
            # step (a 60-CPU-minute VAE-128 first reaches step 500 near minute 48), so the kept folders and the
            # rest of the run stay one schedule
            self.save_checkpoint()

    def write_state(self, folder: Path, dev: torch.device, n: int, batch_size: int, *, stopped_because: str) -> None:
        model, options = self.model, self.options
        state = {
            "generator": model.name,
            "step": self.step,
            "epoch": self.epoch,
            "stopped_because": stopped_because,
            "elapsed_s": round(self.elapsed_before + time.monotonic() - self.t0, 3),
            "cpu_s": round(self.cpu_used_s(), 3),
            "threads": torch.get_num_threads(),
            "device": str(dev),
            "n_train": n,
            "images_seen": self.step * batch_size,  # training images drawn (a GAN step is one batch for D and G)
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),  # EMA copies excluded
            "options": dataclasses.asdict(options),
            "config": config_to_dict(self.cfg),
        }
        atomic_write_bytes(folder / "train_state.json", json.dumps(state, indent=2, sort_keys=True).encode())

    def finish(self, dev: torch.device, n: int, batch_size: int) -> None:
        """The last log record and checkpoint, the model folder and ``train_state.json``."""
        model, options = self.model, self.options
        self.flush_log()  # the steps since the last record (a run stopped by max_minutes)
        self.bar.close()
        model.train(False)
        self.save_checkpoint()
        model.save_pretrained(self.out)
        self.write_state(self.out, dev, n, batch_size, stopped_because=(
            "max_minutes" if self.step < self.total
            else "steps" if options.steps is not None and self.step >= options.steps
            else "epochs"))


def snapshot_name(cpu_minutes: float) -> str:
    """The folder a ``keep_cpu_minutes`` mark is saved in: ``cpu-5min``, ``cpu-7.5min``."""
    return f"cpu-{cpu_minutes:g}min"


def _loader(dataset, order: torch.Tensor, batch_size: int, options: TrainOptions) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order.tolist(),
        num_workers=options.num_workers,
        collate_fn=_collate,
        drop_last=True,
        # its own generator: a DataLoader otherwise draws a base seed from the global RNG per epoch,
        # and a resumed run (one more loader) would then diverge from the uninterrupted one
        generator=torch_generator(options.seed),
    )


def _check_image_size(images: torch.Tensor, model) -> None:
    cfg = model.config
    want = (1, cfg.image_size, cfg.image_size)
    if tuple(images.shape[1:]) != want:
        raise DataError(
            f"training images are {tuple(images.shape[1:])} but {model.name} is configured for "
            f"{want}; resize them (cxrbench train --image-size {cfg.image_size}) or change image_size"
        )


def fit(
    model,
    dataset,
    out_dir: str | Path,
    *,
    options: TrainOptions | None = None,
    device: str | torch.device = "auto",
    log: Callable[[dict], None] | None = None,
):
    """Train ``model`` (a :class:`Trainable`) on ``dataset``; resumes from ``out_dir/checkpoint.pt`` if present."""
    options = options or TrainOptions()
    if options.steps is None and options.epochs is None:
        raise UsageError("set a training budget: steps (--steps N) or epochs (--epochs E)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    n = len(dataset)
    if n == 0:
        raise DataError(f"{out}: the training set is empty")
    batch_size = min(int(model.config.batch_size), n)
    steps_per_epoch = n // batch_size
    total = math.inf
    if options.steps is not None:
        total = int(options.steps)
    if options.epochs is not None:
        total = min(total, math.ceil(options.epochs * steps_per_epoch))

    model.to(dev)
    run = _Run(model, model.configure_optimizers(), out, options, total, log)
    run.resume(dataset, dev)
    run.start_clocks()
    run.train(dataset, dev, n, batch_size, steps_per_epoch)
    run.finish(dev, n, batch_size)
    return model
