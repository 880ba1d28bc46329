"""Generator interface shared by the bundled baselines and outside models.

A generator is a folder (``config.json`` + ``model.pt``), loaded with ``torch.load(weights_only=True)``;
``sample`` returns the image contract: float32 ``(N, 1, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .errors import CxrbenchError, DataError, UsageError
from .fileio import atomic_torch_save, atomic_write_bytes, read_json_object


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)``: a model is a folder, config plus weights."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # a dataclass
    #: Config values that a folder saved before a field existed is read with, where today's default would
    #: build another model (DiffuseVAE's ``conditions``: folders saved before it are unconditional)
    legacy_config: ClassVar[dict] = {}

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.asdict(self.config)
        atomic_torch_save(self.state_dict(), out / "model.pt")
        atomic_write_bytes(
            out / "config.json",
            json.dumps({"generator": self.name, "config": cfg}, indent=2, sort_keys=True).encode(),
        )
        return out

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, map_location: str = "cpu"):
        model_dir = Path(model_dir)
        cfg_path, weights_path = model_dir / "config.json", model_dir / "model.pt"
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise CxrbenchError(f"{p}: missing; a saved model folder holds config.json and model.pt")
        meta = read_json_object(cfg_path)
        config = meta.get("config", {})
        if not isinstance(config, dict):
            raise CxrbenchError(f"{cfg_path}: 'config' must be an object of {cls.name} Config fields")
        config = {**cls.legacy_config, **config}
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = set(config) - fields
        if unknown:
            raise CxrbenchError(f"{cfg_path}: unknown config keys {sorted(unknown)} for {cls.name}")
        try:
            model = cls(cls.Config(**config))
        except (TypeError, ValueError) as e:
            raise CxrbenchError(f"{cfg_path}: config does not build a {cls.name} ({e})") from None
        try:
            state = torch.load(weights_path, map_location=map_location, weights_only=True)
        except Exception as e:  # a pickle with code in it, or a truncated file
            raise CxrbenchError(f"{weights_path}: cannot be loaded as plain weights ({e.__class__.__name__})") from None
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:  # other shapes / keys, or not a state dict at all
            first = str(e).strip().splitlines()[0][:200]
            raise CxrbenchError(f"{weights_path}: does not match {cfg_path.name} ({first})") from None
        model.eval()
        return model


class Generator(PretrainedMixin, nn.Module):
    """Base class for generators. Subclasses set ``name``, ``Config`` and implement ``sample``."""

    conditional: ClassVar[bool] = False

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` images, float32 ``(n, 1, H, W)`` in ``[0, 1]``; ``labels`` is ``(n, L)`` for conditional models."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# sampling: the one loop that `cxrbench sample` and `evaluate_generator` share


def batch_seed(seed: int, b: int) -> int:
    """The seed of batch ``b`` of a draw seeded ``seed``.

    Distinct over (seed, batch) pairs while b < 1,000,003, so draws with neighbouring seeds share no batch
    (``seed + b`` would: for any seed s, batch 1 is seed s+1, batch 0); each batch is reproducible on its own.
    """
    return seed * 1_000_003 + b


@dataclasses.dataclass
class SampleBatch:
    start: int  # index of the batch's first image in the draw
    images: torch.Tensor  # (m, 1, H, W) float32 in [0, 1], on the CPU
    labels: torch.Tensor | None  # (m, L) requested labels (LABELS order), None for unconditional draws
    seed: int  # batch_seed(seed, b): the seed ``sample`` was called with


def iter_samples(generator, n: int, *, labels=None, seed: int = 0, batch_size: int = 64, prompt: str | None = None,
                 sample_fn=None) -> Iterator[SampleBatch]:
    """Draw ``n`` images from ``generator`` in batches of ``batch_size``; the images depend on ``seed`` and
    ``batch_size`` only (batch ``b`` is ``sample(m, labels=..., seed=batch_seed(seed, b))``).

    ``labels``: ``(n, L)`` requested labels; a conditional generator given none draws them from its training
    labels with ``seed`` (they are in the yielded batches). ``prompt``: text for every image, for generators
    with ``parse_prompt`` (its labels are the batches' labels). ``sample_fn(m, labels=, seed=)`` replaces
    ``generator.sample`` (classifier-guided latents). ``generator`` is anything with
    ``sample(n, labels=None, seed=None)`` returning float32 ``(n, 1, H, W)`` in ``[0, 1]``.
    """
    if n < 1 or batch_size < 1:
        raise UsageError(f"sampling needs n >= 1 and batch size >= 1 (got n={n}, batch size={batch_size})")
    name = getattr(generator, "name", "") or type(generator).__name__
    if prompt is not None:
        if not hasattr(generator, "parse_prompt"):
            raise UsageError(f"{name} takes no text prompt (ldm does); use labels")
        labels = generator.parse_prompt(prompt)[0].reshape(1, -1).expand(n, -1)  # the requested labels
    elif labels is None and getattr(generator, "conditional", False):
        labels = generator.draw_labels(n, seed=seed)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.float32)
        if labels.ndim != 2 or len(labels) != n:
            raise UsageError(f"labels must be ({n}, L), one row per image; got {tuple(labels.shape)}")
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        s = batch_seed(seed, b)
        lab = None if labels is None else labels[start : start + m].contiguous()
        if sample_fn is not None:
            imgs = sample_fn(m, labels=lab, seed=s)
        elif prompt is not None:
            imgs = generator.sample(m, prompts=prompt, seed=s)
        else:
            imgs = generator.sample(m, labels=lab, seed=s)
        if not torch.is_tensor(imgs) or imgs.ndim != 4 or imgs.shape[:2] != (m, 1) or imgs.dtype != torch.float32:
            got = f"{tuple(imgs.shape)} {imgs.dtype}" if torch.is_tensor(imgs) else type(imgs).__name__
            raise DataError(f"{name}.sample returned {got}, not ({m}, 1, H, W) float32")
        yield SampleBatch(start, imgs.detach().cpu().clamp(0, 1), lab, s)


def sample_images(generator, n: int, **kwargs) -> torch.Tensor:
    """``n`` images ``(n, 1, H, W)`` from :func:`iter_samples` (same keywords), concatenated."""
    return torch.cat([b.images for b in iter_samples(generator, n, **kwargs)])
