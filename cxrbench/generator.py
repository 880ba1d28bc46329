"""Generator interface shared by the bundled baselines and outside models.

A generator is a folder (``config.json`` + ``model.pt``), loaded with ``torch.load(weights_only=True)``;
``sample`` returns the image contract: float32 ``(N, 1, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .errors import CxrbenchError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_PUBLIC_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _PUBLIC_MODE)  # mkstemp makes 0600; results and entries are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, _PUBLIC_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)``: a model is a folder, config plus weights."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # a dataclass

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
        meta = json.loads(cfg_path.read_text())
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = set(meta.get("config", {})) - fields
        if unknown:
            raise CxrbenchError(f"{cfg_path}: unknown config keys {sorted(unknown)} for {cls.name}")
        model = cls(cls.Config(**meta.get("config", {})))
        try:
            state = torch.load(weights_path, map_location=map_location, weights_only=True)
        except Exception as e:  # a pickle with code in it, or a truncated file
            raise CxrbenchError(f"{weights_path}: cannot be loaded as plain weights ({e.__class__.__name__})") from e
        model.load_state_dict(state)
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
