"""Generator interface shared by the bundled baselines and outside models.

A generator is a folder (``config.json`` + ``model.pt``), loaded with ``torch.load(weights_only=True)``;
``sample`` returns the image contract: float32 ``(N, 1, H, W)`` in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
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
    # torch names the zip's inner folder after the file: saving under the final name (in a temporary folder
    # beside it) makes identical weights give identical bytes, hence the same sha256, on every save
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        torch.save(obj, tmpdir / path.name)
        os.chmod(tmpdir / path.name, _PUBLIC_MODE)
        os.replace(tmpdir / path.name, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; anything else is a CxrbenchError naming the file."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CxrbenchError(f"{path}: not readable JSON ({e}); re-save the model folder") from None
    if not isinstance(meta, dict):
        raise CxrbenchError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    return meta


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
        meta = read_json_object(cfg_path)
        config = meta.get("config", {})
        if not isinstance(config, dict):
            raise CxrbenchError(f"{cfg_path}: 'config' must be an object of {cls.name} Config fields")
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
