"""Leaderboard rules: direction-aware ranking, one table per protocol version, random-weight entries apart,
byte-stable rendering, and untrusted entries refused."""

from __future__ import annotations

import copy
import json
import os
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cxrbench.errors import DataError
from cxrbench.publish.board import fmt, side_tables
from cxrbench.publish.entry import load_entries, make_entry, validate_entry
from cxrbench.publish.leaderboard import build, render
from cxrbench.publish.ranking import group_entries, rank

from ..leaderboard_helpers import fake_entry


class Tables(HTMLParser):
    """table id -> {"keys": [th data-key...], "rows": [tr data-slug...], "sorted": (key, aria-sort) or None,
    "floor": [the floor row's cell texts] or None, "ranks": [tr data-rank...]}."""

    def __init__(self, text):
        super().__init__()
        self.tables, self._cur = {}, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "id" not in a:  # the claims table: prose, not a sortable metric table
            self._cur = None
        elif tag == "table":
            self._cur = self.tables.setdefault(a["id"], {"keys": [], "rows": [], "sorted": None, "floor": None,
                                                         "ranks": []})
        elif tag == "th" and self._cur is not None:
            self._cur["keys"].append(a["data-key"])
            if "aria-sort" in a:
                self._cur["sorted"] = (a["data-key"], a["aria-sort"])
        elif tag == "tr" and self._cur is not None and "data-slug" in a:
            self._cur["rows"].append(a["data-slug"])
            self._cur["ranks"].append(a.get("data-rank"))
            self._floor = False
        elif tag == "tr" and self._cur is not None and a.get("class") == "floor":
            self._cur["floor"], self._floor = [], True
        elif tag == "td" and self._cur is not None and getattr(self, "_floor", False):
            self._cur["floor"].append("")
            self._td = True

    def handle_data(self, data):
        if getattr(self, "_td", False):
            self._cur["floor"][-1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self._td = False
        if tag == "table":
            self._cur, self._floor = None, False


def board():
    return [
        fake_entry("Alpha", {"fid_x": (10.0, False), "precision_x": (0.9, True)}),
        fake_entry("Beta", {"fid_x": (4.0, False), "precision_x": (0.5, True)}),
        fake_entry("Gamma", {"fid_x": (7.0, False), "precision_x": (0.7, True)}),
        fake_entry("Random", {"fid_x": (0.5, False), "precision_x": (0.99, True), "rc": (1.0, False)},
                   comparable=False),
        fake_entry("Next", {"fid_x": (1.0, False), "precision_x": (0.95, True)}, protocol=("default", 2)),
    ]


def test_rank_honours_each_metrics_direction():
    es = board()[:3]
    by_fid = [e["slug"] for _, e in rank(es, "fid_x", False)]
    by_precision = [e["slug"] for _, e in rank(es, "precision_x", True)]
    assert by_fid == sorted(by_fid, key=lambda s: {e["slug"]: e for e in es}[s]["result"]["metrics"]["fid_x"]["value"])
    assert by_fid == ["beta", "gamma", "alpha"]  # lower is better: ascending
    assert by_precision == ["alpha", "gamma", "beta"]  # higher is better: descending
    # Flipping the declared direction in the entries flips the order: nothing is hard-coded.
    flipped = copy.deepcopy(es)
    for e in flipped:
        e["result"]["metrics"]["fid_x"]["higher_is_better"] = True
    g = group_entries(flipped)[0]
    assert g.directions["fid_x"] is True
    assert [e["slug"] for _, e in rank(flipped, "fid_x", g.directions["fid_x"])] == by_fid[::-1]


def test_ties_share_a_rank_and_missing_values_come_last():
    es = [
        fake_entry("A", {"m": (1.0, False)}),
        fake_entry("B", {"m": (1.0, False)}),
        fake_entry("C", {"m": (2.0, False)}),
        fake_entry("D", {"other": (2.0, False)}),
    ]
    assert [(r, e["slug"]) for r, e in rank(es, "m", False)] == [(1, "a"), (1, "b"), (3, "c"), (None, "d")]


def test_rendered_tables_follow_direction_and_keep_versions_and_random_weights_apart(tmp_path):
    es = board()
    render(es, tmp_path, entries_dir=tmp_path / "entries")
    t = Tables((tmp_path / "index.html").read_text()).tables
    assert {tid for tid in t if tid.endswith("ranked")} == {"default-v1-ranked", "default-v1-unranked",
                                                             "default-v2-ranked"}
    assert t["default-v1-ranked"]["rows"] == ["beta", "gamma", "alpha"]  # ranked by fid_x, ascending
    assert t["default-v1-ranked"]["ranks"] == ["1", "2", "3"]
    assert t["default-v1-ranked"]["keys"] == ["model", "fid_x", "precision_x"]  # headline: ranking metric first
    assert t["default-v1-unranked"]["keys"] == ["model", "fid_x", "precision_x"]
    assert t["default-v1-unranked-rc"]["keys"] == ["model", "rc"]  # other metrics folded, columns per section
    # comparable: false is listed apart, without ranks, even though its numbers look best
    assert t["default-v1-unranked"]["rows"] == ["random"] and t["default-v1-unranked"]["ranks"] == [""]
    assert t["default-v2-ranked"]["rows"] == ["next"]  # protocol v2 never shares a table with v1
    md = (tmp_path / "README.md").read_text()
    v1, v2 = md.index("## Protocol `default` v1"), md.index("## Protocol `default` v2")
    assert md.index("[Next]") > v2 and v1 < md.index("[Beta]") < md.index("[Gamma]") < md.index("[Alpha]") < v2
    assert "| **1** [Random]" not in md and md.index("[Random]") > md.index("Not ranked")
    # arrows come from the entries: fid_x lower, precision_x higher
    assert "fid\\_x ↓" in md and "precision ↑" in md
    assert 'data-key="precision_x" data-hib="1"' in (tmp_path / "index.html").read_text()


def test_rank_by_another_metric_uses_its_direction(tmp_path):
    render(board(), tmp_path, entries_dir=tmp_path / "entries", rank_by="precision_x")
    t = Tables((tmp_path / "index.html").read_text()).tables
    assert t["default-v1-ranked"]["rows"] == ["alpha", "gamma", "beta"]


def test_rendering_is_byte_stable(tmp_path):
    es = board()
    entries_dir = tmp_path / "entries"
    entries_dir.mkdir()
    for e in es:
        (entries_dir / f"{e['slug']}.json").write_text(json.dumps(e))
    a, b = tmp_path / "a", tmp_path / "b"
    render(load_entries(entries_dir), a, entries_dir=entries_dir)
    shuffled = load_entries(entries_dir)
    random.Random(0).shuffle(shuffled)  # input order must not matter either
    render(shuffled, b, entries_dir=entries_dir)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 2
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # re-rendering after removing an entry drops its stale plots
    (entries_dir / "next.json").unlink()
    render(load_entries(entries_dir), a, entries_dir=entries_dir)
    assert not list((a / "plots").glob("default-v2-*"))


def test_card_text_is_escaped(tmp_path):
    e = fake_entry("Evil", {"fid_x": (1.0, False)})
    e["card"]["training_data"] = '<script>alert(1)</script> | [x](javascript:1)'
    validate_entry(e)
    render([e], tmp_path, entries_dir=tmp_path / "entries")
    page = (tmp_path / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (tmp_path / "README.md").read_text()
    assert "<script>" not in md and "\\[x\\]" in md


def test_directions_must_agree_within_a_protocol():
    a = fake_entry("A", {"m": (1.0, False)})
    b = fake_entry("B", {"m": (2.0, True)})
    with pytest.raises(DataError, match="disagree on the direction of 'm'"):
        group_entries([a, b])


@pytest.mark.parametrize(
    "tamper, match",
    [
        (lambda e: e["samples"]["files"][0].update(path="../../etc/passwd"), "escapes the samples folder"),
        (lambda e: e["samples"]["files"][0].update(path="/etc/passwd"), "escapes the samples folder"),
        (lambda e: e["samples"]["files"][0].update(sha256="0" * 64), "does not match its file list"),
        (lambda e: e["result"]["metrics"]["fid_x"].update(value="NaN"), "non-numeric"),
        (lambda e: e.update(comparable=not e["comparable"]), "comparable"),
        (lambda e: e["protocol"].update(version=9), "differs from the result"),
        (lambda e: e.update(schema="cxrbench.entry/0"), "schema"),
        (lambda e: e["card"].update(url="javascript:alert(1)"), "'url'"),
        (lambda e: e["result"]["metrics"].update({"<b>": e["result"]["metrics"]["fid_x"]}), "not a plain name"),
    ],
)
def test_untrusted_entries_are_refused(tmp_path, tamper, match):
    e = fake_entry("A", {"fid_x": (1.0, False)})
    tamper(e)
    (tmp_path / "a.json").write_text(json.dumps(e))
    with pytest.raises(DataError, match=match) as err:
        load_entries(tmp_path)
    assert "a.json" in str(err.value)


def test_entries_must_be_named_by_their_card(tmp_path):
    e = fake_entry("A", {"fid_x": (1.0, False)})
    (tmp_path / "a.json").write_text(json.dumps(e))
    assert [x["slug"] for x in load_entries(tmp_path)] == ["a"]
    (tmp_path / "a-copy.json").write_text(json.dumps(e))  # a second entry for the same model
    with pytest.raises(DataError, match=r"a-copy.json: holds the entry of 'A', which `cxrbench submit` names a.json"):
        load_entries(tmp_path)


def test_deeply_nested_json_is_a_clean_error(tmp_path):
    (tmp_path / "a.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match="not valid JSON"):
        load_entries(tmp_path)


def test_committed_leaderboard_is_rendered_from_the_committed_entries():
    """leaderboard/README.md and index.html are outputs: re-render after adding an entry, never edit by hand."""
    board = Path(__file__).resolve().parents[2] / "leaderboard"
    files = build(load_entries(board / "entries"), out_dir=board, entries_dir=board / "entries")
    # Plots are compared by presence only (their bytes depend on the matplotlib version), thumbnails by pixels
    # (PNG bytes depend on the zlib that Pillow bundles).
    def strip(b):
        return re.sub(rb"data:image/(svg\+xml|png);base64,[A-Za-z0-9+/=]*", b"", b)

    import io

    import numpy as np
    from PIL import Image

    for name in (n for n in files if n.startswith("thumbs/")):
        assert np.array_equal(np.asarray(Image.open(board / name)), np.asarray(Image.open(io.BytesIO(files[name])))), (
            f"leaderboard/{name} is stale: run `cxrbench leaderboard`")
    for name in ("README.md", "index.html"):
        assert strip((board / name).read_bytes()) == strip(files[name]), (
            f"leaderboard/{name} is stale: run `cxrbench leaderboard`"
        )
    # what the board is rendered from and how entries are made; progress/ and validity/ belong to the validity
    # suite (its training ladders and its tables), not to the board
    inputs = {"entries", "recipes", "references", "samples", "progress", "validity"}
    on_disk = {p.relative_to(board).as_posix() for p in board.rglob("*") if p.is_file() and not inputs & set(p.parts)}
    assert on_disk == set(files)


def test_the_floor_is_one_row_and_each_model_is_also_shown_at_the_floors_sizes(tmp_path):
    """The real-vs-real floor is one row of the table, not repeated in every cell; the values it can be held
    against (each model at the floor's sizes) are their own folded table, with the floor on top again."""
    es = [fake_entry("Alpha", {"fid_x": (12.0, False)}), fake_entry("Beta", {"fid_x": (20.0, False)})]
    for e, matched in zip(es, (15.0, 26.0)):
        m = e["result"]["metrics"]["fid_x"]
        m.update(real_vs_real=9.5, real_vs_real_n=[4, 8], value_at_real_vs_real_n=matched)
    es[1]["result"]["metrics"]["fid_x"].update(valid=False, reason="fid: too few rows", ci=None)
    render(es, tmp_path, entries_dir=tmp_path / "entries")
    md = (tmp_path / "README.md").read_text()
    assert "| *floor: real vs real at 4 vs 8 images* | 9.50 |" in md
    assert "| **1** [Alpha](#card-alpha) | 12.0 [11.4, 12.6] |" in md
    assert "| **2** [Beta](#card-beta) | 20.0 not valid |" in md
    assert md.count("9.50") == 2 and "floor 9.5" not in md  # headline and at-the-floor's-sizes tables only
    assert "| **1** [Alpha](#card-alpha) | 15.0 |" in md and "| **2** [Beta](#card-beta) | 26.0 |" in md
    t = Tables((tmp_path / "index.html").read_text()).tables
    assert t["default-v1-ranked"]["floor"][1:] == ["9.50"]
    assert t["default-v1-ranked-at-floor-n"]["floor"][1:] == ["9.50"]
    svg = next((tmp_path / "plots").glob("*fid_x.svg")).read_text()
    assert "samples @ the floor" in svg and "real vs real @ its N" in svg


def test_reference_rows_give_scale_without_taking_a_rank(tmp_path):
    real = fake_entry("Held-out real", {"fid_x": (2.0, False), "precision_x": (0.97, True)},
                      card_extra={"kind": "reference"})
    files = build(board()[:3] + [real], out_dir=tmp_path, entries_dir=tmp_path)
    table = Tables(files["index.html"].decode()).tables["default-v1-ranked"]
    # placed by its value (best FID first), but the models keep ranks 1, 2, 3
    assert table["rows"] == ["held-out-real", "beta", "gamma", "alpha"]
    assert table["ranks"] == ["ref", "1", "2", "3"]
    md = files["README.md"].decode()
    assert "| **ref** [Held-out real](#card-held-out-real) (reference: real images) |" in md
    assert "| **1** [Beta](#card-beta) |" in md and "| **3** [Alpha](#card-alpha) |" in md


def test_training_cost_and_thumbnails_come_from_the_card_and_the_samples(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    samples = tmp_path / "samples" / "m"
    samples.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(samples / f"img_{i:03d}.png")
    entries = tmp_path / "entries"
    entries.mkdir()
    e = fake_entry("Model", {"fid_x": (3.0, False)}, location="../samples/m",
                   card_extra={"training": {"steps": 1234, "cpu_minutes": 15.0, "parameters": 56789}})
    files = build([e], out_dir=tmp_path, entries_dir=entries)
    md = files["README.md"].decode()
    assert "| 3.00 [2.85, 3.15] | 15.0 CPU min · 1,234 steps · 56.8k params |" in md
    grid = Image.open(io.BytesIO(files["thumbs/model.png"]))
    assert grid.size == (8 * 64, 64)
    # each tile is its sample, resized: the 4th tile matches the 4th file (paths in the entry's order)
    tile = np.asarray(grid)[:, 3 * 64:4 * 64].astype(float)
    want = np.asarray(Image.open(samples / "img_003.png").resize((64, 64), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(tile - want).max() == 0
    assert "](thumbs/model.png)" in md
    # the headline table's strip: the first six samples in one row, beside the model's name
    strip = Image.open(io.BytesIO(files["thumbs/model-strip.png"]))
    assert strip.size == (6 * 32, 32)
    want = np.asarray(Image.open(samples / "img_005.png").resize((32, 32), Image.Resampling.BILINEAR)).astype(float)
    assert np.abs(np.asarray(strip)[:, 5 * 32:].astype(float) - want).max() == 0
    assert "| **1** [Model](#card-model) ![first samples of Model](thumbs/model-strip.png) |" in md
    # a sample file gone: no thumbnail rather than a wrong one
    (samples / "img_000.png").unlink()
    files = build([e], out_dir=tmp_path, entries_dir=entries)
    assert "thumbs/model.png" not in files and "thumbs/model-strip.png" not in files


def test_gpu_hours_are_a_training_cost_too():
    e = fake_entry("G", {"fid_x": (3.0, False)}, card_extra={"training": {"gpu_hours": 2.5, "steps": 10}})
    files = build([e], out_dir="/tmp", entries_dir="/tmp")
    assert "| 2.50 GPU h · 10 steps |" in files["README.md"].decode()


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_a_samples_location_outside_the_tree_is_refused_not_thumbnailed(tmp_path, how):
    """A hostile entry must not make the rendered board publish thumbnails of a folder outside its tree."""
    import numpy as np
    from PIL import Image

    private = tmp_path / "private"
    private.mkdir()
    for i in range(8):
        Image.fromarray(np.full((32, 32), 17 * i, dtype=np.uint8)).save(private / f"img_{i:03d}.png")
    entries = tmp_path / "lb" / "entries"
    entries.mkdir(parents=True)
    if how == "dotdot":
        loc = "../../private"
    else:
        (tmp_path / "lb" / "samples").mkdir()
        os.symlink(private, tmp_path / "lb" / "samples" / "m")
        loc = "../samples/m"
    e = fake_entry("Model", {"fid_x": (3.0, False)}, location=loc)
    with pytest.raises(DataError, match="samples.location .* outside"):
        build([e], out_dir=tmp_path / "lb", entries_dir=entries)


def test_conditional_models_get_augmentation_and_per_condition_tables():
    def m(v, hib=True):
        return {"value": v, "ci": [v - 0.01, v + 0.01], "higher_is_better": hib, "n_gen": 50, "n_ref": 160,
                "real_vs_real": None}

    def entry(name, gain, conditions):
        e = fake_entry(name, {"fid_x": (5.0, False)})
        e["augmentation"] = {"task": "Effusion vs No Finding",
                             "details": {"training_sizes": {"real": {"n_real": 50, "n_synthetic": 0}}},
                             "metrics": {"aug_gain_auroc": m(gain), "aug_real_auroc": m(0.7)}}
        e["result"]["per_condition"] = {"min_samples": 20, "min_reference": 20, "conditions": conditions}
        return e

    a = entry("A", -0.02, {"Effusion": {"n_samples": 30, "n_reference": 45, "metrics": {"fid_x": m(9.0, False)}},
                           "Pneumonia": {"n_samples": 1, "n_reference": 4, "skipped": "too few"}})
    b = entry("B", 0.05, {"No Finding": {"n_samples": 90, "n_reference": 175, "metrics": {"fid_x": m(4.0, False)}}})
    aug, cond = side_tables("g", [a, b])
    # augmentation: best gain first; per condition: every qualifying (model, condition), skipped ones left out
    assert aug.id == "g-aug-effusion-vs-no-finding" and [r.slug for r in aug.rows] == ["b", "a"]
    assert [r.name for r in cond.rows] == ["A / Effusion (30/45)", "B / No Finding (90/175)"]
    assert "Training sizes: real 50 real." in aug.note  # counts in words, never a dict's repr
    assert side_tables("g", [fake_entry("C", {"fid_x": (5.0, False)})]) == []


def test_three_significant_digits():
    assert [fmt(v) for v in (0.7, 19.70541, 136.6, 9.996, 0.000123, 1234.5, 0, -0.0089, None)] == [
        "0.700", "19.7", "137", "10.0", "1.23e-04", "1230", "0", "-0.00890", "–"]


def committed_board() -> dict[str, bytes]:
    lb = Path(__file__).resolve().parents[2] / "leaderboard"
    return build(load_entries(lb / "entries"), out_dir=lb, entries_dir=lb / "entries")


def test_the_committed_boards_headline_table_has_eight_columns_and_one_floor_row():
    from cxrbench.protocols import cxr128 as proto
    from cxrbench.publish.board import fmt

    files = committed_board()
    t = Tables(files["index.html"].decode()).tables[f"cxr128-v{proto.VERSION}-ranked"]
    assert t["keys"] == ["model", "fid_cxr128", "precision_cxr128", "recall_cxr128", "coverage_cxr128",
                         "memorization_cxr128", "label_mae", "cost"]
    held = json.loads((Path(__file__).resolve().parents[2] / "leaderboard" / "entries" /
                       "held-out-real-nih-images-cxr128.json").read_text())
    floor = held["result"]["metrics"]["fid_cxr128"]["real_vs_real"]  # fid_cxr128 real vs real at 300/299
    assert t["floor"] is not None and t["floor"][1] == fmt(floor)
    md = files["README.md"].decode()
    assert md.count("| *floor: ") == sum(1 for tid, x in Tables(files["index.html"].decode()).tables.items()
                                                    if x["floor"] is not None)


MD_ENTITY = re.compile(r"(?<!\\)&(#[0-9]+|#x[0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
MD_ALLOWED_HTML = re.compile(r'<a id="card-[a-z0-9-]+"></a>|<https?://[^\s<>]+>')  # card anchors, autolinks


def assert_plain_markdown(md: str) -> None:
    assert not MD_ENTITY.search(md), MD_ENTITY.search(md)
    assert not re.search(r"\{'|': |\{\"", md)  # no dict repr
    rest = MD_ALLOWED_HTML.sub("", md)
    assert not re.search(r"(?<!\\)<[A-Za-z/!]", rest), re.search(r".{40}(?<!\\)<[A-Za-z/!].{40}", rest)


def test_markdown_has_no_html_entities_raw_html_or_dict_reprs():
    assert_plain_markdown(committed_board()["README.md"].decode())


def test_a_crafted_name_is_escaped_in_both_outputs(tmp_path):
    """Names are validated (no '<' in a card name), but the renderer escapes whatever it is given."""
    e = fake_entry("Evil", {"fid_x": (1.0, False), "precision_x": (0.5, True)})
    evil = "<script>alert(1)</script> & [x](javascript:1) | *"
    with pytest.raises(DataError, match="'name'"):
        validate_entry({**e, "name": evil, "card": {**e["card"], "name": evil}})
    e["name"] = e["card"]["name"] = evil
    files = build([e], out_dir=tmp_path, entries_dir=tmp_path)
    page = files["index.html"].decode()
    assert "<script>alert" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt; &amp; [x]") >= 3
    md = files["README.md"].decode()
    assert "<script>" not in md and not re.search(r"(?<!\\)\]\(javascript", md)  # no tag, no link
    assert "\\<script\\>alert(1)\\</script\\> \\& \\[x\\](javascript:1) \\| \\*" in md
    assert_plain_markdown(md)


def curve(points, metric="fid_x", n=50):
    return {"checkpoints": [{"cpu_minutes": t, "n_samples": n, "metric": metric, "value": v, "ci": [v - 1, v + 1]}
                            for t, v in points]}


def test_learning_curves_are_drawn_per_group_and_skipped_without(tmp_path):
    es = board()[:3]
    plain = build(es, out_dir=tmp_path, entries_dir=tmp_path)
    assert not [n for n in plain if "learning-curve" in n] and "Learning curves" not in plain["README.md"].decode()
    es[0]["learning_curve"] = curve([(5.0, 30.0), (15.0, 20.0), (30.0, 10.0)])
    es[1]["learning_curve"] = curve([(5.0, 12.0), (30.0, 4.0)])
    for e in es:
        validate_entry(e)
    files = build(es, out_dir=tmp_path, entries_dir=tmp_path)
    svg = files["plots/default-v1-learning-curve.svg"].decode()
    assert "N = 50 samples per point" in svg and "training CPU minutes" in svg
    assert "Alpha" in svg and "Beta" in svg and "Gamma" not in svg  # one line per model that has a curve
    md = files["README.md"].decode()
    assert "](plots/default-v1-learning-curve.svg)" in md
    assert 'class="curve"' in files["index.html"].decode()
    # everything else is as without curves
    assert files["plots/default-v1-ranked-fid_x.svg"] == plain["plots/default-v1-ranked-fid_x.svg"]


@pytest.mark.parametrize(
    "block, match",
    [
        ([], "must be"),
        ({"checkpoints": []}, "1 to"),
        ({"checkpoints": [{"cpu_minutes": 5}]}, "missing"),
        (curve([(0.0, 3.0)]), "cpu_minutes must be a positive"),
        (curve([(5.0, 3.0), (5.0, 2.0)]), "must increase"),
        (curve([(5.0, 3.0)], metric="fid_y"), "not a metric of the entry"),
        (curve([(5.0, 3.0)], n=0), "n_samples"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0], "value": "NaN"}]}, "finite"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0], "ci": [4, 2]}]}, "lo <= hi"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0], "sha": "x"}]}, "unknown"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0],
                           "samples": {"location": "/etc", "sha256": "0" * 64}}]}, "relative POSIX path"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0],
                           "samples": {"location": "../samples/x", "sha256": "0" * 63}}]}, "64 hex"),
        ({"checkpoints": [{**curve([(5.0, 3.0)])["checkpoints"][0],
                           "samples": {"location": "../samples/x", "sha256": "0" * 64, "n": 3}}]}, "samples must be"),
    ],
)
def test_untrusted_learning_curves_are_refused(tmp_path, block, match):
    e = fake_entry("A", {"fid_x": (1.0, False)})
    e["learning_curve"] = block
    (tmp_path / "a.json").write_text(json.dumps(e))
    with pytest.raises(DataError, match=match) as err:
        load_entries(tmp_path)
    assert "a.json: learning_curve" in str(err.value)


def test_a_learning_curve_round_trips_through_an_entry_file(tmp_path):
    e = fake_entry("A", {"fid_x": (1.0, False)})
    block = curve([(5.0, 3.0), (15.0, 2.0)])
    block["checkpoints"][0]["steps"] = 100
    block["checkpoints"][0]["samples"] = {"location": "../samples/curves/a/cpu-5min", "sha256": "ab" * 32}
    from cxrbench.publish.card import card_from_dict

    files = [(f["path"], f["sha256"]) for f in e["samples"]["files"]]
    again = make_entry(e["result"], card_from_dict(e["card"]), files, e["weights"], curve=block)
    (tmp_path / "a.json").write_text(json.dumps(again))
    assert load_entries(tmp_path)[0]["learning_curve"] == block


def test_entries_with_a_reconstruction_block_get_the_reconstruction_table():
    from cxrbench.publish.claims import white_paper_rrs

    def entry(name, v, comparable=False):
        e = fake_entry(name, {"fid_x": (5.0, False)})
        e["reconstruction"] = {
            "real": {"split": "cxr128-heldout", "n": 309}, "samples": {"n": 309}, "weights": {"moco": "random:0"},
            "comparable": comparable,
            "metrics": {"rrs_moco": {"value": v, "ci": [v - 0.001, v + 0.001], "higher_is_better": False,
                                     "n_gen": 309, "n_ref": 309, "real_vs_real": 0.0123}}}
        return e

    a, b = entry("VAE-64", 0.05), entry("GMVAE-64", 0.02)
    (t,) = side_tables("g", [a, b, fake_entry("LSGAN", {"fid_x": (4.0, False)})])
    assert t.id == "g-reconstruction" and [r.name for r in t.rows] == ["GMVAE-64", "VAE-64"]  # lower is better
    assert [c.text for c in t.rows[0].cells] == ["0.0200", "309/309", "random:0", "no"]
    assert t.floor.cells[0].text == "0.0123" and "not on the white paper's scale" in t.note
    # the claims row shows the random-weights values without a verdict; comparable ones are judged
    claim = white_paper_rrs([a, b])
    assert "random MoCo weights" in claim.evidence and claim.verdict == "no evidence"
    assert white_paper_rrs([entry("VAE-64", 0.04, comparable=True)]).verdict.startswith("supported")


def test_a_biased_metrics_interval_is_shown_with_the_estimate_it_is_for():
    from cxrbench.publish.board import ci_text, metric_cell

    # FID @N is biased upward; its interval is for the bias-corrected estimate, which must be printed with it
    fid = {"value": 5.60, "value_bias_corrected": 4.55, "ci": [1.41, 7.11], "higher_is_better": False}
    cell = metric_cell(fid)
    assert cell.text == "5.60" and cell.sub == "4.55* [1.41, 7.11]"
    assert ci_text({"value": 0.9, "ci": [0.8, 0.95]}) == "[0.800, 0.950]"  # unbiased: the interval alone


def test_an_interval_off_its_coverage_is_marked_and_its_measured_range_said_once_per_table(tmp_path):
    from cxrbench.publish.board import ci_text

    cov = {"measured": 0.905, "range": [0.905, 1.0], "benchmark": "x"}
    m = {"value": 5.6, "value_bias_corrected": 4.55, "ci": [1.41, 7.11], "ci_coverage": cov}
    assert ci_text(m) == "4.55* [1.41, 7.11]†"
    es = [fake_entry(name, {"fid_x": (v, False)}) for name, v in (("A", 2.0), ("B", 3.0))]
    for e in es:
        e["result"]["metrics"]["fid_x"].update(ci=[1.0, 4.0], ci_coverage=cov)
    render(es, tmp_path, entries_dir=tmp_path / "entries")
    md = (tmp_path / "README.md").read_text()
    assert md.count("†") == 3  # two cells and the note
    assert "fid\\_x 90.5%-100.0%" in md and "covers 90.5%" not in md  # the range once, not in every cell
