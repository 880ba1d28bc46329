"""Flags that mirror ``EvalConfig`` fields read their defaults from it, so no command's default can drift."""

from __future__ import annotations

import dataclasses

from ..config import EvalConfig


def config_default(name: str):
    """The default of ``EvalConfig.<name>``."""
    fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    if name not in fields:
        raise KeyError(f"EvalConfig has no field {name!r}")
    f = fields[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_config_flag(p, field: str, flag: str | None = None, *, help: str = "", **kwargs) -> None:
    """``flag`` (default ``--field-name``) with ``EvalConfig.<field>``'s default, and its type for numbers."""
    default = config_default(field)
    if type(default) in (int, float) and "type" not in kwargs:
        kwargs["type"] = type(default)
    shown = ",".join(default) if isinstance(default, tuple) else default
    help = f"{help} (default {shown})" if help else f"default {shown}"
    p.add_argument(flag or "--" + field.replace("_", "-"), default=default, help=help, **kwargs)


def add_moved_flag(p, old: str, message: str) -> None:
    """``old``, which meant something else here before, refused at parse time with one line saying what to use:
    a flag that changed meaning must not be read in its new sense by a command line written for the old one."""
    import argparse

    class _Moved(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} {message}")

    p.add_argument(old, action=_Moved, nargs="?", help=argparse.SUPPRESS)
