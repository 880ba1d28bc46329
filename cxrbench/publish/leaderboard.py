"""Render the leaderboard: README.md and index.html from one table model (``cxrbench.publish.board``),
through the jinja2 templates in ``cxrbench/publish/templates/``.

index.html is rendered with autoescaping; README.md with a Markdown escaper applied to every value the
template prints (entries are untrusted: a card's text must not become a link, an HTML tag or an entity).
Values that are already safe Markdown (slugs and paths the board built) are marked with the ``raw`` filter.

Rendering is byte-stable: the same entries give the same README.md, index.html and plots (entries sorted by
slug, no timestamps, matplotlib SVG with a fixed hash salt and no date metadata, PNGs without metadata).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jinja2

from ..fileio import write_output
from .board import Board, build_board

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~])")
# a number or an interval the board formatted ("0.700", "[0.590, 0.780]"): no link, tag or entity can hide in it
_NUMERIC = re.compile(r"^\[?-?[0-9.]+(e[-+][0-9]+)?(, -?[0-9.]+(e[-+][0-9]+)?)?\]?$")


class MdSafe(str):
    """Text that is Markdown already (a slug, a path the board made): printed as is."""


def md_escape(value: Any) -> str:
    """Any value into Markdown text: backslash-escapes what Markdown or GitHub's HTML would interpret (``<``
    and ``&`` too, so no tag or entity survives; CommonMark renders ``\\<`` as ``<``), one line."""
    if isinstance(value, MdSafe):
        return value
    text = "" if value is None else str(value)
    if _NUMERIC.match(text):
        return text
    return _MD_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def _loader() -> jinja2.BaseLoader:
    return jinja2.PackageLoader("cxrbench.publish", "templates")


def markdown_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=_loader(), autoescape=False, finalize=md_escape, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["raw"] = MdSafe
    return env


def html_env() -> jinja2.Environment:
    return jinja2.Environment(loader=_loader(), autoescape=True, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def render_markdown(board: Board) -> str:
    text = markdown_env().get_template("leaderboard.md.j2").render(board=board)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"  # blank lines between blocks, one each


def render_html(board: Board) -> str:
    return html_env().get_template("leaderboard.html.j2").render(board=board)


def build(
    entries: list[dict], *, out_dir: str | os.PathLike, entries_dir: str | os.PathLike, rank_by: str | None = None
) -> dict[str, bytes]:
    """The leaderboard's files as ``{path relative to out_dir: bytes}`` (README.md, index.html first, then
    plots/*.svg and thumbs/*.png), without writing anything; links to entry files are relative to ``out_dir``."""
    board = build_board(entries, out_dir=out_dir, entries_dir=entries_dir, rank_by=rank_by)
    return {
        "README.md": render_markdown(board).encode(),
        "index.html": render_html(board).encode(),
        **board.pictures(),
    }


def render(
    entries: list[dict], out_dir: str | os.PathLike, *, entries_dir: str | os.PathLike, rank_by: str | None = None
) -> list[Path]:
    """Write ``README.md``, ``index.html``, ``plots/*.svg`` and ``thumbs/*.png`` under ``out_dir``; returns the
    paths written. Stale plots and thumbnails (from entries since removed) are deleted: those folders belong
    to the renderer."""
    out = Path(out_dir)
    files = build(entries, out_dir=out, entries_dir=entries_dir, rank_by=rank_by)
    out.mkdir(parents=True, exist_ok=True)
    for sub, pattern in (("plots", "*.svg"), ("thumbs", "*.png")):
        if (out / sub).is_dir():
            for stale in sorted((out / sub).glob(pattern)):
                if f"{sub}/{stale.name}" not in files:
                    stale.unlink()
    for name, data in files.items():
        write_output(out / name, data)
    return [out / name for name in files]
