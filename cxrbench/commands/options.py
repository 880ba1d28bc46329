"""Flags that mirror ``EvalConfig`` fields read their defaults from it, so no command's default can drift."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import NESTED_FLAGS, EvalConfig, config_default, config_field


def csv_list(s: str) -> tuple[str, ...]:
    """A comma-separated flag value as a tuple (empty items dropped)."""
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _shown(default) -> str:
    return ",".join(default) if isinstance(default, tuple) else str(default)


def _flagged_fields():
    """``(dest, field, nest)`` for every field that is a flag: ``EvalConfig``'s own (``nest`` None), and the nested
    settings' under their prefix (``augment.n_real`` is ``--augment-n-real``, dest ``augment_n_real``)."""
    for f in dataclasses.fields(EvalConfig):
        if f.name in NESTED_FLAGS:
            for g in dataclasses.fields(f.default_factory):
                yield NESTED_FLAGS[f.name] + g.name, g, f.name
        elif "help" in f.metadata:
            yield f.name, f, None


def add_config_flags(p, only: tuple[str, ...] | None = None) -> None:
    """One flag per ``EvalConfig`` field whose metadata has a help text (or per field in ``only``), its default
    and help read from the field: an int field parses ints, a tuple field a comma-separated list, a bool field is
    a switch (``flag`` names the one that turns a True default off), and the help shows the field's default."""
    for dest, f, nest in _flagged_fields():
        if only is not None and dest not in only:
            continue
        meta, default = f.metadata, config_default(f"{nest}.{f.name}" if nest else f.name)
        kwargs = {"dest": dest, "help": meta["help"]}
        if isinstance(default, bool):
            kwargs.update(action="store_false" if default else "store_true", default=default)
        else:
            kwargs["default"] = meta.get("cli_default", default)
            if "tuple[" in str(f.type):
                kwargs["type"] = csv_list
            elif str(f.type).split(" |")[0] in ("int", "float"):
                kwargs["type"] = int if str(f.type).startswith("int") else float
            if "choices" in meta:
                kwargs["choices"] = list(meta["choices"])
            # a default resolved later is None to argparse: the help names the field's (unless it says how)
            if kwargs["default"] is None and default is not None and "default" not in kwargs["help"].lower():
                kwargs["help"] += f" (default: {_shown(default)})"
        p.add_argument(meta.get("flag", "--" + dest.replace("_", "-")), **kwargs)


def config_values(args) -> dict:
    """The ``EvalConfig`` fields that ``add_config_flags`` made flags of, as parsed (a None standing for a
    default resolved later is left out, so EvalConfig's applies); nested settings as a dict under their field."""
    out: dict = {}
    for dest, f, nest in _flagged_fields():
        value = getattr(args, dest)
        if value is None and "cli_default" in f.metadata:
            continue
        if nest:
            out.setdefault(nest, {})[f.name] = value
        else:
            out[dest] = value
    return out


def add_config_flag(p, field: str, flag: str | None = None, *, help: str | None = None, **kwargs) -> None:
    """``flag`` (default ``--field-name``) with ``EvalConfig.<field>``'s default (a nested one by its dotted name,
    ``augment.n_real``), its type for numbers, and the field's help text unless the command gives its own (where
    the flag means something narrower there, such as stats' ``--seed``)."""
    default = config_default(field)
    help = config_field(field).metadata.get("help", "") if help is None else help
    if type(default) in (int, float) and "type" not in kwargs:
        kwargs["type"] = type(default)
    shown = ",".join(default) if isinstance(default, tuple) else default
    help = f"{help} (default {shown})" if help else f"default {shown}"
    p.add_argument(flag or "--" + field.replace("_", "-"), default=default, help=help, **kwargs)


def add_moved_flag(p, old: str, message: str) -> None:
    """``old``, which meant something else here before, refused at parse time with one line saying what to use:
    a flag that changed meaning must not be read in its new sense by a command line written for the old one."""

    class _Moved(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} {message}")

    p.add_argument(old, action=_Moved, nargs="?", help=argparse.SUPPRESS)
