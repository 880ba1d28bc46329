"""index.html in headless Chromium (Debian's package): the tables are shown, column sorting works, the floor row
stays on top, the model column stays in view while the table scrolls sideways, and the learning curve loads.

Sorting is driven through the page's own hook, ``?sort=KEY[&dir=asc|desc]``, which clicks the column header
(the same handler a user's click runs); ``--dump-dom`` gives the DOM after the script ran.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cxrbench.publish.leaderboard import render

from ..leaderboard_helpers import fake_entry
from .test_leaderboard import Tables, curve

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)"),
]
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per run
    proc = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        check=False, capture_output=True, text=True, timeout=90,
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    more = {"recall_x": (0.61, True), "coverage_x": (0.42, True), "memorization_x": (0.0123, False),
            "label_mae": (0.134, False)}  # the headline's other columns: a table wider than a narrow window
    entries = [
        fake_entry("Alpha", {"fid_x": (10.0, False), "precision_x": (0.9, True), **more}),
        fake_entry("Beta", {"fid_x": (4.0, False), "precision_x": (0.5, True), **more}),
        fake_entry("Gamma", {"fid_x": (7.0, False), "precision_x": (0.7, True), **more}),
    ]
    for e in entries:
        e["result"]["metrics"]["fid_x"].update(real_vs_real=2.0, real_vs_real_n=[4, 4])
    entries[0]["learning_curve"] = curve([(5.0, 30.0), (15.0, 10.0)])
    entries[1]["learning_curve"] = curve([(5.0, 12.0), (15.0, 4.0)])
    render(entries, out, entries_dir=out / "entries", rank_by="fid_x")
    return out / "index.html"


@pytest.mark.parametrize(
    "query, order, state",
    [
        ("", ["beta", "gamma", "alpha"], None),  # as rendered: ranked by fid_x, lower first
        ("?sort=precision_x", ["alpha", "gamma", "beta"], ("precision_x", "descending")),  # first click: best first
        ("?sort=precision_x&dir=asc", ["beta", "gamma", "alpha"], ("precision_x", "ascending")),  # 2nd click reverses
        ("?sort=fid_x", ["beta", "gamma", "alpha"], ("fid_x", "ascending")),  # lower is better: ascending
        ("?sort=model&dir=desc", ["gamma", "beta", "alpha"], ("model", "descending")),  # text column
    ],
)
def test_sorting_in_chromium(page, tmp_path, query, order, state):
    table = Tables(chromium(tmp_path, "--dump-dom", page.as_uri() + query)).tables["default-v1-ranked"]
    assert table["rows"] == order
    assert table["sorted"] == state  # the clicked header shows its sort state
    assert table["floor"] is not None and table["floor"][1] == "2.00"  # sorting never moves the floor row


def test_table_is_visible_in_a_screenshot(page, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri())
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 900)
    # The table header band (#f3f4f7) and text must be painted: a blank or error page is all one colour.
    hist = img.histogram()
    assert sum(hist[:128]) > 2000 and sum(hist[200:255]) > 2000


def test_the_committed_board_shows_every_entry_in_chromium(tmp_path):
    """The shipped leaderboard/index.html, as a browser builds it: every entry is a row of its table."""
    import json

    board = Path(__file__).resolve().parents[2] / "leaderboard"
    slugs = sorted(json.loads(p.read_text())["slug"] for p in (board / "entries").glob("*.json"))
    if not slugs:
        pytest.skip("no committed entries")
    tables = Tables(chromium(tmp_path, "--dump-dom", (board / "index.html").as_uri())).tables
    shown = sorted(s for tid, t in tables.items() if tid.endswith("ranked") for s in t["rows"])
    assert shown == slugs  # each entry once, in its protocol's main table
    # the conditional models' own tables are there too: augmentation and per condition
    assert any("-aug-" in tid for tid in tables) and any(tid.endswith("per-condition") for tid in tables)


# Appended to a copy of the page: measures, in the browser's own layout, what a reader sees, and writes it into
# <body data-check> for --dump-dom. The floor row, every ranked row and the curve image are located; the first
# table is scrolled sideways and the model cell must not move while the next cell does.
PROBE = """<script>(function(){
var t=document.querySelector('table.sortable'),s=t.parentNode,name=t.querySelector('tbody.rows td.name'),
 next=name.nextElementSibling,x0=name.getBoundingClientRect().left,y0=next.getBoundingClientRect().left;
s.scrollLeft=400;
var imgs=Array.prototype.map.call(document.querySelectorAll('img.curve'),function(i){
 return {w:i.naturalWidth,h:i.getBoundingClientRect().height,alt:i.alt};});
document.body.setAttribute('data-check',JSON.stringify({position:getComputedStyle(name).position,
 scrollable:s.scrollWidth>s.clientWidth,name_moved:name.getBoundingClientRect().left-x0,
 next_moved:next.getBoundingClientRect().left-y0,curves:imgs,
 floor_rows:document.querySelectorAll('tr.floor').length,
 shown:Array.prototype.filter.call(document.querySelectorAll('tbody.rows tr[data-slug]'),function(r){
  return r.getBoundingClientRect().height>0;}).length}));})();</script></body>"""


def probe(tmp_path: Path, page: Path, width: int = 560) -> dict:
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", PROBE))
    dom = chromium(tmp_path, f"--window-size={width},900", "--dump-dom", probed.as_uri())
    import re

    return json.loads(__import__("html").unescape(re.search(r'data-check="([^"]*)"', dom).group(1)))


def test_the_model_column_stays_in_view_while_the_table_scrolls(page, tmp_path):
    # a narrow window: the table is wider than the page, so it scrolls inside its own box
    check = probe(tmp_path, page, width=420)
    assert check["position"] == "sticky" and check["scrollable"]
    assert check["next_moved"] < -50 and abs(check["name_moved"]) < 1  # metrics scrolled, the model column stayed


def test_the_learning_curve_plot_is_shown(page, tmp_path):
    check = probe(tmp_path, page)
    assert len(check["curves"]) == 1 and check["curves"][0]["w"] > 300 and check["curves"][0]["h"] > 100
    assert "learning curves" in check["curves"][0]["alt"]


def test_the_committed_board_in_chromium_every_ranked_row_one_floor_row_sticky_names(tmp_path):
    board = Path(__file__).resolve().parents[2] / "leaderboard"
    entries = [json.loads(p.read_text()) for p in (board / "entries").glob("*.json")]
    if not entries:
        pytest.skip("no committed entries")
    work = tmp_path / "board"
    work.mkdir()
    shutil.copy(board / "index.html", work / "index.html")
    tables = Tables(chromium(tmp_path, "--dump-dom", (work / "index.html").as_uri())).tables
    groups = {(e["protocol"]["name"], e["protocol"]["version"]) for e in entries}
    for name, version in sorted(groups):  # one ranked headline table per protocol
        head = tables[f"{name}-v{version}-ranked"]
        models = sorted(e["slug"] for e in entries if e["card"].get("kind") != "reference" and e["comparable"]
                        and e["protocol"]["name"] == name)
        assert sorted(s for s, r in zip(head["rows"], head["ranks"]) if r not in ("ref", "")) == models
        assert sorted(r for r in head["ranks"] if r != "ref") == sorted(str(i) for i in range(1, len(models) + 1))
        assert head["floor"][0].startswith("floor: real vs real")
    check = probe(tmp_path, work / "index.html", width=700)
    assert check["position"] == "sticky" and abs(check["name_moved"]) < 1 and check["next_moved"] < -50
    assert check["shown"] >= len(entries)  # the headline rows are laid out (family tables are folded)
