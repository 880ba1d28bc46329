import base64
import copy
import io
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cxrbench.cli import main
from cxrbench.engine.evaluate import evaluate
from cxrbench.publish.report import RENDERERS, figure_specs, write_report
from cxrbench.results import load

from ..conftest import write_pngs

IMG = re.compile(r"<img\b[^>]*\bsrc=\"([^\"]*)\"")
ROW = re.compile(r'<tr data-metric="([^"]+)">(.*?)</tr>', re.DOTALL)
CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.DOTALL)


def _decoded_pngs(html: str) -> list[tuple[int, int]]:
    """Size of every <img>, which must be a base64 PNG data URI that decodes."""
    sizes = []
    for src in IMG.findall(html):
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data
        im = Image.open(io.BytesIO(data))
        assert im.format == "PNG"
        im.load()
        sizes.append(im.size)
    return sizes


def _table(html: str) -> dict[str, list[str]]:
    return {k: CELL.findall(row) for k, row in ROW.findall(html)}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One random-conv evaluation shared by the tests (as conftest's synthetic_folders + fast_config)."""
    from cxrbench.config import EvalConfig
    from cxrbench.data.synthetic import synthetic_cxr

    root = tmp_path_factory.mktemp("report")
    folders = {"real_a": write_pngs(root / "real_a", synthetic_cxr(40, 32, 0.0, seed=1)),
               "real_b": write_pngs(root / "real_b", synthetic_cxr(40, 32, 0.0, seed=2)),
               "shifted": write_pngs(root / "shifted", synthetic_cxr(40, 32, 1.0, seed=3))}
    config = EvalConfig(extractors=("random-conv",), metrics=("fid",), weights="random", n_bootstrap=20,
                        cache_dir=str(root / "cache"), progress=False, num_workers=0)
    path = evaluate(folders["shifted"], folders["real_a"], config=config).save(root / "result.json")
    return path, folders


@pytest.fixture
def result(evaluated, tmp_path):
    """The shared result, re-pointed at this test's own copy of the folders (tests delete them)."""
    path, folders = evaluated
    r = load(path)
    for name, src in folders.items():
        shutil.copytree(src, tmp_path / name)
    r["samples"]["path"], r["reference"]["path"] = str(tmp_path / "shifted"), str(tmp_path / "real_a")
    return r


@pytest.fixture
def copies(result, tmp_path):
    return {name: tmp_path / name for name in ("real_a", "real_b", "shifted")}


@pytest.fixture(scope="module")
def evaluated_all(evaluated, tmp_path_factory):
    """Every metric that draws a figure, computed by the engine: cxr64 (random weights), its label head and the
    pixel statistics; the shifted set as conditional samples (every other one requests Effusion), real_b as the
    generator's training set."""
    from cxrbench.config import EvalConfig

    _, folders = evaluated
    root = tmp_path_factory.mktemp("report_all")
    cond = shutil.copytree(folders["shifted"], root / "cond")
    names = sorted(p.name for p in cond.glob("*.png"))
    pd.DataFrame({"path": names, "Effusion": [i % 2 for i in range(len(names))]}).to_csv(cond / "manifest.csv",
                                                                                          index=False)
    config = EvalConfig(extractors=("cxr64", "cxr64-classifier", "pixels"), weights="random", n_bootstrap=20,
                        metrics=("fid", "fd_inf", "labels", "label_adherence", "ks_pixels", "memorization"),
                        cache_dir=str(root / "cache"), progress=False, num_workers=0)
    r = evaluate(cond, folders["real_a"], config=config, train_reference=folders["real_b"])
    return r.save(root / "result.json"), {**folders, "cond": cond}


@pytest.fixture
def result_all(evaluated_all, tmp_path):
    """``evaluated_all``'s result, re-pointed at this test's own copies of its folders."""
    path, folders = evaluated_all
    r = load(path)
    for name in ("cond", "real_a", "real_b"):
        shutil.copytree(folders[name], tmp_path / name)
    r["samples"]["path"], r["reference"]["path"] = str(tmp_path / "cond"), str(tmp_path / "real_a")
    r["train_reference"]["path"] = str(tmp_path / "real_b")
    return r


def test_report_lists_every_metric_and_embeds_decodable_pngs(result, tmp_path):
    paths = write_report(result, tmp_path / "rep")
    html = paths["html"].read_text()
    sizes = _decoded_pngs(html)
    assert len(sizes) == 2 and all(w > 0 and h > 0 for w, h in sizes)  # the two image grids
    table = _table(html)
    assert set(table) == set(result["metrics"])
    for key, m in result["metrics"].items():
        cells = table[key]
        assert cells[0] == key
        assert float(cells[2]) == pytest.approx(m["value"], rel=1e-3)
        # the floor at its sizes, beside the samples' value at the same sizes (matched N)
        floor = re.fullmatch(r"(\S+) @(\d+)/(\d+) \(samples (\S+)\)", cells[4])
        assert float(floor[1]) == pytest.approx(m["real_vs_real"], rel=1e-3)
        assert [int(floor[2]), int(floor[3])] == m["real_vs_real_n"]
        assert float(floor[4]) == pytest.approx(m["value_at_real_vs_real_n"], rel=1e-3)
        if not m["valid"]:
            assert cells[3] == "not valid" and m["reason"] in html
            continue
        lo, hi = (float(x) for x in cells[3].strip("[]").split(","))
        assert (lo, hi) == pytest.approx(tuple(m["ci"]), rel=1e-3)
        assert ("\u2193" in cells[1]) == (not m["higher_is_better"])
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_markdown_references_files_that_exist(result, tmp_path):
    paths = write_report(result, tmp_path / "rep")
    md = paths["md"].read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 2
    for ref in refs:
        png = paths["md"].parent / ref
        assert png.is_file() and Image.open(png).format == "PNG"
    for key in result["metrics"]:
        assert f"| {key} |" in md


def test_report_renders_when_image_folders_are_gone(result, copies, tmp_path):
    shutil.rmtree(copies["shifted"])
    shutil.rmtree(copies["real_a"])
    paths = write_report(result, tmp_path / "rep")
    html = paths["html"].read_text()
    assert _decoded_pngs(html) == []
    assert html.count("image grid omitted") == 2
    assert set(_table(html)) == set(result["metrics"])
    assert "image grid omitted" in paths["md"].read_text()
    assert not list(paths["md"].parent.glob("*.png"))


def test_extras_get_their_figures(result_all, tmp_path):
    r = result_all
    html = write_report(r, tmp_path / "rep")["html"].read_text()
    ids = re.findall(r'<figure id="([^"]+)"', html)
    assert sorted(ids) == sorted(["grid_samples", "grid_reference", "fd_fd_inf_cxr64", "prevalence_label_mae",
                                  "ks_ks_pixels", "pairs_memorization_cxr64", "per_label_label_adherence_auroc"])
    assert len(_decoded_pngs(html)) == len(ids)
    assert set(_table(html)) == set(r["metrics"])
    pairs = r["metrics"]["memorization_cxr64"]["closest_pairs"]
    assert all(p["sample"] in html and p["train"] in html for p in pairs[:6])  # the pairs' table
    # without the training folder the pairs figure becomes a note; the rest still renders
    shutil.rmtree(tmp_path / "real_b")
    html = write_report(r, tmp_path / "rep2")["html"].read_text()
    assert "pairs_memorization" not in html and "nearest-pair images omitted" in html
    assert len(_decoded_pngs(html)) == len(ids) - 1


def test_figures_come_from_the_registered_metric_that_made_the_key(result_all, tmp_path):
    r = copy.deepcopy(result_all)
    specs = {s.name: s for s in figure_specs(r)}
    assert specs["ks_ks_pixels"].data is r["metrics"]["ks_pixels"]
    # a metric this installation does not have (a plug-in elsewhere) gets no figure and no error, whatever its
    # keys look like; so do keys no metric of the result declares
    r["metric_versions"] = {**{k: v for k, v in r["metric_versions"].items() if k != "ks_pixels"},
                            "not_installed": "1"}
    r["metrics"]["ks_lookalike"] = copy.deepcopy(r["metrics"]["ks_pixels"])
    assert {s.name for s in figure_specs(r)} == set(specs) - {"ks_ks_pixels"}
    html = write_report(r, tmp_path / "rep")["html"].read_text()
    assert "ks_ks_pixels" not in html and "ks_ks_lookalike" not in html
    # a battery too wide to store per-dimension D: the KS metric's hook gives a note instead
    r = copy.deepcopy(result_all)
    del r["metrics"]["ks_pixels"]["dims"]
    html = write_report(r, tmp_path / "rep2")["html"].read_text()
    assert "ks_ks_pixels" not in html and "ks_pixels: per-dimension D not stored" in html


def test_a_figure_kind_the_report_does_not_draw_is_a_note(result_all, tmp_path, monkeypatch):
    from cxrbench.metrics.base import FigureSpec
    from cxrbench.metrics.fid import FID

    monkeypatch.setattr(FID, "figures", lambda self, key, value: [FigureSpec("violin", key, f"violin_{key}", "v")])
    html = write_report(result_all, tmp_path / "rep")["html"].read_text()
    assert "violin_fid_cxr64" not in html and "fid_cxr64: figure &#x27;v&#x27; not drawn" in html
    assert set(RENDERERS) >= {"ks_histogram", "fd_against_1_over_n", "prevalence", "per_label", "nearest_pairs"}


def test_cli_report_and_evaluate_report(evaluated, synthetic_folders, fast_config, tmp_path, capsys):
    rj, _ = evaluated
    result = load(rj)
    assert main(["report", str(rj), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "b")]) != 0
    assert "no such result file" in capsys.readouterr().err
    f = synthetic_folders
    assert main(["evaluate", "--samples", str(f["shifted"]), "--reference", str(f["real_a"]), "--extractors",
                 "random-conv", "--metrics", "fid", "--weights", "random", "--n-bootstrap", "5", "--quiet",
                 "--num-workers", "0", "--cache-dir", fast_config.cache_dir, "--report", str(tmp_path / "c")]) == 0
    html = (tmp_path / "c" / "report.html").read_text()
    assert set(_table(html)) == set(result["metrics"]) and len(_decoded_pngs(html)) == 2


def test_text_from_a_crafted_result_is_escaped_in_markdown_as_in_html(result, tmp_path):
    """report.md is rendered as HTML by GitHub and most viewers: text from a result must not become markup."""
    import json

    xss = ['<script>alert(1)</script>', '<img src=x onerror="alert(2)">', "[click](javascript:alert(3))"]
    r = copy.deepcopy(result)
    key = next(iter(r["metrics"]))
    r["metrics"][xss[0]] = dict(r["metrics"].pop(key), reason=xss[1])
    r["warnings"] = [xss[2], "a | b"]
    r["not_comparable_because"] = [xss[1]]
    r["comparable"] = False
    r["skipped_metrics"] = {xss[0]: xss[1]}
    r["device"] = xss[1]
    (tmp_path / "crafted.json").write_text(json.dumps(r))
    assert main(["report", str(tmp_path / "crafted.json"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for doc in (md, html):
        assert "<script>alert" not in doc and "<img src=x" not in doc, doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "&lt;img src=x onerror" in md
    assert not re.search(r"(?<!\\)\]\(javascript:", md) and "\\[click\\](javascript:alert(3))" in md
    assert "a \\| b" in md  # a pipe in text does not split a table cell


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_report_opens_in_headless_chromium(result_all, tmp_path):
    r = result_all
    html = write_report(r, tmp_path / "rep")["html"]
    n_img = len(IMG.findall(html.read_text()))

    def chromium(*args):
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"]
        return subprocess.run([str(CHROMIUM), *flags, *args, html.as_uri()], capture_output=True, text=True,
                              timeout=120)

    shot = tmp_path / "screenshot.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,2400")
    assert shot.is_file() and Image.open(shot).size == (1100, 2400)
    dom = chromium("--dump-dom", "--virtual-time-budget=5000").stdout
    assert f'data-images-loaded="{n_img}/{n_img}"' in dom
