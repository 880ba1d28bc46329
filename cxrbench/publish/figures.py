"""The leaderboard's pictures: per-metric dot plots, learning curves (SVG) and sample thumbnails (PNG).

Byte-stable: matplotlib SVG with a fixed hash salt and no date metadata; PNGs without time or text chunks.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from PIL import Image

from .entry import safe_relpath, samples_folder

THUMB_COUNT, THUMB_COLS, THUMB_SIZE = 32, 8, 64  # the model card's grid
STRIP_COUNT, STRIP_SIZE = 6, 32  # the headline table's sample strip: one row of small tiles
_RC = {"svg.hashsalt": "cxrbench", "svg.fonttype": "none", "font.size": 9}


def _figure(width: float, height: float):
    # matplotlib is heavy: imported where a plot is drawn, so loading entries does not pay for it
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _svg(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def metric_plot_svg(key: str, hib: bool, rows: list[tuple[str, dict]], *, title_suffix: str = "") -> bytes | None:
    """Dot-and-CI plot, best at the top; per row, the real-vs-real floor (red bar) and the entry's own value at
    the floor's sizes (open circle): the floor is only comparable with the latter (matched N)."""
    import matplotlib

    pts = [(label, m) for label, m in rows if m is not None and m.get("value") is not None]
    if not pts:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(6.0, 0.9 + 0.32 * len(pts))
        ax = fig.add_subplot()
        ys = list(range(len(pts)))[::-1]
        for y, (_, m) in zip(ys, pts):
            ci = m.get("ci")
            if ci and ci[0] is not None and ci[1] is not None:
                ax.plot([ci[0], ci[1]], [y, y], color="#4c72b0", lw=2, solid_capstyle="butt")
        ax.plot([m["value"] for _, m in pts], ys, "o", color="#1f3b73" if not title_suffix else "#888888", ms=5)
        fl = [(y, m) for y, (_, m) in zip(ys, pts) if m.get("real_vs_real") is not None]
        if fl:
            ax.plot([m["real_vs_real"] for _, m in fl], [y for y, _ in fl], "|", color="#c44e52", ms=12, mew=2,
                    label="real vs real @ its N")
            mt = [(y, m["value_at_real_vs_real_n"]) for y, m in fl if m.get("value_at_real_vs_real_n") is not None]
            if mt:
                ax.plot([v for _, v in mt], [y for y, _ in mt], "o", mfc="none", color="#c44e52", ms=6,
                        label="samples @ the floor's N")
            ax.legend(loc="best", frameon=False, fontsize=7)
        ax.set_yticks(ys, [label for label, _ in pts])
        ax.set_ylim(-0.7, len(pts) - 0.3)
        ax.set_title(f"{key} ({'higher' if hib else 'lower'} is better){title_suffix}")
        ax.grid(axis="x", color="#dddddd", lw=0.6)
        return _svg(fig)


def learning_curve_svg(key: str, hib: bool, curves: list[tuple[str, list[dict]]], floor: float | None) -> bytes:
    """``key`` with its CI against training CPU minutes, one line per model; the samples per point (N) in the
    title, per model where they differ; the real-vs-real floor as a dashed line when the group has one."""
    import matplotlib

    ns = sorted({p["n_samples"] for _, pts in curves for p in pts})
    n_text = f"N = {ns[0]} samples per point" if len(ns) == 1 else f"N = {ns[0]}-{ns[-1]} samples per point"
    with matplotlib.rc_context(_RC):
        fig = _figure(6.4, 3.6)
        ax = fig.add_subplot()
        for label, pts in curves:
            xs = [p["cpu_minutes"] for p in pts]
            own_n = "/".join(sorted({str(p["n_samples"]) for p in pts}))
            line, = ax.plot(xs, [p["value"] for p in pts], "o-", ms=4, lw=1.5,
                            label=label if len(ns) == 1 else f"{label} (N {own_n})")
            lo = [p["ci"][0] if p["ci"] else p["value"] for p in pts]
            hi = [p["ci"][1] if p["ci"] else p["value"] for p in pts]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        if floor is not None:
            ax.axhline(floor, color="#c44e52", ls="--", lw=1, label="real vs real floor")
        values = [p["value"] for _, pts in curves for p in pts] + ([floor] if floor is not None else [])
        if min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")  # early checkpoints sit orders of magnitude above the last ones
        ax.set_xlabel("training CPU minutes")
        ax.set_ylabel(f"{key} ({'higher' if hib else 'lower'} is better)")
        # a biased metric's interval is for its bias-corrected estimate (below the value at N): the caption says so
        ax.set_title(f"{key} at N (points) and 95% interval (band); {n_text}", fontsize=8)
        ax.grid(color="#dddddd", lw=0.6)
        ax.legend(loc="best", frameon=False, fontsize=7)
        return _svg(fig)


def _sample_paths(e: dict, entries_dir: str | os.PathLike, count: int) -> list[Path] | None:
    """The entry's first ``count`` sample files when they are all in the repository, else None (a reference row
    of real images, which are not redistributed, or samples elsewhere)."""
    folder = samples_folder(e, entries_dir, e.get("_file", e["slug"]))
    if folder is None:
        return None
    paths = [folder / safe_relpath(f["path"], e["slug"]) for f in e["samples"]["files"][:count]]
    if not paths or not all(p.is_file() for p in paths):
        return None
    return paths


def _tile_grid(paths: list[Path], cols: int, size: int) -> bytes:
    rows = math.ceil(len(paths) / cols)
    grid = Image.new("L", (cols * size, rows * size), 255)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            tile = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
        grid.paste(tile, ((i % cols) * size, (i // cols) * size))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=False)  # no time or text chunks: the bytes depend on the pixels only
    return buf.getvalue()


def thumbnail_grid(e: dict, entries_dir: str | os.PathLike) -> bytes | None:
    """A PNG grid of the entry's first ``THUMB_COUNT`` samples (in file order), each at ``THUMB_SIZE`` px; None
    when the samples are not in the repository."""
    paths = _sample_paths(e, entries_dir, THUMB_COUNT)
    return None if paths is None else _tile_grid(paths, THUMB_COLS, THUMB_SIZE)


def sample_strip(e: dict, entries_dir: str | os.PathLike) -> bytes | None:
    """One row of the entry's first ``STRIP_COUNT`` samples at ``STRIP_SIZE`` px, for the headline table."""
    paths = _sample_paths(e, entries_dir, STRIP_COUNT)
    return None if paths is None else _tile_grid(paths, STRIP_COUNT, STRIP_SIZE)
