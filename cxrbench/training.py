"""What ``cxrbench train`` hands a registered trainable model, and its ``Config`` files.

A trainable model (a generator or representation model) has a ``Config`` dataclass and a class-level
``train(dataset, config, out_dir, *, options=TrainOptions(...), device=...)``; the bundled baselines'
trainer (``baselines/trainer.py``) is one implementation. The core CLI needs only this module, never the
baselines package. A ``--config`` TOML file holds overrides of ``Config`` fields only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .fileio import read_toml


@dataclass
class TrainOptions:
    """How long and how to train; the model's own ``Config`` says what is trained."""

    steps: int | None = None  # total optimisation steps (a resumed run counts the steps already done)
    epochs: float | None = None  # total passes over the data; with ``steps``, whichever ends first
    max_minutes: float | None = None  # wall-clock budget of this call
    # CPU time of the whole run (resumed calls included), this process's own: a budget that other load on
    # the machine does not shrink, which a recipe states with its thread count
    cpu_minutes: float | None = None
    # CPU minutes of the run at which the model as it stands is also kept, in ``out_dir/cpu-<m>min/`` (a
    # learning curve of one run: the same schedule as the full budget, not shorter runs of their own)
    keep_cpu_minutes: tuple[float, ...] = ()
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    progress: bool = True


def config_to_dict(config) -> dict:
    """JSON form of a config dataclass (tuples become lists), for comparisons and files."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_overrides(config_cls, overrides: dict[str, Any], *, source: str = "config", base=None):
    """``config_cls`` defaults (or ``base``) with ``overrides`` applied; unknown keys and wrong types refused.

    Lists become tuples where the field's default is a tuple (TOML and JSON have no tuples) and ints
    become floats where the default is a float.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {config_cls.__qualname__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    base = base if base is not None else config_cls()
    values = {}
    for key, value in overrides.items():
        default = getattr(base, key)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and value is not None:
            # bool is an int subclass: check it both ways so that `beta = true` is caught
            bad = not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool)
            if bad:
                raise UsageError(
                    f"{source}: {key} = {value!r} should be a {type(default).__name__} "
                    f"(default {default!r})"
                )
        values[key] = value
    try:
        return dataclasses.replace(base, **values)
    except (ValueError, TypeError) as e:  # a Config.__post_init__ check
        raise UsageError(f"{source}: {e}") from e


def load_config_file(path: str | Path, config_cls, *, base=None):
    """A TOML file of overrides of ``config_cls``'s fields (top-level keys only)."""
    path = Path(path)
    overrides = read_toml(path, "config file")
    return config_from_overrides(config_cls, overrides, source=str(path), base=base)
