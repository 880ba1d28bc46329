"""HTML + Markdown report of one result: the metric table, image grids and per-metric figures.

``write_report(result, out_dir)`` writes ``report.html`` (self-contained: every figure is a base64 PNG data
URI, no scripts or styles from elsewhere, so it opens from disk or an e-mail attachment) and ``report.md``
with the same content, its figures as PNG files beside it. The table renders whatever metrics the result
has, and a per-condition table when the result has a ``per_condition`` block (conditional samples).

Figures come from the metrics themselves: for every metric the result ran (``metric_versions``) that is
registered here (``cxrbench.registry.METRICS``), its ``figures(key, value)`` hook returns ``FigureSpec``s for
its stored outputs, and this module draws each with the renderer of its kind (``RENDERERS``): the KS D
histogram, FD against 1/N, per-label prevalence or AUROC bars, nearest sample/training pairs. A metric not
registered here (a plug-in not installed) gets no figures.

Images are re-read from the result's ``samples`` / ``reference`` / ``train_reference`` paths; when those
are gone the grids are left out with a note, and the rest of the report still renders.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.imageset import scan_folder
from ..data.io import ARRAY_SUFFIXES, load_array_file, load_image
from ..errors import DataError
from ..fileio import write_output
from ..metrics.base import FigureSpec
from ..registry import METRICS
from ..results import ci_text, floor_text, load, validate

GRID_IMAGES = 16  # images per grid (4 x 4)
N_PAIRS = 6  # memorization pairs shown


@dataclass
class _Figure:
    name: str  # file stem, also the anchor
    title: str
    png: bytes
    caption: str = ""


@dataclass
class _Report:
    figures: list[_Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pairs: list[tuple[str, dict]] = field(default_factory=list)  # (metric key, nearest sample/training pair)


# --- formatting -------------------------------------------------------------------------------------------

def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)


def metric_rows(result: dict) -> list[dict]:
    """One row per metric key: the strings shown in both the HTML and the Markdown table."""
    return _rows(result["metrics"])


def condition_rows(result: dict) -> tuple[list[dict], list[str]]:
    """The per-condition table (rows as ``metric_rows`` plus ``condition``) and one line per skipped condition,
    skipped metric and flagged (not valid) value.

    Empty for unconditional samples (no ``per_condition`` block)."""
    rows, skipped = [], []
    for lab, c in ((result.get("per_condition") or {}).get("conditions") or {}).items():
        counts = f"{c['n_samples']}/{c['n_reference']}"
        if "skipped" in c:
            skipped.append(f"{lab} ({counts}): {c['skipped']}")
            continue
        rows += [{**r, "condition": lab, "counts": counts} for r in _rows(c["metrics"])]
        skipped += [f"{lab}: skipped {n}: {why}" for n, why in (c.get("skipped_metrics") or {}).items()]
        skipped += [f"{lab}: {k} not valid: {m['reason']}" for k, m in c["metrics"].items() if m.get("reason")]
    return rows, skipped


def condition_caption(result: dict) -> str:
    pc = result.get("per_condition") or {}
    return (f"samples requested with each label against the reference images that carry it (at least "
            f"{pc.get('min_samples')} samples and {pc.get('min_reference')} reference images); CIs and floors "
            "are the condition's own; No Finding is healthy")


def _rows(metrics: dict) -> list[dict]:
    rows = []
    for key, m in metrics.items():
        rows.append({
            "key": key,
            "arrow": "\u2191" if m["higher_is_better"] else "\u2193",
            "better": "higher" if m["higher_is_better"] else "lower",
            "value": _fmt(m["value"]),
            "ci": ci_text(m),
            "floor": floor_text(m),
            "n": f"{m.get('n_gen', '-')}/{m.get('n_ref', '-')}",
        })
    return rows


# --- figures ----------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display; safe inside servers and tests
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _resolve(path: str | None, base: Path | None) -> Path | None:
    """An existing file or folder: as written in the result, or relative to the result file's folder."""
    if not path:
        return None
    for p in (Path(path), (base / path) if base is not None else None):
        if p is not None and p.exists():
            return p
    return None


def _pick_images(desc: dict | None, base: Path | None, k: int, seed: int) -> tuple[list[np.ndarray], str | None]:
    """Up to ``k`` seeded-random images of a set, or ([], why not)."""
    if not desc:
        return [], "not part of this result"
    p = _resolve(desc.get("path"), base)
    if p is None:
        return [], f"{desc.get('path')} is not available here, so its images are not shown"
    rng = np.random.default_rng(seed)
    try:
        if p.is_dir():
            ids, _ = scan_folder(p)
            pick = sorted(rng.choice(len(ids), size=min(k, len(ids)), replace=False)) if ids else []
            return [load_image(p / ids[i]) for i in pick], None
        if p.suffix.lower() in ARRAY_SUFFIXES:
            arr = load_array_file(p)
            pick = sorted(rng.choice(len(arr), size=min(k, len(arr)), replace=False))
            return [np.asarray(arr[i], dtype=np.float32).squeeze() for i in pick], None
    except (DataError, OSError) as e:
        return [], f"{p}: images could not be read ({e})"
    return [], f"{p} is neither a folder nor an array file"


def _grid_figure(images: list[np.ndarray]):
    plt = _plt()
    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im in zip(axes.ravel(), images):
        ax.imshow(im, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    return _png(fig)


def _image_grids(result: dict, base: Path | None, rep: _Report, seed: int) -> None:
    for role, label in (("samples", "Generated (samples)"), ("reference", "Real (reference)")):
        images, why = _pick_images(result.get(role), base, GRID_IMAGES, seed)
        if why:
            rep.notes.append(f"{label} image grid omitted: {why}.")
        elif images:
            rep.figures.append(_Figure(f"grid_{role}", label, _grid_figure(images),
                                       f"{len(images)} random images from {result[role]['path']}"))


def _prevalence_figure(key: str, prev: dict) -> bytes:
    plt = _plt()
    labels = list(prev)
    y = np.arange(len(labels))
    get = lambda s: [np.nan if prev[k].get(s) is None else float(prev[k][s]) for k in labels]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(labels) + 1.2))
    ax.barh(y - 0.2, get("samples"), height=0.4, color="tab:orange", label="samples")
    ax.barh(y + 0.2, get("reference"), height=0.4, color="tab:blue", label="reference")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("prevalence")
    ax.set_title(f"{key}: per-label prevalence")
    ax.legend(loc="lower right")
    return _png(fig)


def _per_label_figure(key: str, per_label: dict, ceiling: dict | None) -> bytes:
    plt = _plt()
    labels = list(per_label)
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(labels) + 1.2))
    vals = [np.nan if per_label[k] is None else per_label[k] for k in labels]
    ax.barh(y, vals, color="tab:orange", label="samples")
    if ceiling:
        ax.scatter([ceiling.get(k, np.nan) for k in labels], y, color="tab:blue", zorder=3, label="reference")
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_title(f"{key}: per label")
    ax.legend(loc="lower right")
    return _png(fig)


def _ks_figure(key: str, m: dict) -> bytes:
    plt = _plt()
    dims = m["dims"]
    d = np.array([v["d"] for v in dims.values()], dtype=float)
    rej = np.array([bool(v.get("rejected")) for v in dims.values()])
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, max(float(d.max()), 1e-3) * 1.05, 21)
    ax.hist([d[~rej], d[rej]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
            label=["not rejected", "rejected (BH)"])
    if m.get("worst") is not None and m.get("max_d") is not None:
        ax.axvline(m["max_d"], color="k", ls=":", lw=1)
        ax.annotate(str(m["worst"]), (m["max_d"], ax.get_ylim()[1] * 0.9), ha="right", fontsize=8)
    ax.set_xlabel("KS D per dimension")
    ax.set_ylabel("dimensions")
    ax.set_title(f"{key}: {int(rej.sum())}/{len(d)} rejected")
    ax.legend()
    return _png(fig)


def _fd_figure(key: str, m: dict) -> bytes:
    plt = _plt()
    sizes = np.asarray(m["sizes"], dtype=float)
    fd = np.asarray(m["fd"], dtype=float)
    inv = 1.0 / sizes
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.scatter(inv, fd, color="tab:blue", label="FD of N generated")
    if m.get("value") is not None and m.get("slope") is not None:
        xs = np.linspace(0, inv.max(), 50)
        icpt = m.get("fit_intercept", m["value"])  # the value is clipped at 0; the line is the fit itself
        ax.plot(xs, icpt + m["slope"] * xs, color="tab:orange", label="fit FD = FD_inf + b/N")
        ax.scatter([0], [icpt], color="tab:orange", marker="*", s=120, zorder=3,
                   label=f"FD_inf = {_fmt(m['value'])}")
    n_floor = m.get("real_vs_real_n")
    if m.get("real_vs_real") is not None and n_floor:  # the floor's FD_inf at its own sizes, not a level line
        ax.scatter([0], [m["real_vs_real"]], color="gray", marker="_", s=200, zorder=3,
                   label=f"real vs real FD_inf @{n_floor[0]}/{n_floor[1]}")
    ax.set_xlabel("1 / N")
    ax.set_ylabel("FD")
    ax.set_xlim(left=0)
    ax.set_title(f"{key}: FD against 1/N")
    ax.legend(fontsize=8)
    return _png(fig)


def _pairs_figure(key: str, pairs: list[dict], gen_root: Path, train_root: Path) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.8 * len(pairs), 4.0), squeeze=False)
    for j, p in enumerate(pairs):
        for row, (root, rel, who) in enumerate(((gen_root, p["sample"], "sample"), (train_root, p["train"], "train"))):
            ax = axes[row, j]
            ax.imshow(load_image(root / rel), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(who)
        axes[0, j].set_title(f"d = {_fmt(p.get('distance'))}", fontsize=8)
    fig.suptitle(f"{key}: closest generated / training pairs", fontsize=10)
    return _png(fig)


def _memorization_figure(spec: FigureSpec, result: dict, base: Path | None) -> bytes | str:
    gen_root = _resolve((result.get("samples") or {}).get("path"), base)
    train_root = _resolve((result.get("train_reference") or {}).get("path"), base)
    pairs = spec.data[:N_PAIRS]
    ok = gen_root is not None and train_root is not None and gen_root.is_dir() and train_root.is_dir() and all(
        (gen_root / p["sample"]).is_file() and (train_root / p["train"]).is_file() for p in pairs)
    if not ok:
        return (f"{spec.key}: nearest-pair images omitted (sample or training folder not available here); "
                "the pairs are listed in the table below.")
    try:
        return _pairs_figure(spec.key, pairs, gen_root, train_root)
    except DataError as e:
        return f"{spec.key}: nearest-pair images omitted ({e})."


#: figure kind (``FigureSpec.kind``) -> ``(spec, result, base_dir) -> PNG bytes, or a note saying why not drawn``
RENDERERS = {
    "ks_histogram": lambda spec, result, base: _ks_figure(spec.key, spec.data),
    "fd_against_1_over_n": lambda spec, result, base: _fd_figure(spec.key, spec.data),
    "prevalence": lambda spec, result, base: _prevalence_figure(spec.key, spec.data),
    "per_label": lambda spec, result, base: _per_label_figure(spec.key, spec.data["per_label"],
                                                              spec.data.get("reference_per_label")),
    "nearest_pairs": _memorization_figure,
}


def figure_specs(result: dict) -> list[FigureSpec]:
    """Every figure the result's metrics ask for, in the order of the result's metric keys.

    A metric is found by name (``metric_versions``) in the registry; its output keys for the result's extractors
    (``output_keys``) name the values it gets. Metrics not registered here (and protocols' own keys) get none.
    """
    owner = {}
    extractors = list(result.get("extractors") or {})
    for name in result.get("metric_versions") or {}:
        if name in METRICS:
            metric = METRICS.get(name)()
            owner.update({key: metric for key in metric.output_keys(extractors)})
    return [spec for key, value in result["metrics"].items() if key in owner
            for spec in owner[key].figures(key, value)]


def _metric_figures(result: dict, base: Path | None, rep: _Report) -> None:
    for spec in figure_specs(result):
        if spec.kind == "nearest_pairs":  # listed in a table too, whether or not the images can be shown
            rep.pairs += [(spec.key, p) for p in spec.data[:N_PAIRS]]
        if spec.kind == "note":
            rep.notes.append(spec.caption)
            continue
        draw = RENDERERS.get(spec.kind)
        if draw is None:
            rep.notes.append(f"{spec.key}: figure {spec.title or spec.name!r} not drawn (this cxrbench draws no "
                             f"{spec.kind!r} figures; known kinds: {', '.join(sorted(RENDERERS))}).")
            continue
        png = draw(spec, result, base)
        if isinstance(png, str):
            rep.notes.append(png)
        else:
            rep.figures.append(_Figure(spec.name, spec.title, png, spec.caption))


# --- writers ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff6dd;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0}
.warn{background:#fde8e8;border-left:4px solid #c00;padding:.4em .8em}
figure{margin:1.5em 0}figure.grid{display:inline-block;width:48%;margin:1em 1% 1em 0;vertical-align:top}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
"""

# sets <body data-images-loaded="N/M"> once every image has decoded: lets a headless browser check them
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""


def _summary(result: dict) -> list[tuple[str, str]]:
    s, r = result["samples"], result["reference"]
    out = [
        ("samples", f"{s.get('path')} ({s.get('n_used', s.get('n'))} images, split {s.get('split', 'all')})"),
        ("reference", f"{r.get('path')} ({r.get('n_used', r.get('n'))} images, split {r.get('split', 'all')})"),
    ]
    if result.get("train_reference"):
        out.append(("train reference", f"{result['train_reference'].get('path')} ({result['train_reference'].get('n')} images)"))
    out += [
        ("extractors", ", ".join(f"{k} ({v.get('weights', '?')})" for k, v in result["extractors"].items())),
        ("protocol", f"{result['protocol'].get('name')} v{result['protocol'].get('version')}"),
        ("cxrbench", f"{result.get('cxrbench_version')} (git {str(result.get('git_hash') or '-')[:12]})"),
        ("created", str(result.get("created", "-"))),
        ("device", str(result.get("device", "-"))),
    ]
    return out


def render_html(result: dict, rep: _Report) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>cxrbench report</title>", f"<style>{_CSS}</style>", f"<script>{_SCRIPT}</script>",
             "</head><body>", "<h1>cxrbench report</h1>"]
    if not result["comparable"]:
        why = "; ".join(result.get("not_comparable_because", [])) or "see config"
        parts.append(f'<p class="warn"><b>Not comparable</b> with published numbers: {e(why)}</p>')
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary(result))
                 + "</table>")
    parts.append("<h2>Metrics</h2>")
    parts.append("<table><tr><th>metric</th><th>better</th><th>value</th><th>95% CI</th>"
                 "<th>real vs real (noise floor) @N (samples @N)</th><th>n gen/ref</th></tr>")
    for r in metric_rows(result):
        parts.append(f'<tr data-metric="{e(r["key"])}"><td>{e(r["key"])}</td><td title="{r["better"]} is better">'
                     f'{r["arrow"]} {r["better"]}</td><td class="num">{e(r["value"])}</td>'
                     f'<td class="num">{e(r["ci"])}</td><td class="num">{e(r["floor"])}</td>'
                     f'<td class="num">{e(r["n"])}</td></tr>')
    parts.append("</table>")
    cond, cond_skipped = condition_rows(result)
    if cond or cond_skipped:
        parts.append(f"<h2>Per condition</h2><p>{e(condition_caption(result))}</p>")
    if cond:
        parts.append("<table><tr><th>condition</th><th>n gen/ref</th><th>metric</th><th>better</th><th>value</th>"
                     "<th>95% CI</th><th>real vs real (noise floor) @N (samples @N)</th></tr>")
        for r in cond:
            parts.append(f'<tr data-condition="{e(r["condition"])}" data-metric="{e(r["key"])}">'
                         f'<td>{e(r["condition"])}</td><td class="num">{e(r["counts"])}</td><td>{e(r["key"])}</td>'
                         f'<td>{r["arrow"]} {r["better"]}</td><td class="num">{e(r["value"])}</td>'
                         f'<td class="num">{e(r["ci"])}</td><td class="num">{e(r["floor"])}</td></tr>')
        parts.append("</table>")
    for line in cond_skipped:
        parts.append(f'<p class="note">condition {e(line)}</p>')
    for name, why in (result.get("skipped_metrics") or {}).items():
        parts.append(f'<p class="note">skipped {e(name)}: {e(str(why))}</p>')
    for w in result.get("warnings") or []:
        parts.append(f'<p class="note">warning: {e(str(w))}</p>')
    for n in rep.notes:
        parts.append(f'<p class="note">{e(n)}</p>')
    if rep.figures:
        parts.append("<h2>Figures</h2>")
    for f in rep.figures:
        data = base64.b64encode(f.png).decode("ascii")
        cls = ' class="grid"' if f.name.startswith("grid_") else ""
        parts.append(f'<figure id="{e(f.name)}"{cls}><h3>{e(f.title)}</h3>'
                     f'<img alt="{e(f.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{e(f.caption)}</figcaption></figure>")
    pairs = rep.pairs
    if pairs:
        parts.append("<h2>Closest generated/training pairs</h2><table><tr><th>metric</th><th>sample</th>"
                     "<th>training image</th><th>distance</th></tr>")
        parts += [f"<tr><td>{e(k)}</td><td>{e(str(p.get('sample')))}</td><td>{e(str(p.get('train')))}</td>"
                  f'<td class="num">{e(_fmt(p.get("distance")))}</td></tr>' for k, p in pairs]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(s) -> str:
    """Text from a result into Markdown, escaped as report.html escapes it: Markdown renderers pass raw HTML
    through (a crafted result could carry ``<script>`` or ``<img onerror>``), and backslashes keep links,
    code, emphasis and table cells from being made out of it."""
    s = html.escape(str(s), quote=False)
    return re.sub(r"([\\`*\[\]|])", r"\\\1", s).replace("\r", " ").replace("\n", " ")


def render_markdown(result: dict, rep: _Report, figure_files: dict[str, str]) -> str:
    c = _md_cell
    lines = ["# cxrbench report", ""]
    if not result["comparable"]:
        lines += [f"> **Not comparable** with published numbers: "
                  f"{c('; '.join(result.get('not_comparable_because', [])) or 'see config')}", ""]
    lines += [f"- **{k}**: {c(v)}" for k, v in _summary(result)] + ["", "## Metrics", ""]
    lines += ["| metric | better | value | 95% CI | real vs real (noise floor) @N (samples @N) | n gen/ref |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {c(r['key'])} | {r['arrow']} {r['better']} | {c(r['value'])} | {c(r['ci'])} | {c(r['floor'])} | "
              f"{c(r['n'])} |" for r in metric_rows(result)]
    lines.append("")
    cond, cond_skipped = condition_rows(result)
    if cond or cond_skipped:
        lines += ["## Per condition", "", condition_caption(result), ""]
    if cond:
        lines += ["| condition | n gen/ref | metric | better | value | 95% CI | real vs real (noise floor) @N (samples @N) |",
                  "|---|---:|---|---|---:|---:|---:|"]
        lines += [f"| {c(r['condition'])} | {c(r['counts'])} | {c(r['key'])} | {r['arrow']} {r['better']} | "
                  f"{c(r['value'])} | {c(r['ci'])} | {c(r['floor'])} |" for r in cond]
        lines.append("")
    lines += [f"> condition {c(line)}" + "\n" for line in cond_skipped]
    notes = [f"skipped {n}: {w}" for n, w in (result.get("skipped_metrics") or {}).items()]
    notes += [f"warning: {w}" for w in result.get("warnings") or []] + rep.notes
    lines += [f"> {c(n)}" + "\n" for n in notes]
    if rep.figures:
        lines += ["## Figures", ""]
    for f in rep.figures:
        lines += [f"### {c(f.title)}", "", f"![{c(f.title)}]({figure_files[f.name]})", "",
                  f"*{c(f.caption)}*" if f.caption else "", ""]
    pairs = rep.pairs
    if pairs:
        lines += ["## Closest generated/training pairs", "", "| metric | sample | training image | distance |",
                  "|---|---|---|---:|"]
        lines += [f"| {c(k)} | {c(p.get('sample'))} | {c(p.get('train'))} | {c(_fmt(p.get('distance')))} |"
                  for k, p in pairs]
    return "\n".join(lines).rstrip() + "\n"


def build(result: dict, *, base_dir: str | os.PathLike | None = None, seed: int = 0) -> _Report:
    """Every figure and note of the report (images re-read from disk where available)."""
    base = Path(base_dir) if base_dir is not None else None
    rep = _Report()
    rep.notes += [f"{k} not valid: {m['reason']}" for k, m in result["metrics"].items() if m.get("reason")]
    _image_grids(result, base, rep, seed)
    _metric_figures(result, base, rep)
    return rep


def write_report(result: dict, out_dir: str | os.PathLike, *, base_dir: str | os.PathLike | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/report.html``, ``out_dir/report.md`` and the ``.md``'s PNG figures; return the paths.

    ``base_dir``: where relative image paths in the result are also looked for (the result file's folder).
    """
    validate(result, "result")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; pass --out a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: the report folder cannot be created ({e.strerror or e}); pass a writable --out") from None
    rep = build(result, base_dir=base_dir, seed=seed)
    files = {}
    for f in rep.figures:
        files[f.name] = re.sub(r"[^A-Za-z0-9_.-]", "_", f.name) + ".png"  # metric keys are free-form
        write_output(out / files[f.name], f.png)
    paths = {"html": out / "report.html", "md": out / "report.md"}
    write_output(paths["html"], render_html(result, rep).encode("utf-8"))
    write_output(paths["md"], render_markdown(result, rep, files).encode("utf-8"))
    return paths


def load_and_write(path: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int = 0) -> dict[str, Path]:
    path = Path(path)
    return write_report(load(path), out_dir, base_dir=path.resolve().parent, seed=seed)


__all__ = ["RENDERERS", "condition_rows", "figure_specs", "load_and_write", "metric_rows", "render_html",
           "render_markdown", "write_report"]
