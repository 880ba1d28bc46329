"""The leaderboard as one table model: what every table shows, in what order, with which numbers.

``build_board`` turns entries into a ``Board`` (groups -> sections -> tables -> rows -> cells, plus the plots
and thumbnails as ``Picture``); ``cxrbench.publish.leaderboard`` renders that one model through two templates,
README.md and index.html, so the two outputs cannot disagree. Every number is formatted here, once: three
significant digits, intervals in brackets.

Per protocol group (see ``cxrbench.publish.ranking``) a section holds
- the headline table: model (rank, name, a strip of samples), the ranking metric with its CI, precision,
  recall, coverage, memorization, label distance and training cost; the real-vs-real floor is one row;
- the learning curve of the ranking metric, where entries carry one;
- the remaining metrics, one compact table per family (with their plots), and each model's values at the
  floor's sample sizes (the only values the floor can be compared with);
- the conditional models' augmentation and per-condition tables, and the reconstruction table of the models
  whose entry has a reconstruction block (``rrs_moco`` on held-out real images).
"""

from __future__ import annotations

import base64
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..registry import METRICS
from . import claims as claims_mod
from . import figures, learning_curve
from .ranking import Group, default_rank_key, group_entries, is_reference_row, ordered

#: headline columns after the ranking metric: (output name of a registered metric, column label)
HEADLINE_COLUMNS = (("precision", "precision"), ("recall", "recall"), ("coverage", "coverage"),
                    ("memorization", "memorization"), ("label_mae", "label distance"))
#: registered metric name -> the family its outputs are folded under (others: their own name)
FAMILIES = {
    "fid": "Fréchet distances", "fd_inf": "Fréchet distances", "kid": "Fréchet distances",
    "prdc": "Precision, recall, density, coverage",
    "ks_features": "Kolmogorov-Smirnov tests", "ks_labels": "Kolmogorov-Smirnov tests",
    "ks_pixels": "Kolmogorov-Smirnov tests",
    "labels": "Label distribution", "label_adherence": "Label distribution",
    "memorization": "Memorization", "reid": "Memorization", "ms_ssim": "Diversity", "rrs_moco": "Reconstruction",
}
DASH = "–"
REFERENCE_NOTE = ("Rows marked reference are real images evaluated exactly as samples are, to give the board its "
                  "scale: they take no rank. Held-out real images (in no training split and not in the reference) "
                  "show what a perfect generator would score; the training images themselves are a perfect "
                  "memorizer, which the memorization metric must flag.")


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    """A file the board writes (``path`` relative to the board) and embeds in index.html as a data URI."""

    path: str
    data: bytes
    alt: str

    @property
    def data_uri(self) -> str:
        mime = "image/svg+xml" if self.path.endswith(".svg") else "image/png"
        return f"data:{mime};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class Cell:
    text: str = DASH  # the value, formatted
    sub: str = ""  # its interval ("[lo, hi]", "not valid") or a detail line
    sort: str = ""  # the value the page sorts by (a number's repr, or text)
    title: str = ""  # a tooltip in index.html
    sep: str = " "  # between text and sub on one line (Markdown)


@dataclass(frozen=True)
class Column:
    key: str  # data-key: the metric key, or a fixed name (model, cost)
    label: str
    hib: bool | None = None  # None: no direction (text, cost)
    title: str = ""

    @property
    def arrow(self) -> str:
        return "" if self.hib is None else ("↑" if self.hib else "↓")


@dataclass(frozen=True)
class Row:
    name: str
    cells: tuple[Cell, ...]
    slug: str = ""  # links to the model card; empty for the floor row
    mark: str = ""  # rank, "ref" or "–"
    kind: str = "model"  # model | reference | floor
    strip: Picture | None = None


@dataclass(frozen=True)
class Table:
    id: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    first: str = "Model"  # the first column's header
    title: str = ""
    note: str = ""
    floor: Row | None = None
    css: str = "sortable"


@dataclass(frozen=True)
class Family:
    title: str
    table: Table | None
    plots: tuple[Picture, ...] = ()


@dataclass(frozen=True)
class Section:
    """The ranked (or the not-ranked) entries of a group."""

    ranked: bool
    rank_key: str | None
    rank_hib: bool
    headline: Table
    curve: Picture | None = None
    families: tuple[Family, ...] = ()
    side_tables: tuple[Table, ...] = ()


@dataclass(frozen=True)
class GroupView:
    protocol: str
    version: str
    protocol_slug: str
    slug: str
    first_of_protocol: bool
    weights: str  # "" unless the protocol's entries used several sets of extractor weights
    sections: tuple[Section, ...]


@dataclass(frozen=True)
class CardView:
    slug: str
    name: str
    rows: tuple[tuple[str, str, str | None], ...]  # (label, text, href)
    thumb: Picture | None


@dataclass
class Board:
    n_entries: int
    has_reference: bool
    groups: list[GroupView] = field(default_factory=list)
    cards: list[CardView] = field(default_factory=list)
    reference_note: str = REFERENCE_NOTE
    claims: tuple = ()  # claims.Claim rows, from the claims protocol's ranked entries
    claims_protocol: str = claims_mod.PROTOCOL

    def pictures(self) -> dict[str, bytes]:
        """Every plot and thumbnail the board shows, by path."""
        out: dict[str, bytes] = {}
        for g in self.groups:
            for s in g.sections:
                pics = [s.curve] + [p for f in s.families for p in f.plots]
                pics += [r.strip for t in (s.headline,) for r in t.rows]
                out.update({p.path: p.data for p in pics if p is not None})
        out.update({c.thumb.path: c.thumb.data for c in self.cards if c.thumb is not None})
        return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------------------
# Numbers as text: three significant digits everywhere
# --------------------------------------------------------------------------------------------------------


def fmt(v: float | None) -> str:
    """Three significant digits, trailing zeros kept (0.700, 19.7, 137); scientific outside 1e-3 .. 1e5."""
    if v is None:
        return DASH
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    if not 1e-3 <= abs(v) < 1e5:
        return f"{v:.2e}"
    digits = 2 - math.floor(math.log10(abs(float(f"{v:.2e}"))))  # of the rounded value: 9.996 -> 10.0
    return f"{v:.{digits}f}" if digits >= 0 else f"{round(v, digits):.0f}"


def ci_text(m: dict) -> str:
    if m.get("valid") is False:
        return "not valid"
    ci = m.get("ci")
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    # a biased metric's interval is for its bias-corrected estimate, not for the value at N the table ranks by:
    # the estimate goes in front of the brackets (with the CLI's asterisk) so both name the same quantity
    bc = m.get("value_bias_corrected")
    est = "" if bc is None else f"{fmt(bc)}* "
    # measured coverage outside 95 +/- 3%: a dagger here, the measured range once per table (``coverage_note``)
    return f"{est}[{fmt(ci[0])}, {fmt(ci[1])}]" + (COVERAGE_MARK if m.get("ci_coverage") else "")


COVERAGE_MARK = "†"


def coverage_range(cov: dict) -> str:
    span = cov.get("range")
    return f"{span[0]:.1%}-{span[1]:.1%}" if span and span[0] != span[1] else f"{cov['measured']:.1%}"


def coverage_note(entries: list[dict], keys: list[str]) -> str:
    """One line for a table's intervals whose measured coverage misses 95 +/- 3% (marked with a dagger in the
    cells): the measured range per metric, so that no cell is read as a 95% interval."""
    seen = {}
    for k in keys:
        for e in entries:
            cov = (e["result"]["metrics"].get(k) or {}).get("ci_coverage")
            if cov and k not in seen:
                seen[k] = coverage_range(cov)
    if not seen:
        return ""
    return (f"{COVERAGE_MARK} the interval's coverage measured on real features misses 95% (docs/reliability.md): "
            + "; ".join(f"{k} {v}" for k, v in seen.items()) + ".")


def _joined(*notes: str) -> str:
    return " ".join(n for n in notes if n)


def _num_sort(v) -> str:
    return "" if v is None else repr(float(v))


def metric_cell(m: dict | None) -> Cell:
    if m is None:
        return Cell()
    return Cell(fmt(m["value"]), ci_text(m), _num_sort(m["value"]))


def _count(v: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{fmt(v / div)}{unit}"
    return f"{v:.0f}"


def cost_cell(e: dict) -> Cell:
    """Training cost from the card: CPU minutes (or GPU hours), with steps and parameters as detail."""
    t = e["card"].get("training") or {}
    if t.get("gpu_hours") is not None:
        text, sort = f"{fmt(t['gpu_hours'])} GPU h", t["gpu_hours"] * 60
    elif t.get("cpu_minutes") is not None:
        text, sort = f"{fmt(t['cpu_minutes'])} CPU min", t["cpu_minutes"]
    else:
        return Cell()
    detail = [f"{t['steps']:,} steps" if "steps" in t else "", f"{_count(t['parameters'])} params"
              if "parameters" in t else ""]
    return Cell(text, " · ".join(d for d in detail if d), _num_sort(sort), sep=" · ")


# --------------------------------------------------------------------------------------------------------
# Metric keys: which registered metric (and so which family) an output key comes from
# --------------------------------------------------------------------------------------------------------


def _output_bases() -> list[tuple[str, str, bool]]:
    """(output name, registered metric, per extractor), longest names first so ``fd_inf`` wins over ``fd``."""
    bases = [(out, name, METRICS.get(name).per_extractor) for name in METRICS.names() for out in
             METRICS.get(name).outputs]
    return sorted(bases, key=lambda b: (-len(b[0]), b[0]))


def split_key(key: str, bases: list[tuple[str, str, bool]]) -> tuple[str, str, str]:
    """``fid_cxr64`` -> (``fid``, ``fid``, ``cxr64``): output name, registered metric, extractor suffix. A key no
    registered metric declares is its own family."""
    for out, name, per_extractor in bases:
        if key == out:
            return out, name, ""
        if per_extractor and key.startswith(out + "_"):
            return out, name, key[len(out) + 1:]
    return key, key, ""


def headline_keys(rank_key: str | None, keys: list[str], bases) -> list[tuple[str, str]]:
    """(key, label) of the headline table's metric columns: the ranking metric, then ``HEADLINE_COLUMNS`` read
    with the ranking metric's extractor (``precision_cxr64`` under ``fid_cxr64``) where the table has them."""
    if rank_key is None:
        return []
    out = [(rank_key, rank_key)]
    suffix = split_key(rank_key, bases)[2]
    for name, label in HEADLINE_COLUMNS:
        for k in ([f"{name}_{suffix}"] if suffix else []) + [name]:
            if k in keys and k != rank_key:
                out.append((k, label))
                break
    return out


# --------------------------------------------------------------------------------------------------------
# Rows and tables
# --------------------------------------------------------------------------------------------------------


def _floor_cell(ms: list[dict]) -> tuple[Cell, tuple | None]:
    """One floor cell from the rows' copies of a metric: the real-vs-real value they share (a range where
    they differ), and the sizes it was computed at."""
    vals = sorted({m["real_vs_real"] for m in ms if m.get("real_vs_real") is not None})
    if not vals:
        return Cell(), None
    ns = {tuple(m["real_vs_real_n"]) for m in ms if m.get("real_vs_real") is not None and m.get("real_vs_real_n")}
    n = next(iter(ns)) if len(ns) == 1 else None
    # the copies agree to round-off (recomputed on other machines); a range only where the printed digits differ
    lo, hi = fmt(vals[0]), fmt(vals[-1])
    text = lo if lo == hi else f"{lo} to {hi}"
    return Cell(text, "", _num_sort(vals[0])), n


def floor_row(entries: list[dict], keys: list[str], n_extra: int = 0) -> Row | None:
    """The real-vs-real floor of every column as one row (two halves of the real reference scored against each
    other, at the sizes named in the row): what a perfect generator would score at those sizes."""
    cells, sizes = [], set()
    for k in keys:
        cell, n = _floor_cell([e["result"]["metrics"][k] for e in entries if k in e["result"]["metrics"]])
        cells.append(cell)
        if cell.text != DASH:
            sizes.add(n)
    if not sizes:
        return None
    sized = sizes - {None}  # memorization's floor (held-out vs train) has no pair of sizes
    n = next(iter(sized)) if len(sized) == 1 else None
    at = f" at {n[0]} vs {n[1]} images" if n else ""
    return Row(f"floor: real vs real{at}", tuple(cells) + (Cell(),) * n_extra, kind="floor")


def entry_row(r: int | None, e: dict, cells: list[Cell], ranked: bool, strip: Picture | None = None) -> Row:
    ref = is_reference_row(e)
    mark = "ref" if ref else (str(r) if r else DASH) if ranked else ""
    return Row(e["name"], tuple(cells), slug=e["slug"], mark=mark, kind="reference" if ref else "model",
               strip=strip)


def metric_columns(pairs: list[tuple[str, str]], directions: dict[str, bool]) -> list[Column]:
    return [Column(k, label, directions[k], title=k) for k, label in pairs]


def _family_order(title: str) -> tuple[int, str]:
    known = list(dict.fromkeys(FAMILIES.values()))
    return (known.index(title) if title in known else len(known), title)


def _metric_plots(prefix: str, keys: list[str], g: Group, rows_e: list[dict], order, ranked: bool) -> list[Picture]:
    """Per-metric dot plots, in the table's order (best first for a ranked section)."""
    out = []
    for k in keys:
        ks_order = ordered(rows_e, k, g.directions[k]) if ranked else order
        svg = figures.metric_plot_svg(
            k, g.directions[k],
            [(e["name"] + (" (real)" if is_reference_row(e) else ""), e["result"]["metrics"].get(k))
             for _, e in ks_order],
            title_suffix="" if ranked else " - not ranked")
        if svg is not None:
            out.append(Picture(f"plots/{prefix}-{k}.svg", svg, k))
    return out


def family_tables(prefix: str, g: Group, rows_e: list[dict], order, ranked: bool, keys: list[str],
                  shown: list[str], bases) -> list[Family]:
    """The metrics not in the headline table, one compact table per family, each with its plots (of every
    metric of the family, the headline ones included)."""
    by_family: dict[str, list[str]] = {}
    for k in keys:
        name = split_key(k, bases)[1]
        by_family.setdefault(FAMILIES.get(name, name), []).append(k)
    out = []
    for title in sorted(by_family, key=_family_order):
        rest = [k for k in by_family[title] if k not in shown]
        table = None
        if rest:
            rows = [entry_row(r, e, [metric_cell(e["result"]["metrics"].get(k)) for k in rest], ranked)
                    for r, e in order]
            table = Table(f"{prefix}-{slugify_key(title)}", tuple(metric_columns([(k, k) for k in rest], g.directions)),
                          tuple(rows), title=title, floor=floor_row(rows_e, rest), note=coverage_note(rows_e, rest))
        plots = _metric_plots(prefix, by_family[title], g, rows_e, order, ranked)
        out.append(Family(title, table, tuple(plots)))
    return out


def matched_n_family(prefix: str, g: Group, rows_e: list[dict], order, ranked: bool, keys: list[str]) -> Family | None:
    """Each row's value at the floor's sample sizes: the floor row can only be held against these."""
    have = [k for k in keys if any(e["result"]["metrics"].get(k, {}).get("value_at_real_vs_real_n") is not None
                                   for e in rows_e)]
    if not have:
        return None
    rows = []
    for r, e in order:
        ms = [e["result"]["metrics"].get(k) or {} for k in have]
        rows.append(entry_row(r, e, [Cell(fmt(m.get("value_at_real_vs_real_n")), "",
                                          _num_sort(m.get("value_at_real_vs_real_n"))) for m in ms], ranked))
    note = ("Each model recomputed on as many samples and reference images as the real-vs-real floor used: the "
            "floor row is comparable with these values, not with the full-N values above.")
    table = Table(f"{prefix}-at-floor-n", tuple(metric_columns([(k, k) for k in have], g.directions)), tuple(rows),
                  title="At the floor's sample sizes", note=note, floor=floor_row(rows_e, have))
    return Family(table.title, table)


def curve_picture(g: Group, order, key: str | None) -> Picture | None:
    """The ranking metric against training CPU minutes, one line per model that carries a learning curve."""
    if key is None:
        return None
    curves = [(e["name"], learning_curve.checkpoints(e, key)) for _, e in order]
    curves = [(name, pts) for name, pts in curves if pts]
    if not curves:
        return None
    floors = {e["result"]["metrics"][key].get("real_vs_real") for _, e in order if key in e["result"]["metrics"]}
    floor = floors.pop() if len(floors) == 1 else None
    svg = figures.learning_curve_svg(key, g.directions[key], curves, floor)
    return Picture(f"plots/{g.slug}-learning-curve.svg", svg, f"learning curves: {key} against training CPU minutes")


def slugify_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def headline_table(tid: str, g: Group, rows_e: list[dict], order, ranked: bool, pairs: list[tuple[str, str]],
                   strips: dict[str, Picture | None]) -> Table:
    cost = any((e["card"].get("training") or {}).keys() & {"cpu_minutes", "gpu_hours"} for e in rows_e)
    columns = metric_columns(pairs, g.directions)
    if cost:
        columns.append(Column("cost", "training cost", None, title="from the model card: CPU minutes or GPU hours"))
    rows = []
    for r, e in order:
        cells = [metric_cell(e["result"]["metrics"].get(k)) for k, _ in pairs] + ([cost_cell(e)] if cost else [])
        rows.append(entry_row(r, e, cells, ranked, strips.get(e["slug"])))
    note = ("Not ranked (comparable: false): computed with random or unpublished extractor weights (or below "
            "fp32); these numbers cannot be compared with published ones and are never ranked."
            if not ranked else "")
    note = _joined(note, coverage_note(rows_e, [k for k, _ in pairs]))
    return Table(tid, tuple(columns), tuple(rows), note=note, floor=floor_row(rows_e, [k for k, _ in pairs], cost),
                 css="sortable" if ranked else "sortable unranked")


def build_section(g: Group, rows_e: list[dict], ranked: bool, rank_by: str | None, strips, bases) -> Section:
    prefix = f"{g.slug if ranked else g.protocol_slug}-{'ranked' if ranked else 'unranked'}"
    keys = sorted({k for e in rows_e for k in e["result"]["metrics"]})  # columns this section has values for
    extractors = {x for e in rows_e for x in e["result"].get("extractors") or {}}
    key = rank_by if rank_by in keys else default_rank_key(keys, g.protocol, extractors)
    hib = g.directions.get(key, False)
    order = ordered(rows_e, key, hib) if ranked else [(None, e) for e in sorted(rows_e, key=lambda e: e["slug"])]
    pairs = headline_keys(key, keys, bases)
    families = family_tables(prefix, g, rows_e, order, ranked, keys, [k for k, _ in pairs], bases)
    matched = matched_n_family(prefix, g, rows_e, order, ranked, keys)
    return Section(
        ranked=ranked, rank_key=key, rank_hib=hib,
        headline=headline_table(prefix, g, rows_e, order, ranked, pairs, strips),
        curve=curve_picture(g, order, key) if ranked else None,
        families=tuple(families + ([matched] if matched else [])),
        side_tables=tuple(side_tables(g.slug, rows_e)) if ranked else (),
    )


def _sizes_text(sizes: dict) -> str:
    """``{"augmented": {"n_real": 50, "n_synthetic": 50}, "real": 50}`` -> "augmented 50 real + 50 synthetic,
    real 50" (never a dict's repr)."""
    parts = []
    for mode, v in sorted(sizes.items()):
        if isinstance(v, dict):
            v = " + ".join(f"{n} {k.removeprefix('n_')}" for k, n in sorted(v.items()) if n)
        parts.append(f"{mode} {v}")
    return ", ".join(parts)


def _augmentation_table(g_slug: str, task: str, es: list[dict]) -> Table:
    keys = sorted({k for e in es for k in e["augmentation"]["metrics"]})
    hib = {k: bool(m["higher_is_better"]) for e in es for k, m in e["augmentation"]["metrics"].items()}
    order = sorted(es, key=lambda e: (-(e["augmentation"]["metrics"].get("aug_gain_auroc", {}).get("value")
                                        or -math.inf), e["slug"]))
    extractor = (es[0]["augmentation"].get("config") or {}).get("extractor", "cxr64")
    note = (f"A linear probe on {extractor} features trained on real images, real plus synthetic, and synthetic only, "
            "tested on held-out real images (patient-disjoint); gain = augmented minus real AUROC. 95% CIs "
            "resample test images and training seeds together. Sorted by aug_gain_auroc.")
    sizes = es[0]["augmentation"]["details"].get("training_sizes", {})
    if sizes:
        note += f" Training sizes: {_sizes_text(sizes)}."
    rows = [Row(e["name"], tuple(metric_cell(e["augmentation"]["metrics"].get(k)) for k in keys), slug=e["slug"])
            for e in order]
    return Table(f"{g_slug}-aug-{slugify_key(task)}", tuple(metric_columns([(k, k) for k in keys], hib)),
                 tuple(rows), title=f"Downstream augmentation: {task}", note=note)


def _per_condition_table(g_slug: str, cond: list[dict]) -> Table:
    rows, keys, hib = [], set(), {}
    for e in sorted(cond, key=lambda e: e["slug"]):
        for lab, c in sorted(e["result"]["per_condition"]["conditions"].items()):
            if "metrics" in c:
                rows.append((f"{e['name']} / {lab} ({c['n_samples']}/{c['n_reference']})", e["slug"], c["metrics"]))
                keys |= set(c["metrics"])
                hib.update({k: bool(m["higher_is_better"]) for k, m in c["metrics"].items()})
    keys = sorted(keys)
    pc = cond[0]["result"]["per_condition"]
    note = ("Each condition's samples (those generated with the label requested) against the reference images "
            "that carry the label; n = samples/reference. A condition needs at least "
            f"{pc.get('min_samples')} samples and {pc.get('min_reference')} reference images. FID depends on N: "
            "compare one condition across models, or use the value at the floor's sizes.")
    table_rows = [Row(label, tuple(metric_cell(ms.get(k)) for k in keys), slug=slug) for label, slug, ms in rows]
    return Table(f"{g_slug}-per-condition", tuple(metric_columns([(k, k) for k in keys], hib)), tuple(table_rows),
                 first="Model / condition (n)", title="Per condition", note=note)


def _reconstruction_table(g_slug: str, es: list[dict]) -> Table:
    """rrs_moco of each model's reconstructions of the held-out real images (its entry's reconstruction block),
    best first; the floor row is those images against their nearest held-out image of another patient."""
    key = "rrs_moco"
    order = sorted(es, key=lambda e: (e["reconstruction"]["metrics"][key]["value"], e["slug"]))
    columns = (Column(key, key, False, title="1 - cos(reconstruction, its source) in the MoCo embedding"),
               Column("n", "reconstructions / held-out", None), Column("moco", "MoCo weights", None),
               Column("comparable", "comparable", None))
    rows = [Row(e["name"], (metric_cell(b["metrics"][key]), Cell(f"{b['samples']['n']}/{b['real']['n']}"),
                            Cell(b["weights"].get("moco", DASH)[:16]), Cell("yes" if b["comparable"] else "no")),
                slug=e["slug"]) for e in order for b in (e["reconstruction"],)]
    cell, _ = _floor_cell([e["reconstruction"]["metrics"][key] for e in es])
    floor = Row("floor: held-out real vs nearest other patient's", (cell, Cell(), Cell(), Cell()), kind="floor")
    splits = sorted({e["reconstruction"]["real"]["split"] for e in es})
    note = (f"Each model's reconstructions of the {', '.join(splits)} real images (patients no bundled model trains "
            "on), scored by the reconstructed-representation score of Selvadeepa et al. (\"Synthetic Chest X-ray "
            "Image Generator\", Mphasis white paper, 2023): 1 - cos to its own source in the MoCo embedding, lower "
            "is better.")
    if any(not e["reconstruction"]["comparable"] for e in es):
        note += (" MoCo weights random: no MoCo-CXR weights are published and none ship with cxrbench, so these "
                 "values order the models on one image set but are not on the white paper's scale (0.03-0.045).")
    return Table(f"{g_slug}-reconstruction", columns, tuple(rows), title="Reconstruction of held-out real images",
                 note=note, floor=floor)


def side_tables(g_slug: str, rows_e: list[dict]) -> list[Table]:
    """The conditional models' own tables under a ranked one: downstream augmentation (``aug_*``, ranked by
    the gain) and per-condition metrics (one row per model and condition, against the reference images
    that carry the label); empty when no entry has either block."""
    aug = [e for e in rows_e if e.get("augmentation")]
    out = [_augmentation_table(g_slug, task, [e for e in aug if e["augmentation"]["task"] == task])
           for task in sorted({e["augmentation"]["task"] for e in aug})]
    cond = [e for e in rows_e if (e["result"].get("per_condition") or {}).get("conditions")]
    if cond:
        out.append(_per_condition_table(g_slug, cond))
    rec = [e for e in rows_e if e.get("reconstruction")]
    if rec:
        out.append(_reconstruction_table(g_slug, rec))
    return out


# --------------------------------------------------------------------------------------------------------
# Model cards and the whole board
# --------------------------------------------------------------------------------------------------------


def _training_text(training: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v:g}"
                     for k, v in training.items())


def card_rows(e: dict, entry_link: str) -> list[tuple[str, str, str | None]]:
    """(label, text, href) for a card; hrefs are http(s) only (validated) or the relative entry file."""
    c = e["card"]
    res = c["resolution"]
    n_used = int(e["result"]["samples"].get("n_used", e["samples"]["n"]))
    rows = [
        ("Authors", ", ".join(c["authors"]), None),
        ("Code / weights", c["url"], c["url"]) if c.get("url") else None,
        ("Paper", c["paper"], c["paper"]) if c.get("paper") else None,
        ("Training data", c["training_data"], None),
        ("Resolution", f"{res[0]} x {res[1]}", None),
        ("Conditioning", c["conditioning"], None),
        ("License", c["license"], None),
        ("Kind", "reference row: real images, not a model (not ranked)", None) if is_reference_row(e) else None,
        ("Training", _training_text(c["training"]), None) if c.get("training") else None,
        ("Protocol", f"{e['protocol']['name']} v{e['protocol']['version']}", None),
        ("Comparable", "yes" if e["comparable"] else "no (not the published weights; not ranked)", None),
        ("Samples", f"{e['samples']['n']} images ({n_used} scored), sha256 {e['samples']['sha256']}", None),
    ]
    rows += [(f"Weights ({name})", wid, None) for name, wid in sorted(e["weights"].items())]
    rows.append(("Entry", entry_link, entry_link))
    return [r for r in rows if r]


def _rel_link(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


def build_board(entries: list[dict], *, out_dir: str | os.PathLike, entries_dir: str | os.PathLike,
                rank_by: str | None = None) -> Board:
    """The whole leaderboard as a table model; input order never matters (entries are sorted by slug)."""
    entries = sorted(entries, key=lambda e: e["slug"])
    board = Board(len(entries), any(is_reference_row(e) for e in entries))
    bases = _output_bases()
    strips = {}
    for e in entries:
        strip = figures.sample_strip(e, entries_dir)
        strips[e["slug"]] = None if strip is None else Picture(f"thumbs/{e['slug']}-strip.png", strip,
                                                               f"first samples of {e['name']}")
    groups = group_entries(entries)
    for i, g in enumerate(groups):
        sections = [build_section(g, rows_e, ranked, rank_by, strips, bases)
                    for ranked, rows_e in ((True, g.ranked), (False, g.unranked)) if rows_e]
        weights = ", ".join(f"{name} {wid[:12]}" for name, wid in g.weights) if g.split else ""
        first = i == 0 or groups[i - 1].protocol_slug != g.protocol_slug
        board.groups.append(GroupView(g.protocol, g.version, g.protocol_slug, g.slug, first, weights, tuple(sections)))
        ranked = [s for s in sections if s.ranked]
        if g.protocol == claims_mod.PROTOCOL and ranked and not board.claims:
            board.claims = tuple(claims_mod.claims(g.ranked, ranked[0].rank_key))
    for e in entries:
        link = _rel_link(Path(entries_dir) / e.get("_file", f"{e['slug']}.json"), Path(out_dir))
        thumb = figures.thumbnail_grid(e, entries_dir)
        pic = None if thumb is None else Picture(f"thumbs/{e['slug']}.png", thumb,
                                                 f"first {figures.THUMB_COUNT} samples of {e['name']}")
        board.cards.append(CardView(e["slug"], e["name"], tuple(card_rows(e, link)), pic))
    return board
