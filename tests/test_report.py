import base64
import copy
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from cxrbench.cli import main
from cxrbench.harness import evaluate
from cxrbench.report import write_report
from cxrbench.results import load

from .conftest import write_pngs

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
    from cxrbench.harness import EvalConfig
    from cxrbench.synthetic import synthetic_cxr

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


def _with_extras(result, folders):
    """The random-conv result plus entries carrying every extra the report draws (as the metrics write them)."""
    r = copy.deepcopy(result)
    base = {"ci": [0.1, 0.3], "n_gen": 40, "n_ref": 40, "higher_is_better": False}
    samples = sorted(p.name for p in folders["shifted"].glob("*.png"))
    train = sorted(p.name for p in folders["real_b"].glob("*.png"))
    r["train_reference"] = {"path": str(folders["real_b"]), "n": 40, "kind": "folder", "split": "all"}
    r["metrics"].update({
        "label_mae": {**base, "value": 0.2, "real_vs_real": 0.02, "worst": "Effusion", "threshold": 0.5,
                      "prevalence": {"Effusion": {"samples": 0.5, "reference": 0.1},
                                     "Mass": {"samples": 0.05, "reference": 0.07}}},
        "ks_pixels": {**base, "value": 0.5, "real_vs_real": 0.0, "median_d": 0.3, "max_d": 0.8, "worst": "mean",
                      "dims": {f"s{i}": {"d": 0.1 * i, "p": 0.01, "rejected": i > 3} for i in range(1, 9)}},
        "fd_inf_random-conv": {**base, "value": 1.5, "real_vs_real": 0.1, "sizes": [10, 20, 30, 40],
                               "fd": [4.0, 2.8, 2.3, 2.1], "slope": 25.0},
        "memorization_random-conv": {**base, "value": 0.05, "real_vs_real": 0.05, "threshold": 1.0,
                                     "closest_pairs": [{"sample": s, "train": t, "distance": 0.5 + i}
                                                       for i, (s, t) in enumerate(zip(samples[:3], train[:3]))]},
    })
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


def test_extras_get_their_figures(result, copies, tmp_path):
    r = _with_extras(result, copies)
    html = write_report(r, tmp_path / "rep")["html"].read_text()
    ids = re.findall(r'<figure id="([^"]+)"', html)
    assert sorted(ids) == sorted(["grid_samples", "grid_reference", "fd_fd_inf_random-conv",
                                  "prevalence_label_mae", "ks_ks_pixels", "pairs_memorization_random-conv"])
    assert len(_decoded_pngs(html)) == len(ids)
    assert set(_table(html)) == set(r["metrics"])
    # without the training folder the pairs figure becomes a note; the rest still renders
    shutil.rmtree(copies["real_b"])
    html = write_report(r, tmp_path / "rep2")["html"].read_text()
    assert "pairs_memorization" not in html and "nearest-pair images omitted" in html
    assert len(_decoded_pngs(html)) == len(ids) - 1


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


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_report_opens_in_headless_chromium(result, copies, tmp_path):
    r = _with_extras(result, copies)
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
