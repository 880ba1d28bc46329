"""``GeneratorTesterMixin``: the contract every registered generator is tested against.

A test class sets ``name`` (the registry name) and ``config()`` (a tiny config, 16-32 px) and inherits:
sample contract (shape, dtype, range, finite), seeded determinism, save/load round trip giving identical
samples, finite losses and gradients after one training step that moves the weights, conditional
behaviour (labels change the images; unconditional models refuse labels), training through the shared
trainer, and resolution through the ``cxrbench.generators`` entry points.
"""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch

from baselines.trainer import Batch
from cxrbench.data.labels import LABELS
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError
from cxrbench.generator import Generator
from cxrbench.registry import GENERATORS
from cxrbench.training import TrainOptions, config_to_dict


class LabelledImages(torch.utils.data.Dataset):
    """Synthetic CXRs with random 0/1 label vectors, as ImageFolder items."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.images = synthetic_cxr(n, size, seed=seed)
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.rand(n, len(LABELS), generator=g) < 0.3).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


class GeneratorTesterMixin:
    name: str = ""
    train_steps: int = 1  # steps before the round-trip test (pggan: enough to grow a level)

    def config(self):  # pragma: no cover - overridden
        raise NotImplementedError

    # --- helpers -----------------------------------------------------------------------------------------
    @property
    def cls(self):
        return GENERATORS.get(self.name)

    def build(self, seed: int = 0):
        torch.manual_seed(seed)
        return self.cls(self.config())

    def batch(self, seed: int = 1) -> Batch:
        cfg = self.config()
        ds = LabelledImages(cfg.batch_size, cfg.image_size, seed=seed)
        return Batch(ds.images, ds.labels)

    def labels_for(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(n, len(LABELS), generator=g) < 0.5).float()

    def trained(self, seed: int = 0):
        model = self.build(seed)
        if getattr(model, "conditional", False):
            model.on_train_start(LabelledImages(16, self.config().image_size, seed=5))
        opts = model.configure_optimizers()
        model.train()
        for step in range(self.train_steps):
            model.training_step(self.batch(seed=step + 1), opts, step)
        return model.eval()

    def draw(self, model, n, seed):
        labels = self.labels_for(n) if getattr(model, "conditional", False) else None
        return model.sample(n, labels=labels, seed=seed)

    # --- the contract ------------------------------------------------------------------------------------
    def test_registry_resolution(self):
        eps = {ep.name: ep for ep in entry_points(group="cxrbench.generators")}
        assert self.name in eps, f"{self.name} is not registered in pyproject's cxrbench.generators entry points"
        cls = GENERATORS.get(self.name)
        assert eps[self.name].load() is cls
        assert issubclass(cls, Generator) and cls.name == self.name
        assert isinstance(self.config(), cls.Config)

    def test_sample_contract(self):
        model = self.trained()
        cfg = model.config
        x = self.draw(model, 3, seed=0)
        assert x.shape == (3, 1, cfg.image_size, cfg.image_size)
        assert x.dtype == torch.float32
        assert torch.isfinite(x).all()
        assert x.min() >= 0 and x.max() <= 1
        assert x.std() > 0  # not a constant image

    def test_seeded_determinism(self):
        model = self.trained()
        a, b, c = self.draw(model, 4, seed=7), self.draw(model, 4, seed=7), self.draw(model, 4, seed=8)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_save_load_round_trip(self, tmp_path):
        model = self.trained()
        model.save_pretrained(tmp_path)
        loaded = self.cls.from_pretrained(tmp_path)
        assert type(loaded) is type(model)
        assert config_to_dict(loaded.config) == config_to_dict(model.config)  # JSON has no tuples
        sd, sd2 = model.state_dict(), loaded.state_dict()
        assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
        assert torch.equal(self.draw(model, 3, seed=11), self.draw(loaded, 3, seed=11))

    def test_training_step_finite_and_moves_weights(self):
        model = self.build()
        if getattr(model, "conditional", False):
            model.on_train_start(LabelledImages(16, self.config().image_size, seed=5))
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        opts = model.configure_optimizers()
        model.train()
        losses = model.training_step(self.batch(), opts, 0)
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
        grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        assert grads, "no parameter received a gradient"
        assert all(torch.isfinite(g).all() for g in grads.values())
        moved = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), before[k])]
        assert moved, "one training step changed no weight"
        # every parameter that got a non-zero gradient was updated
        assert all(k in moved for k, g in grads.items() if g.abs().sum() > 0)

    def test_labels(self):
        model = self.trained()
        n = 4
        if getattr(model, "conditional", False):
            y0 = torch.zeros(n, len(LABELS))
            y1 = torch.ones(n, len(LABELS))
            a, b = model.sample(n, labels=y0, seed=3), model.sample(n, labels=y1, seed=3)
            assert not torch.equal(a, b), "the labels do not reach the images"
            with pytest.raises(UsageError):
                model.sample(n, labels=torch.zeros(n, 3), seed=0)
            drawn = model.draw_labels(n, seed=0)
            assert drawn.shape == (n, len(LABELS)) and set(drawn.unique().tolist()) <= {0.0, 1.0}
        else:
            with pytest.raises(UsageError):
                model.sample(n, labels=torch.zeros(n, len(LABELS)), seed=0)

    def test_trains_through_trainer(self, tmp_path):
        cfg = self.config()
        ds = LabelledImages(2 * cfg.batch_size, cfg.image_size, seed=3)
        model = self.cls.train(ds, cfg, tmp_path, options=TrainOptions(steps=2, progress=False, log_every=1))
        assert model.training is False  # nn.Module.train/eval still work on instances
        for f in ("config.json", "model.pt", "checkpoint.pt", "losses.csv", "train_state.json"):
            assert (tmp_path / f).is_file(), f
        loaded = self.cls.from_pretrained(tmp_path)
        assert torch.equal(self.draw(model, 2, seed=0), self.draw(loaded, 2, seed=0))
