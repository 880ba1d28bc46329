"""index.html in headless Chromium (Debian's package): the table is shown and column sorting works.

Sorting is driven through the page's own hook, ``?sort=KEY[&dir=asc|desc]``, which clicks the column header
(the same handler a user's click runs); ``--dump-dom`` gives the DOM after the script ran.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cxrbench.publish.leaderboard import render

from .leaderboard_helpers import fake_entry
from .test_leaderboard import Tables

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
    entries = [
        fake_entry("Alpha", {"fid_x": (10.0, False), "prec_x": (0.9, True)}),
        fake_entry("Beta", {"fid_x": (4.0, False), "prec_x": (0.5, True)}),
        fake_entry("Gamma", {"fid_x": (7.0, False), "prec_x": (0.7, True)}),
    ]
    render(entries, out, entries_dir=out / "entries")
    return out / "index.html"


@pytest.mark.parametrize(
    "query, order, state",
    [
        ("", ["beta", "gamma", "alpha"], None),  # as rendered: ranked by fid_x, lower first
        ("?sort=prec_x", ["alpha", "gamma", "beta"], ("prec_x", "descending")),  # first click: best first
        ("?sort=prec_x&dir=asc", ["beta", "gamma", "alpha"], ("prec_x", "ascending")),  # second click reverses
        ("?sort=fid_x", ["beta", "gamma", "alpha"], ("fid_x", "ascending")),  # lower is better: ascending
        ("?sort=model&dir=desc", ["gamma", "beta", "alpha"], ("model", "descending")),  # text column
    ],
)
def test_sorting_in_chromium(page, tmp_path, query, order, state):
    table = Tables(chromium(tmp_path, "--dump-dom", page.as_uri() + query)).tables["default-v1-ranked"]
    assert table["rows"] == order
    assert table["sorted"] == state  # the clicked header shows its sort state


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

    board = Path(__file__).resolve().parents[1] / "leaderboard"
    slugs = sorted(json.loads(p.read_text())["slug"] for p in (board / "entries").glob("*.json"))
    if not slugs:
        pytest.skip("no committed entries")
    tables = Tables(chromium(tmp_path, "--dump-dom", (board / "index.html").as_uri())).tables
    shown = sorted(s for tid, t in tables.items() if tid.endswith("ranked") for s in t["rows"])
    assert shown == slugs  # each entry once, in its protocol's main table
    # the conditional models' own tables are there too: augmentation and per condition
    assert any("-aug-" in tid for tid in tables) and any(tid.endswith("per-condition") for tid in tables)
