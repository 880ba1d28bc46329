"""Leaderboard entries (schema ``cxrbench.entry/1``), ranking within a protocol, and rendering.

An entry is one JSON file under ``leaderboard/entries/``, written by ``cxrbench submit`` (never by hand)::

    schema       "cxrbench.entry/1"
    name, slug   the model card's name and the file-name-safe form of it (entries/<slug>.json)
    card         the validated model card (see cxrbench.publish.card)
    protocol     {name, version}: copied from the result
    comparable   false when any extractor ran with weights other than its published file (random, self-made,
                 unknown sha256) or below fp32 precision (copied from the result)
    samples      {n, sha256, files: [{path, sha256}, ...], side_files: [...]}: the sample set by content;
                 ``sha256`` is the sha256 over the sorted per-file sha256s (as in the result); side_files
                 are labels.csv / manifest.csv, which feed the label metrics
    weights      {extractor: weights id}: the sha256 of each extractor's weights file (or random:<seed>)
    result       the full ``cxrbench.result/1`` the numbers come from
    augmentation optional: downstream augmentation gain (``aug_*`` metrics) of a conditional model, see
                 ``cxrbench.publish.augment_block``

Ranking rules: only entries that share protocol name *and* version *and* extractor weights (the sha256 of
every extractor's weights file) share a table; within it, only entries with ``comparable: true`` (every
extractor ran with its published weights) are ranked; the others are listed apart, unranked. A metric's
direction comes from ``higher_is_better`` in the entries themselves (which the metric class declared), never
from this module.

Rendering (``render``) is byte-stable: the same entries give the same README.md, index.html and plots
(sorted keys, no timestamps, matplotlib SVG with a fixed hash salt and no date metadata).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import results
from ..data.imageset import set_sha256
from ..errors import DataError
from ..results import ci_text, floor_text
from .card import ModelCard, card_from_dict

SCHEMA = "cxrbench.entry/1"
ENTRY_KEYS = ("schema", "name", "slug", "card", "protocol", "comparable", "samples", "weights", "result")
MAX_ENTRY_BYTES = 256 * 2**20  # an entry is JSON text; anything bigger is not one
#: the ranking metric where the protocol names none (``--protocol default``, your own reference)
HEADLINE_METRIC = "fid"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")  # metric / extractor / protocol names
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


# --------------------------------------------------------------------------------------------------------
# Entries: build, validate, load
# --------------------------------------------------------------------------------------------------------


def make_entry(
    result: dict,
    card: ModelCard,
    files: list[tuple[str, str]],
    weights: dict[str, str],
    *,
    side_files: dict[str, str] | None = None,
    location: str | None = None,
    augmentation: dict | None = None,
) -> dict[str, Any]:
    """Bundle a computed result with its card and the provenance ``verify`` needs. ``location``: where the
    samples are, relative to the entry's folder (or a protocol's shipped set), so that ``verify`` needs no
    other argument; ``augmentation``: the downstream-augmentation block (``cxrbench.publish.augment_block``)."""
    results.validate(result)
    entry = {
        "schema": SCHEMA,
        "name": card.name,
        "slug": card.slug,
        "card": card.to_dict(),
        "protocol": {"name": result["protocol"]["name"], "version": result["protocol"]["version"]},
        "comparable": bool(result["comparable"]),
        "samples": {
            "n": len(files),
            "sha256": result["samples"]["sha256"],
            "files": [{"path": p, "sha256": h} for p, h in sorted(files)],
            "side_files": [{"path": p, "sha256": h} for p, h in sorted((side_files or {}).items())],
            **({"location": location} if location else {}),
        },
        "weights": dict(sorted(weights.items())),
        "result": dict(result),
    }
    if augmentation is not None:
        entry["augmentation"] = augmentation
    validate_entry(entry)
    return entry


def safe_relpath(p: Any, source: str) -> str:
    """A sample path from an entry, refused unless it stays inside its folder (no absolute, no ``..``)."""
    if not isinstance(p, str) or not p or "\\" in p or "\x00" in p:
        raise DataError(f"{source}: sample path {p!r} is not a relative POSIX path")
    pp = PurePosixPath(p)
    if pp.is_absolute() or any(part in ("..", ".", "") for part in p.split("/")):
        raise DataError(f"{source}: sample path {p!r} escapes the samples folder; entries hold relative paths only")
    return p


def validate_entry(d: Any, source: str = "entry") -> None:
    """Schema-check an (untrusted) entry; every message names ``source`` and what is wrong."""
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a JSON object")
    if d.get("schema") != SCHEMA:
        raise DataError(f"{source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in ENTRY_KEYS if k not in d]
    if missing:
        raise DataError(f"{source}: missing keys {missing}; re-create it with `cxrbench submit`")
    card = card_from_dict(d["card"], f"{source}: card")
    if d["name"] != card.name or d["slug"] != card.slug or not _SLUG.match(str(d["slug"])):
        raise DataError(f"{source}: name/slug {d['name']!r}/{d['slug']!r} do not match the card ({card.name!r})")
    results.validate(d["result"], f"{source}: result")
    res = d["result"]
    proto = d["protocol"]
    if (
        not isinstance(proto, dict)
        or set(proto) != {"name", "version"}
        or not isinstance(proto["name"], str)
        or not _SAFE_KEY.match(proto["name"])
        or not isinstance(proto["version"], (str, int))
        or isinstance(proto["version"], bool)
        or not _SAFE_KEY.match(str(proto["version"]))
    ):
        raise DataError(f"{source}: 'protocol' must be {{name, version}} with plain names, got {proto!r}")
    rp = res.get("protocol")
    if not isinstance(rp, dict) or rp.get("name") != proto["name"] or rp.get("version") != proto["version"]:
        raise DataError(f"{source}: protocol {proto!r} differs from the result's {rp!r}")
    if not isinstance(d["comparable"], bool) or d["comparable"] != res["comparable"]:
        raise DataError(f"{source}: 'comparable' must be true/false and equal the result's")
    s = d["samples"]
    if not isinstance(s, dict) or not isinstance(s.get("files"), list) or not isinstance(s.get("side_files"), list):
        raise DataError(f"{source}: 'samples' must hold 'files' and 'side_files' lists of {{path, sha256}}")
    for listing in ("files", "side_files"):
        seen = set()
        for f in s[listing]:
            if not isinstance(f, dict) or set(f) != {"path", "sha256"}:
                raise DataError(f"{source}: every samples.{listing} item must be {{path, sha256}}, got {f!r}")
            safe_relpath(f["path"], source)
            if not isinstance(f["sha256"], str) or not _HEX64.match(f["sha256"]):
                raise DataError(f"{source}: {f['path']!r} has a malformed sha256 {f['sha256']!r}")
            if f["path"] in seen:
                raise DataError(f"{source}: sample path {f['path']!r} is listed twice")
            seen.add(f["path"])
    loc = s.get("location")
    if loc is not None and (not isinstance(loc, str) or not loc or "\x00" in loc or "\\" in loc
                            or PurePosixPath(loc).is_absolute()):
        raise DataError(f"{source}: samples.location must be a relative POSIX path, got {loc!r}")
    if s.get("n") != len(s["files"]):
        raise DataError(f"{source}: samples.n = {s.get('n')!r} but {len(s['files'])} files are listed")
    if s.get("sha256") != set_sha256([f["sha256"] for f in s["files"]]):
        raise DataError(f"{source}: samples.sha256 does not match its file list (edited by hand?)")
    rs = res.get("samples")
    if not isinstance(rs, dict) or rs.get("sha256") != s["sha256"]:
        raise DataError(f"{source}: samples.sha256 differs from the result's")
    w = d["weights"]
    if not isinstance(w, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in w.items()):
        raise DataError(f"{source}: 'weights' must map extractor names to weights ids")
    for key, m in res["metrics"].items():
        if not _SAFE_KEY.match(key):
            raise DataError(f"{source}: metric key {key!r} is not a plain name")
        ci = m["ci"]
        if ci is not None and not (
            isinstance(ci, list)
            and len(ci) == 2
            and all(c is None or (_is_num(c) and math.isfinite(c)) for c in ci)
        ):
            raise DataError(f"{source}: metric {key!r}: ci must be [lo, hi] or null, got {ci!r}")
        rvr = m["real_vs_real"]
        if rvr is not None and not (_is_num(rvr) and math.isfinite(rvr)):
            raise DataError(f"{source}: metric {key!r}: real_vs_real must be a number or null")
    if "augmentation" in d:
        from .augment_block import validate as validate_augmentation

        validate_augmentation(d["augmentation"], source)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_entry(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            raise DataError(f"{path}: larger than {MAX_ENTRY_BYTES >> 20} MiB; not a leaderboard entry")
        d = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such entry file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; pass an entry file (leaderboard/entries/NAME.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
    validate_entry(d, str(path))
    return d


def load_entries(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every ``*.json`` directly in ``folder`` (no recursion, no symlinks out), sorted by slug."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such entries folder; create entries with `cxrbench submit --entries {folder}`")
    root = folder.resolve()
    out = []
    for p in sorted(folder.glob("*.json")):
        if p.resolve().parent != root:
            raise DataError(f"{p}: links outside {folder}; entries must be plain files in the folder")
        e = load_entry(p)
        # One file per model, named by `cxrbench submit` from the card: a renamed or copied entry is refused.
        if p.name != f"{e['slug']}.json":
            raise DataError(f"{p}: holds the entry of {e['name']!r}, which `cxrbench submit` names {e['slug']}.json")
        e["_file"] = p.name
        out.append(e)
    return sorted(out, key=lambda e: e["slug"])


# --------------------------------------------------------------------------------------------------------
# Grouping and ranking
# --------------------------------------------------------------------------------------------------------


def weights_signature(entry: dict) -> tuple[tuple[str, str], ...]:
    """The extractors and the sha256 of each one's weights: entries are ranked together only when equal."""
    return tuple(sorted(entry["weights"].items()))


@dataclass
class Group:
    """One ranked table: entries sharing protocol name and version *and* extractor weights (``weights``).

    A protocol version whose comparable entries used different weights gets one group per weights signature
    (``split``); its non-comparable entries are listed once, with the last of its groups.
    """

    protocol: str
    version: str
    weights: tuple[tuple[str, str], ...] = ()
    ranked: list[dict] = field(default_factory=list)  # comparable: true
    unranked: list[dict] = field(default_factory=list)  # comparable: false, never ranked
    directions: dict[str, bool] = field(default_factory=dict)  # metric key -> higher_is_better
    split: bool = False

    @property
    def protocol_slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.protocol}-v{self.version}")

    @property
    def slug(self) -> str:
        if not self.split:
            return self.protocol_slug
        # a short, stable name for the weights signature keeps table ids and plot names apart
        return f"{self.protocol_slug}-w" + hashlib.sha256(json.dumps(self.weights).encode()).hexdigest()[:8]


def group_entries(entries: list[dict]) -> list[Group]:
    """Split entries by (protocol name, version, extractor weights); directions read from the entries,
    checked to agree within a protocol version."""
    by_protocol: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        by_protocol.setdefault((e["protocol"]["name"], str(e["protocol"]["version"])), []).append(e)
    out: list[Group] = []
    for key in sorted(by_protocol):
        directions: dict[str, bool] = {}
        ranked: dict[tuple, list[dict]] = {}
        unranked: list[dict] = []
        for e in by_protocol[key]:
            for k, m in e["result"]["metrics"].items():
                hib = m["higher_is_better"]
                if directions.setdefault(k, hib) != hib:
                    raise DataError(
                        f"entries disagree on the direction of {k!r} under protocol {key[0]} v{key[1]} "
                        f"({e['slug']} says higher_is_better={hib}); the metric changed without a protocol version bump"
                    )
            if e["comparable"]:
                ranked.setdefault(weights_signature(e), []).append(e)
            else:
                unranked.append(e)
        groups = [Group(*key, weights=sig, ranked=ranked[sig], directions=directions, split=len(ranked) > 1)
                  for sig in sorted(ranked)] or [Group(*key, directions=directions)]
        groups[-1].unranked = unranked
        out += groups
    return out


def metric_value(entry: dict, key: str) -> float | None:
    m = entry["result"]["metrics"].get(key)
    return None if m is None else m["value"]


def rank(entries: list[dict], key: str, higher_is_better: bool) -> list[tuple[int | None, dict]]:
    """Best first by ``key`` in its own direction; ties share a rank (1, 2, 2, 4); missing values last,
    unranked (None). Ties keep slug order so the output is deterministic."""
    have = [e for e in entries if metric_value(e, key) is not None]
    none = [e for e in entries if metric_value(e, key) is None]
    sign = -1.0 if higher_is_better else 1.0
    have.sort(key=lambda e: (sign * metric_value(e, key), e["slug"]))
    out: list[tuple[int | None, dict]] = []
    for i, e in enumerate(have):
        r = out[-1][0] if i and metric_value(e, key) == metric_value(have[i - 1], key) else i + 1
        out.append((r, e))
    return out + [(None, e) for e in sorted(none, key=lambda e: e["slug"])]


def default_rank_key(keys: list[str], protocol: str | None = None, extractors=()) -> str | None:
    """The protocol's headline metric (``headline`` on its registered class, e.g. cxr64's ``fid_cxr64``) when the
    table has it; else the first output of ``HEADLINE_METRIC`` (FID, the field's headline number) for the
    table's ``extractors``, alphabetically; else the first key."""
    from ..registry import METRICS, PROTOCOLS

    keys = sorted(keys)
    if protocol and protocol in PROTOCOLS:
        headline = getattr(PROTOCOLS.get(protocol), "headline", None)
        if headline in keys:
            return headline
    own = METRICS.get(HEADLINE_METRIC)().output_keys(sorted(extractors))
    return ([k for k in keys if k in own] or keys or [None])[0]


# --------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}"


def _fmt_ci(m: dict) -> str:
    t = ci_text(m)
    return "" if t == "-" else t


def _arrow(hib: bool) -> str:
    return "↑" if hib else "↓"


def _md(s: str) -> str:
    """Text from a card into Markdown: HTML-escaped (GitHub renders raw HTML) and Markdown specials escaped."""
    s = html.escape(str(s), quote=True)
    return re.sub(r"([\\`*_\[\]|~])", r"\\\1", s)


def _h(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _plot_svg(key: str, hib: bool, rows: list[tuple[str, dict]], *, title_suffix: str = "") -> bytes | None:
    """Dot-and-CI plot, best at the top; per row, the real-vs-real floor (red bar) and the entry's own value at
    the floor's sizes (open circle): the floor is only comparable with the latter (matched N)."""
    pts = [(label, m) for label, m in rows if m is not None and m.get("value") is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.hashsalt": "cxrbench", "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(6.0, 0.9 + 0.32 * len(pts)))
        ax = fig.add_subplot()
        ys = list(range(len(pts)))[::-1]
        vals = [m["value"] for _, m in pts]
        for y, (_, m) in zip(ys, pts):
            ci = m.get("ci")
            if ci and ci[0] is not None and ci[1] is not None:
                ax.plot([ci[0], ci[1]], [y, y], color="#4c72b0", lw=2, solid_capstyle="butt")
        ax.plot(vals, ys, "o", color="#1f3b73" if not title_suffix else "#888888", ms=5)
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
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222}
h1{margin-bottom:.2em} .note{color:#555;font-size:.92em}
.scroll{overflow-x:auto} table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .55em;text-align:right;white-space:nowrap}
th{background:#f3f4f7;cursor:pointer;user-select:none} th:hover{background:#e4e8f0}
td.name,th.name{text-align:left} tr:nth-child(even) td{background:#fafafa}
th[aria-sort=ascending]::after{content:" \\25B4"} th[aria-sort=descending]::after{content:" \\25BE"}
.ci{display:block;color:#777;font-size:.8em} .unranked th{background:#f4efe6}
.plots{display:flex;flex-wrap:wrap;gap:.5em} .plots img{max-width:100%;border:1px solid #eee}
.card{border:1px solid #ddd;border-radius:4px;padding:.4em 1em;margin:.6em 0} .card h3{margin:.3em 0}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.3em 0} dt{color:#555}
code{font-size:.9em} .ref{background:#e8f1e4;color:#355e2b;border-radius:3px;padding:0 .3em;font-size:.8em}
img.thumbs{max-width:100%;image-rendering:pixelated;border:1px solid #eee}
"""

# Sortable tables: click a header to sort (first click puts the best first, by the metric's direction);
# ``?sort=KEY&dir=asc|desc`` clicks that header on load, which is how the browser test drives it.
_JS = """
(function(){
function val(td){var v=td.getAttribute('data-v');if(v===null||v==='')return null;
 var n=Number(v);return isNaN(n)?v.toLowerCase():n;}
function sortBy(table,th,asc){var col=th.cellIndex,tb=table.tBodies[0];
 var rows=Array.prototype.slice.call(tb.rows);
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);
  if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  var c=x<y?-1:(x>y?1:0);return asc?c:-c;});
 rows.forEach(function(r){tb.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',asc?'ascending':'descending');}
var tables=document.querySelectorAll('table.sortable');
Array.prototype.forEach.call(tables,function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
  th.addEventListener('click',function(){var cur=th.getAttribute('aria-sort');
   var asc=cur?cur!=='ascending':th.getAttribute('data-hib')!=='1';sortBy(table,th,asc);});});});
var q=new URLSearchParams(window.location.search),key=q.get('sort'),dir=q.get('dir');
if(key){Array.prototype.forEach.call(tables,function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
  if(th.getAttribute('data-key')!==key)return;th.click();
  if(dir&&th.getAttribute('aria-sort')!==(dir==='asc'?'ascending':'descending'))th.click();});});}
})();
"""


def is_reference_row(e: dict) -> bool:
    """A real-image row (held-out images, the training images): the board's scale, never ranked as a model."""
    return e["card"].get("kind") == "reference"


def _ordered(rows_e: list[dict], key: str | None, hib: bool) -> list[tuple[int | None, dict]]:
    """Models ranked by ``key``; reference rows placed where their value falls, without a rank."""
    models = [e for e in rows_e if not is_reference_row(e)]
    refs = [e for e in rows_e if is_reference_row(e)]
    if not key:
        return [(None, e) for e in models + refs]
    ranked = rank(models, key, hib)
    sign = -1.0 if hib else 1.0

    def order(t):
        v = metric_value(t[1], key)
        return (v is None, 0.0 if v is None else sign * v, is_reference_row(t[1]), t[1]["slug"])

    return sorted(ranked + [(None, e) for e in refs], key=order)


THUMB_COUNT, THUMB_COLS, THUMB_SIZE = 32, 8, 64
REFERENCE_NOTE = ("Rows marked reference are real images evaluated exactly as samples are, to give the board its "
                  "scale: they take no rank. Held-out real images (in no training split and not in the reference) "
                  "show what a perfect generator would score; the training images themselves are a perfect "
                  "memorizer, which the memorization metric must flag.")


def thumbnail_grid(e: dict, entries_dir: str | os.PathLike) -> bytes | None:
    """A PNG grid of the entry's first ``THUMB_COUNT`` samples (in file order), each at ``THUMB_SIZE`` px; None
    when the samples are not in the repository (a reference row of real images, which are not redistributed)."""
    loc = e["samples"].get("location")
    if not loc or ":" in loc:
        return None
    folder = Path(entries_dir) / loc
    paths = [folder / safe_relpath(f["path"], e["slug"]) for f in e["samples"]["files"][:THUMB_COUNT]]
    if not paths or not all(p.is_file() for p in paths):
        return None
    from PIL import Image

    rows = math.ceil(len(paths) / THUMB_COLS)
    grid = Image.new("L", (THUMB_COLS * THUMB_SIZE, rows * THUMB_SIZE), 255)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            tile = im.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR)
        grid.paste(tile, ((i % THUMB_COLS) * THUMB_SIZE, (i // THUMB_COLS) * THUMB_SIZE))
    buf = io.BytesIO()
    grid.save(buf, format="PNG", optimize=False)  # no time or text chunks: the bytes depend on the pixels only
    return buf.getvalue()


def _cost_cells(e: dict) -> list[tuple[str, float | None]]:
    """(text, sort value) for the training-cost columns: steps, CPU minutes, parameters."""
    t = e["card"].get("training") or {}
    out = []
    for k, fmt in (("steps", "{:,.0f}"), ("cpu_minutes", "{:.1f}"), ("parameters", "{:,.0f}")):
        v = t.get(k)
        out.append(("–" if v is None else fmt.format(v), v))
    return out


COST_HEADERS = (("steps", "train steps"), ("cpu_minutes", "CPU min"), ("parameters", "params"))


def _n_used(e: dict) -> int:
    """The samples the numbers are over (a protocol evaluates its first N of a larger set)."""
    return int(e["result"]["samples"].get("n_used", e["samples"]["n"]))


def _metric_cell(m: dict | None) -> tuple[str, str]:
    """(Markdown, HTML td) of one metric: value, CI and the real-vs-real floor at matched N."""
    v = None if m is None else m["value"]
    ci = _fmt_ci(m) if m else ""
    fl = floor_text(m) if m and m.get("real_vs_real") is not None else ""
    md = _fmt(v) + (f" {ci}" if ci else "") + (f" (floor {fl})" if fl else "")
    td = (f'<td data-v="{"" if v is None else repr(float(v))}">{_fmt(v)}'
          + (f'<span class="ci">{_h(ci)}</span>' if ci else "")
          + (f'<span class="ci" title="real vs real at the sizes shown, and these samples at the '
             f'same sizes">floor {_h(fl)}</span>' if fl else "")
          + "</td>")
    return md, td


def _side_tables(g_slug: str, rows_e: list[dict]) -> tuple[list[str], list[str]]:
    """The conditional models' own tables under a ranked one: downstream augmentation (``aug_*``, ranked by
    the gain) and per-condition metrics (one row per model and condition, against the reference images
    that carry the label). (Markdown lines, HTML parts); empty when no entry has either block."""
    md: list[str] = []
    body: list[str] = []
    aug = [e for e in rows_e if e.get("augmentation")]
    for task in sorted({e["augmentation"]["task"] for e in aug}):
        es = [e for e in aug if e["augmentation"]["task"] == task]
        keys = sorted({k for e in es for k in e["augmentation"]["metrics"]})
        hib = {k: bool(m["higher_is_better"]) for e in es for k, m in e["augmentation"]["metrics"].items()}
        order = sorted(es, key=lambda e: (-(e["augmentation"]["metrics"].get("aug_gain_auroc", {}).get("value")
                                            or -math.inf), e["slug"]))
        n_real = es[0]["augmentation"]["details"].get("training_sizes", {})
        title = f"Downstream augmentation: {task}"
        note = ("A linear probe on cxr64 features trained on real images, real plus synthetic, and synthetic only, "
                "tested on held-out real images (patient-disjoint); gain = augmented minus real AUROC. 95% CIs "
                "resample test images and training seeds together. Sorted by aug_gain_auroc.")
        if n_real:
            note += " Training sizes: " + ", ".join(f"{k} {v}" for k, v in sorted(n_real.items())) + "."
        rows = [(e["name"], e["slug"], e["augmentation"]["metrics"]) for e in order]
        md_t, html_t = _plain_table(f"{g_slug}-aug-{slugify_key(task)}", title, note, ["Model"], keys, hib, rows)
        md += md_t
        body += html_t
    cond = [e for e in rows_e if (e["result"].get("per_condition") or {}).get("conditions")]
    if cond:
        rows, keys, hib = [], set(), {}
        for e in sorted(cond, key=lambda e: e["slug"]):
            for lab, c in sorted(e["result"]["per_condition"]["conditions"].items()):
                if "metrics" not in c:
                    continue
                rows.append((f"{e['name']} / {lab} ({c['n_samples']}/{c['n_reference']})", e["slug"], c["metrics"]))
                keys |= set(c["metrics"])
                hib.update({k: bool(m["higher_is_better"]) for k, m in c["metrics"].items()})
        pc = cond[0]["result"]["per_condition"]
        note = ("Each condition's samples (those generated with the label requested) against the reference images "
                "that carry the label; n = samples/reference. A condition needs at least "
                f"{pc.get('min_samples')} samples and {pc.get('min_reference')} reference images. FID depends on N: "
                "compare one condition across models, or use the value at the floor's sizes.")
        md_t, html_t = _plain_table(f"{g_slug}-per-condition", "Per condition", note, ["Model / condition (n)"],
                                    sorted(keys), hib, rows)
        md += md_t
        body += html_t
    return md, body


def slugify_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _plain_table(tid: str, title: str, note: str, first: list[str], keys: list[str], hib: dict[str, bool],
                 rows: list[tuple[str, str, dict]]) -> tuple[list[str], list[str]]:
    """A sortable metric table without ranks: (label, slug, metrics) rows."""
    head = first + [f"{k} {_arrow(hib[k])}" for k in keys]
    md = [f"#### {_md(title)}", "", _md(note), "", "| " + " | ".join(_md(h) for h in head) + " |",
          "|" + "|".join([":--"] + ["--:"] * len(keys)) + "|"]
    th = [f'<th class="name" data-key="model" data-hib="0">{_h(first[0])}</th>'] + [
        f'<th data-key="{_h(k)}" data-hib="{int(hib[k])}">{_h(k)} {_arrow(hib[k])}</th>' for k in keys]
    trs = []
    for label, slug, mets in rows:
        cells = [_metric_cell(mets.get(k)) for k in keys]
        md.append("| " + " | ".join([f"[{_md(label)}](#card-{slug})"] + [c[0] for c in cells]) + " |")
        trs.append(f'<tr data-slug="{slug}"><td class="name" data-v="{_h(label)}"><a href="#card-{slug}">'
                   f'{_h(label)}</a></td>' + "".join(c[1] for c in cells) + "</tr>")
    md.append("")
    html_parts = [f"<h4>{_h(title)}</h4>", f'<p class="note">{_h(note)}</p>',
                  f'<div class="scroll"><table id="{_h(tid)}" class="sortable"><thead><tr>{"".join(th)}</tr>'
                  "</thead><tbody>\n" + "\n".join(trs) + "\n</tbody></table></div>"]
    return md, html_parts


def _card_rows(e: dict, entry_link: str) -> list[tuple[str, str, str | None]]:
    """(label, text, href) for a card; hrefs are http(s) only (validated) or the relative entry file."""
    c = e["card"]
    res = c["resolution"]
    rows = [
        ("Authors", ", ".join(c["authors"]), None),
        ("Code / weights", c["url"], c["url"]) if c.get("url") else None,
        ("Paper", c["paper"], c["paper"]) if c.get("paper") else None,
        ("Training data", c["training_data"], None),
        ("Resolution", f"{res[0]} x {res[1]}", None),
        ("Conditioning", c["conditioning"], None),
        ("License", c["license"], None),
        ("Kind", "reference row: real images, not a model (not ranked)", None) if is_reference_row(e) else None,
        ("Training", ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else
                               f"{k.replace('_', ' ')} {v:g}" for k, v in c["training"].items()), None)
        if c.get("training") else None,
        ("Protocol", f"{e['protocol']['name']} v{e['protocol']['version']}", None),
        ("Comparable", "yes" if e["comparable"] else "no (not the published weights; not ranked)", None),
        ("Samples", f"{e['samples']['n']} images, sha256 {e['samples']['sha256']}", None),
    ]
    for name, wid in sorted(e["weights"].items()):
        rows.append((f"Weights ({name})", wid, None))
    rows.append(("Entry", entry_link, entry_link))
    return [r for r in rows if r]


def _rel_link(target: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix()


def write_public(path: str | os.PathLike, data: bytes) -> Path:
    """Atomic write, then the usual umask permissions (mkstemp makes 0600; leaderboard files are served)."""
    from ..fileio import atomic_write_bytes

    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return Path(path)


def render(
    entries: list[dict], out_dir: str | os.PathLike, *, entries_dir: str | os.PathLike, rank_by: str | None = None
) -> list[Path]:
    """Write ``README.md``, ``index.html`` and ``plots/*.svg`` under ``out_dir``; returns the paths written.

    Stale ``plots/*.svg`` and ``thumbs/*.png`` files (from entries since removed) are deleted: those folders
    belong to the renderer.
    """
    out = Path(out_dir)
    files = build(entries, out_dir=out, entries_dir=entries_dir, rank_by=rank_by)
    out.mkdir(parents=True, exist_ok=True)
    for sub, pattern in (("plots", "*.svg"), ("thumbs", "*.png")):
        if (out / sub).is_dir():
            for stale in sorted((out / sub).glob(pattern)):
                if f"{sub}/{stale.name}" not in files:
                    stale.unlink()
    for name, data in files.items():
        write_public(out / name, data)
    return [out / name for name in files]


def build(
    entries: list[dict], *, out_dir: str | os.PathLike, entries_dir: str | os.PathLike, rank_by: str | None = None
) -> dict[str, bytes]:
    """The leaderboard's files as ``{path relative to out_dir: bytes}`` (README.md, index.html first, then
    plots/*.svg and thumbs/*.png), without writing anything; links to entry files are relative to ``out_dir``."""
    out = Path(out_dir)
    entries = sorted(entries, key=lambda e: e["slug"])  # input order must not change a byte
    groups = group_entries(entries)
    plots: dict[str, bytes] = {}
    md: list[str] = [
        "# cxrbench leaderboard",
        "",
        (f"Rendered by `cxrbench leaderboard` from {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; "
        "do not edit by hand. Every number was computed by cxrbench from the submitted samples "
        "(`cxrbench verify` re-checks an entry). Only entries with the same protocol name and version and the "
        "same extractor weights, computed with the published weights, are ranked against each other; ↑ higher "
        "is better, "
        "↓ lower is better; brackets are bootstrap 95% CIs."),
        "",
    ]
    if any(is_reference_row(e) for e in entries):
        md += [REFERENCE_NOTE, ""]
    body: list[str] = [
        "<h1>cxrbench leaderboard</h1>",
        (f'<p class="note">{len(entries)} entr{"y" if len(entries) == 1 else "ies"}. Every number was computed '
        "by cxrbench from the submitted samples (<code>cxrbench verify</code> re-checks an entry). Only entries "
        "with the same protocol name and version and the same extractor weights, computed with the published "
        "weights, are ranked against each other. Click a column header to sort (first click: best first). "
        "&uarr; higher is better, &darr; lower is better; brackets are bootstrap 95% CIs.</p>"),
    ]
    if any(is_reference_row(e) for e in entries):
        body.append(f'<p class="note">{_h(REFERENCE_NOTE)}</p>')
    if not groups:
        md.append("No entries yet: add one with `cxrbench submit`.")
        body.append("<p>No entries yet: add one with <code>cxrbench submit</code>.</p>")
    links = {e["slug"]: _rel_link(Path(entries_dir) / e.get("_file", f"{e['slug']}.json"), out) for e in entries}

    for i, g in enumerate(groups):
        if i == 0 or groups[i - 1].protocol_slug != g.protocol_slug:
            md += [f"## Protocol `{g.protocol}` v{_md(g.version)}", ""]
            body.append(f'<h2 id="{_h(g.protocol_slug)}">Protocol <code>{_h(g.protocol)}</code> v{_h(g.version)}</h2>')
        if g.split:  # several weights signatures under this protocol: one ranked table each, never merged
            sig = ", ".join(f"{name} {wid[:12]}" for name, wid in g.weights)
            md += [f"### Extractor weights: {_md(sig)}", ""]
            body.append(f'<h3 id="{_h(g.slug)}">Extractor weights: {_h(sig)}</h3>')
        for section, rows_e in (("ranked", g.ranked), ("unranked", g.unranked)):
            if not rows_e:
                continue
            prefix = g.slug if section == "ranked" else g.protocol_slug
            keys = sorted({k for e in rows_e for k in e["result"]["metrics"]})  # columns this table has values for
            extractors = {x for e in rows_e for x in e["result"].get("extractors") or {}}
            key = rank_by if rank_by in keys else default_rank_key(keys, g.protocol, extractors)
            if key:
                keys = [key] + [k for k in keys if k != key]  # the ranking metric is the first column
            hib = g.directions.get(key, False)
            if section == "ranked":
                ranked = _ordered(rows_e, key, hib)
                md.append(f"Ranked by `{key}` ({_arrow(hib)} {'higher' if hib else 'lower'} is better).")
                body.append(
                    f'<p class="note">Ranked by <code>{_h(key)}</code> ({_arrow(hib)} '
                    f"{'higher' if hib else 'lower'} is better).</p>"
                )
            else:
                ranked = [(None, e) for e in sorted(rows_e, key=lambda e: e["slug"])]
                md.append(
                    "### Not ranked (`comparable: false`)\n\nComputed with random or unpublished extractor weights "
                    "(or below fp32); these numbers cannot be compared with published ones and are never ranked."
                )
                body.append(
                    "<h3>Not ranked (<code>comparable: false</code>)</h3><p class=\"note\">Computed with random "
                    "or unpublished extractor weights (or below fp32); these numbers cannot be compared with "
                    "published ones and are never ranked.</p>"
                )
            md.append("")
            cost = any(e["card"].get("training") for e in rows_e)  # columns only where some row states its cost
            head = (["#"] if section == "ranked" else []) + ["Model", "n"] + [h for _, h in COST_HEADERS if cost]
            head += [f"{k} {_arrow(g.directions[k])}" for k in keys]
            md.append("| " + " | ".join(_md(h) for h in head) + " |")
            md.append("|" + "|".join([":--" if h == "Model" else "--:" for h in head]) + "|")
            tid = f"{prefix}-{section}"
            th = ['<th data-key="rank" data-hib="0">#</th>'] if section == "ranked" else []
            th += [
                '<th class="name" data-key="model" data-hib="0">Model</th>',
                '<th data-key="n" data-hib="1">n</th>',
            ]
            th += [f'<th data-key="train_{k}" data-hib="0">{h}</th>' for k, h in COST_HEADERS if cost]
            th += [
                f'<th data-key="{_h(k)}" data-hib="{int(g.directions[k])}" title="'
                f'{"higher" if g.directions[k] else "lower"} is better">{_h(k)} {_arrow(g.directions[k])}</th>'
                for k in keys
            ]
            trs = []
            for r, e in ranked:
                mets = e["result"]["metrics"]
                ref = is_reference_row(e)
                mark = "ref" if ref else (str(r) if r else "–")
                tag = " (reference: real images)" if ref else ""
                cells_md = ([mark] if section == "ranked" else []) + [
                    f"[{_md(e['name'])}](#card-{e['slug']}){tag}",
                    str(_n_used(e)),
                ] + [text for text, _ in _cost_cells(e) if cost]
                tds = [f'<td data-v="{r if r else ""}">{mark}</td>'] if section == "ranked" else []
                tds += [
                    f'<td class="name" data-v="{_h(e["name"])}"><a href="#card-{e["slug"]}">{_h(e["name"])}</a>'
                    + (' <span class="ref">reference</span>' if ref else "") + "</td>",
                    f'<td data-v="{_n_used(e)}">{_n_used(e)}</td>',
                ]
                tds += [f'<td data-v="{"" if v is None else v}">{_h(text)}</td>' for text, v in _cost_cells(e) if cost]
                for k in keys:
                    cell_md, cell_html = _metric_cell(mets.get(k))
                    cells_md.append(cell_md)
                    tds.append(cell_html)
                md.append("| " + " | ".join(cells_md) + " |")
                trs.append(f'<tr data-slug="{e["slug"]}">' + "".join(tds) + "</tr>")
            md.append("")
            cls = "sortable" if section == "ranked" else "sortable unranked"
            body.append(
                f'<div class="scroll"><table id="{_h(tid)}" class="{cls}">'
                f"<thead><tr>{''.join(th)}</tr></thead><tbody>\n" + "\n".join(trs) + "\n</tbody></table></div>"
            )
            # Per-metric plots, in the table's order (best first for the ranked section).
            imgs_md, imgs_html = [], []
            for k in keys:
                order = _ordered(rows_e, k, g.directions[k]) if section == "ranked" else ranked
                svg = _plot_svg(
                    k,
                    g.directions[k],
                    [(e["name"] + (" (real)" if is_reference_row(e) else ""), e["result"]["metrics"].get(k))
                     for _, e in order],
                    title_suffix="" if section == "ranked" else " - not ranked",
                )
                if svg is None:
                    continue
                fname = f"plots/{prefix}-{section}-{k}.svg"
                plots[fname] = svg
                imgs_md.append(f"![{k}]({fname})")
                imgs_html.append(
                    f'<img alt="{_h(k)}" src="data:image/svg+xml;base64,{base64.b64encode(svg).decode()}">'
                )
            if imgs_md:
                md += ["<details><summary>Plots</summary>", "", *imgs_md, "", "</details>", ""]
                body.append(
                    '<details open><summary>Plots</summary><div class="plots">'
                    + "".join(imgs_html)
                    + "</div></details>"
                )
            if section == "ranked":
                md_t, html_t = _side_tables(g.slug, rows_e)
                md += md_t
                body += html_t

    if entries:
        md += ["## Model cards", ""]
        body.append("<h2>Model cards</h2>")
    for e in entries:
        rows = _card_rows(e, links[e["slug"]])
        md += [f'### <a id="card-{e["slug"]}"></a>{_md(e["name"])}', ""]
        for label, text, href in rows:
            md.append(f"- {label}: " + (f"<{href}>" if href and href.startswith("http") else
                                        f"[{_md(text)}]({href})" if href else _md(text)))
        md.append("")
        thumb = thumbnail_grid(e, entries_dir)
        if thumb is not None:
            plots[f"thumbs/{e['slug']}.png"] = thumb
            md += [f"![first {THUMB_COUNT} samples of {_md(e['name'])}](thumbs/{e['slug']}.png)", ""]
        dl = "".join(
            f"<dt>{_h(label)}</dt><dd>"
            + (f'<a href="{_h(href)}" rel="nofollow noopener">{_h(text)}</a>' if href else _h(text))
            + "</dd>"
            for label, text, href in rows
        )
        img = ("" if thumb is None else f'<img class="thumbs" alt="first {THUMB_COUNT} samples" '
               f'src="data:image/png;base64,{base64.b64encode(thumb).decode()}">')
        body.append(f'<div class="card" id="card-{e["slug"]}"><h3>{_h(e["name"])}</h3><dl>{dl}</dl>{img}</div>')

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No external resources at all: the page works offline and from file://.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>cxrbench leaderboard</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{_JS}</script>\n</body></html>\n"
    )
    return {
        "README.md": ("\n".join(md).rstrip() + "\n").encode(),
        "index.html": page.encode(),
        **dict(sorted(plots.items())),
    }
