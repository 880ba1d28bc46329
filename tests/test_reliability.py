"""Hostile inputs through the CLI, resumption after an interruption, a shared cache, untrusted pickles and
bit-identical reruns. (Decoder and CSV fuzzing: test_fuzz.py; real kill -9 subprocesses: test_interrupt.py.)"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxrbench import cli
from cxrbench.engine.evaluate import evaluate
from cxrbench.errors import CxrbenchError, DataError

from .conftest import write_pngs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    from cxrbench.data.synthetic import synthetic_cxr

    return (write_pngs(tmp_path / "gen", synthetic_cxr(12, 16, 0.5, seed=1)),
            write_pngs(tmp_path / "ref", synthetic_cxr(16, 16, 0.0, seed=2)))


def _cli(samples, reference, tmp_path, capsys, *extra):
    rc = cli.main(["evaluate", "--samples", str(samples), "--reference", str(reference), "--weights", "random",
                   "--extractors", "random-conv", "--metrics", "fid", "--n-bootstrap", "5", "--num-workers", "0",
                   "--cache-dir", str(tmp_path / "cache"), "--quiet", "--json", *extra])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def _png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def _loop(folder: Path) -> str:
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    return "loop_a.png"


HOSTILE = {
    # name: (what to do to the samples folder -> the file the one-line message must name, words in it)
    "huge-header": (lambda d: (d / "huge.png").write_bytes(_png_header_only(20000, 20000)) and "huge.png",
                    "too large"),
    "symlink-loop": (_loop, "symbolic links"),
    "labels-escape": (lambda d: (d / "labels.csv").write_text("path,Atelectasis\n../ref/img_0000.png,1\n")
                      and "labels.csv", "leaves its folder"),
    "manifest-source-escape": (lambda d: (d / "manifest.csv").write_text("path,source\nimg_0000.png,/etc/passwd\n")
                               and "manifest.csv", "leaves its folder"),
    "labels-uncertain": (lambda d: (d / "labels.csv").write_text("path,Effusion\nimg_0000.png,-1\n")
                         and "labels.csv", "-1"),
    # a typo would silently drop the label from every label metric
    "manifest-label-typo": (lambda d: (d / "manifest.csv").write_text("path,Efusion,seed\nimg_0000.png,1,7\n")
                            and "manifest.csv", "'Efusion': not a label name; did you mean 'Effusion'?"),
    "manifest-unknown-label": (lambda d: (d / "manifest.csv").write_text("path,Lung Opacity\nimg_0000.png,1\n")
                               and "manifest.csv", "Pleural_Thickening, Hernia, No Finding"),
    "manifest-label-list-typo": (lambda d: (d / "manifest.csv").write_text("path,labels\nimg_0000.png,Edema|Efusion\n")
                                 and "manifest.csv", "'labels' holds 'Efusion'"),
    "tiny-image": (lambda d: Image.new("L", (1, 1), 128).save(d / "tiny.png") or "tiny.png", "1x1 pixels, below"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_inputs_are_refused_in_one_line_naming_the_file(case, tiny, tmp_path, capsys):
    gen, ref = tiny
    make, words = HOSTILE[case]
    name = make(gen)
    rc, _, err = _cli(gen, ref, tmp_path, capsys)
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and words in lines[0], err


def test_manifest_metadata_columns_pass_and_tiny_images_are_skippable(tiny, tmp_path, capsys):
    gen, ref = tiny
    names = sorted(p.name for p in gen.glob("*.png"))
    rows = "".join(f"{n},{i % 2},{i},a prompt,{1.5 + i}\n" for i, n in enumerate(names))
    (gen / "manifest.csv").write_text("path,Effusion,seed,prompt,guidance\n" + rows)  # guidance: not 0/1
    rc, res, err = _cli(gen, ref, tmp_path, capsys)
    assert rc == 0, err
    Image.new("L", (8, 40), 128).save(gen / "thin.png")
    rc, res, err = _cli(gen, ref, tmp_path, capsys, "--skip-bad")
    assert rc == 0 and res["samples"]["skipped_files"] == ["thin.png"] and res["samples"]["n_used"] == len(names)


def test_dicom_files_without_an_extension_are_evaluated(tiny, tmp_path, capsys):
    """PACS exports name files by UID, with no extension (or the UID's last digits as one): such a DICOM is
    one of the images, not an ignored file."""
    from .data.test_io import _dicom

    gen, ref = tiny
    rc, before, _ = _cli(gen, ref, tmp_path, capsys)
    px = (np.asarray(Image.open(gen / "img_0000.png"), dtype=np.float64) * 16).astype(np.uint16)
    _dicom(gen / "IM0001", px)
    _dicom(gen / "1.2.840.113619.2.55", px[::-1])
    (gen / "notes.txt").write_text("not an image")
    rc, res, err = _cli(gen, ref, tmp_path, capsys)
    assert rc == 0, err
    assert res["samples"]["n_used"] == before["samples"]["n_used"] + 2
    assert res["samples"]["ignored_files"] == ["notes.txt"]
    assert res["metrics"] != before["metrics"]


def test_looking_for_dicom_by_content_never_opens_a_named_pipe(tmp_path):
    """Opening a FIFO to read its first bytes would block the scan for ever; it is listed as ignored."""
    from cxrbench.data.imageset import scan_folder

    Image.new("L", (16, 16)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe")
    out = []
    t = threading.Thread(target=lambda: out.append(scan_folder(tmp_path)), daemon=True)
    t.start()
    t.join(30)  # a guard against hanging the suite, not a timing: the scan takes milliseconds
    assert out == [(["a.png"], ["pipe"])]


def test_unreadable_files_are_skippable_and_listed(tiny, tmp_path, capsys):
    gen, ref = tiny
    loop = _loop(gen)
    (gen / "huge.png").write_bytes(_png_header_only(20000, 20000))
    rc, _, err = _cli(gen, ref, tmp_path, capsys)
    assert rc == 1 and "3 unreadable image(s)" in err and loop in err and "huge.png" in err
    rc, res, _ = _cli(gen, ref, tmp_path, capsys, "--skip-bad")
    assert rc == 0 and sorted(res["samples"]["skipped_files"]) == ["huge.png", "loop_a.png", "loop_b.png"]
    # skipping them gives exactly the numbers of the folder without them
    os.unlink(gen / "loop_a.png"), os.unlink(gen / "loop_b.png"), os.unlink(gen / "huge.png")
    rc, clean, _ = _cli(gen, ref, tmp_path, capsys)
    assert clean["metrics"] == res["metrics"]


def test_duplicates_are_recorded_warned_and_counted(tiny, tmp_path, capsys):
    gen, ref = tiny
    rc, before, _ = _cli(gen, ref, tmp_path, capsys)
    shutil.copy(gen / "img_0003.png", gen / "copy.png")
    rc, res, _ = _cli(gen, ref, tmp_path, capsys)
    assert rc == 0 and res["samples"]["duplicates"] == [sorted(["copy.png", "img_0003.png"])]
    assert any("byte-identical" in w and "copy.png" in w for w in res["warnings"])
    assert res["samples"]["n_used"] == before["samples"]["n_used"] + 1  # counted, not silently dropped
    assert before["samples"]["duplicates"] == [] and not any("byte-identical" in w for w in before["warnings"])


def test_labels_rows_that_match_no_image_are_reported(tiny, tmp_path, capsys):
    gen, ref = tiny
    (gen / "labels.csv").write_text("path,Effusion\nimg_0000.png,1\nimg_0001.png,0\nmissing.png,1\n")
    rc, res, _ = _cli(gen, ref, tmp_path, capsys)
    assert rc == 0
    assert any("missing.png" in w for w in res["warnings"])
    assert any("10 of 12 image(s) have no row" in w for w in res["warnings"])


def test_failures_cached_by_an_earlier_run_are_still_listed_with_their_reason(tiny, fast_config):
    # chunk size 1: every image is its own cache entry, so a later run reuses the entry holding the failure
    gen, ref = tiny
    cfg = dataclasses.replace(fast_config, chunk_size=1, skip_bad=True)
    (gen / "empty.png").write_bytes(b"")
    first = evaluate(gen, ref, config=cfg)
    assert first["samples"]["skipped_files"] == ["empty.png"]
    (gen / "truncated.png").write_bytes((gen / "img_0000.png").read_bytes()[:60])
    second = evaluate(gen, ref, config=cfg)  # empty.png comes from the cache, truncated.png is new
    assert second["cache"]["hits"] > 0
    assert sorted(second["samples"]["skipped_files"]) == ["empty.png", "truncated.png"]
    with pytest.raises(DataError) as e:  # both reasons, though both failures now come from the cache
        evaluate(gen, ref, config=dataclasses.replace(cfg, skip_bad=False))
    assert "empty.png: empty file" in str(e.value) and "truncated.png: truncated" in str(e.value)
    (gen / "empty.png").unlink(), (gen / "truncated.png").unlink()
    clean = evaluate(gen, ref, config=dataclasses.replace(cfg, use_cache=False))
    assert clean["metrics"] == second["metrics"]


def test_interrupted_evaluation_resumes_from_cached_chunks(tiny, fast_config, monkeypatch):
    from cxrbench.features.cache import FeatureCache

    gen, ref = tiny
    cfg = dataclasses.replace(fast_config, chunk_size=3, batch_size=2)
    put = FeatureCache.put
    written = []

    def put_then_die(self, key, feats):
        put(self, key, feats)
        written.append(key)
        if len(written) == 3:
            raise KeyboardInterrupt  # as Ctrl-C between chunks

    monkeypatch.setattr(FeatureCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        evaluate(gen, ref, config=cfg)
    monkeypatch.setattr(FeatureCache, "put", put)
    resumed = evaluate(gen, ref, config=cfg)
    assert resumed["cache"]["hits"] == 3 and resumed["cache"]["misses"] == 4 + 6 - 3
    straight = evaluate(gen, ref, config=dataclasses.replace(cfg, use_cache=False))
    assert json.dumps(straight["metrics"], sort_keys=True) == json.dumps(resumed["metrics"], sort_keys=True)


def test_cache_entries_are_never_seen_half_written(tmp_path):
    from cxrbench.features.cache import FeatureCache

    feats = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    stop, seen, errors = threading.Event(), [], []

    def writer():
        c = FeatureCache(tmp_path)
        while not stop.is_set():
            c.put("ab" * 32, feats)

    def reader():
        c = FeatureCache(tmp_path)
        for _ in range(300):
            got = c.get("ab" * 32)
            if got is not None:
                seen.append(bool(np.array_equal(got, feats)))
        errors.extend(c.corrupt)

    FeatureCache(tmp_path).put("ab" * 32, feats)  # readers race with rewrites of an existing entry
    threads = [threading.Thread(target=writer) for _ in range(2)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    threads[-1].join()
    stop.set()
    for t in threads[:-1]:
        t.join()
    assert errors == [] and seen and all(seen)
    assert [p.name for p in (tmp_path / "features" / "ab").iterdir()] == ["ab" * 32 + ".npz"]  # no temp left


def _disk_full(monkeypatch):
    """Every file written from here on fails as on a full disk (at fsync, after part of it was written)."""
    import errno

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("how", ["cache-dir-is-a-file", "disk-full"])
def test_a_cache_that_cannot_be_written_warns_once_and_the_run_goes_on(how, tiny, tmp_path, capsys, monkeypatch):
    gen, ref = tiny
    rc, clean, _ = _cli(gen, ref, tmp_path, capsys, "--no-cache")
    if how == "cache-dir-is-a-file":
        (tmp_path / "cache").write_text("not a folder")
    else:
        _disk_full(monkeypatch)
    rc, res, err = _cli(gen, ref, tmp_path, capsys)
    assert rc == 0 and "Traceback" not in err, err
    warned = [line for line in err.splitlines() if "feature cache" in line]
    assert len(warned) == 1 and "cannot be written" in warned[0] and str(tmp_path / "cache") in warned[0], err
    assert "cannot be written" in res["cache"]["write_error"]
    assert res["metrics"] == clean["metrics"]  # the features in memory were complete
    if how == "disk-full":
        assert not list((tmp_path / "cache").rglob("*.tmp"))  # no half-written entry left behind


@pytest.mark.parametrize("how", ["folder-is-a-file", "disk-full"])
def test_an_out_file_that_cannot_be_written_is_one_line_and_leaves_nothing(how, tiny, tmp_path, capsys,
                                                                             monkeypatch):
    gen, ref = tiny
    if how == "folder-is-a-file":
        (tmp_path / "results").write_text("not a folder")
    else:
        (tmp_path / "results").mkdir()
        _disk_full(monkeypatch)
    out = tmp_path / "results" / "r.json"
    rc, _, err = _cli(gen, ref, tmp_path, capsys, "--no-cache", "--out", str(out))
    lines = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err and len(lines) == 1, err
    assert str(out) in lines[0] and "cannot be written" in lines[0]
    if how == "disk-full":
        assert list((tmp_path / "results").iterdir()) == []  # neither the result nor its temporary file
    else:
        assert not (tmp_path / "cache").exists()  # refused before any image was read


def test_a_report_folder_that_cannot_be_made_is_refused_before_the_work(tiny, tmp_path, capsys):
    gen, ref = tiny
    (tmp_path / "taken").write_text("a file where the report folder should go")
    rc, _, err = _cli(gen, ref, tmp_path, capsys, "--report", str(tmp_path / "taken" / "rep"))
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and str(tmp_path / "taken") in lines[0], err
    assert not (tmp_path / "cache").exists()
    rc, _, _ = _cli(gen, ref, tmp_path, capsys, "--out", str(tmp_path / "r.json"))
    assert cli.main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "taken") in err[0] and "not a folder" in err[0], err


def test_an_os_error_anywhere_in_a_command_is_one_line_naming_the_file(monkeypatch, capsys):
    """Outputs not written through fileio (checkpoints, sample PNGs) still end in one line on a full disk."""
    import errno

    from cxrbench.commands import ls

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/model.pt")

    monkeypatch.setattr(ls, "run", full)
    assert cli.main(["ls"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cxrbench ls: error: /data/run/model.pt: No space left on device"]


def test_a_report_that_cannot_be_written_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    gen, ref = tiny
    rc, _, _ = _cli(gen, ref, tmp_path, capsys, "--out", str(tmp_path / "r.json"))
    _disk_full(monkeypatch)
    rc = cli.main(["report", str(tmp_path / "r.json"), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and str(tmp_path / "rep") in err[0] and "cannot be written" in err[0], err
    assert not [p for p in (tmp_path / "rep").iterdir() if p.suffix in (".tmp", ".md", ".html")]


def test_same_inputs_give_bit_identical_metrics_and_the_result_says_how(tiny, fast_config):
    gen, ref = tiny
    cfg = dataclasses.replace(fast_config, use_cache=False, n_bootstrap=10, seed=7, weights_seed=3)
    a, b = evaluate(gen, ref, config=cfg), evaluate(gen, ref, config=cfg)
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)
    assert a["seeds"] == {"seed": 7, "weights_seed": 3}
    assert {"torch", "numpy", "cxrbench", "python"} <= set(a["versions"])
    assert a["extractors"]["random-conv"]["weights"] == "random:3"
    assert a["config"]["chunk_size"] == cfg.chunk_size and a["config"]["n_bootstrap"] == 10
    c = evaluate(gen, ref, config=dataclasses.replace(cfg, weights_seed=4))
    assert c["metrics"] != a["metrics"]  # the recorded seed is one that matters


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the file appearing means the pickle executed code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payloads_are_refused_and_never_run(tmp_path, capsys):
    from baselines.vae import VAE, VAEConfig

    model_dir = VAE(VAEConfig(image_size=16, channels=(8, 16), z_dim=4)).save_pretrained(tmp_path / "m")
    VAE.from_pretrained(model_dir)  # the clean folder loads
    marker = tmp_path / "payload-ran"
    torch.save({"weight": _Payload(marker)}, model_dir / "model.pt")
    with pytest.raises(CxrbenchError, match="model.pt: cannot be loaded as plain weights"):
        VAE.from_pretrained(model_dir)
    assert cli.main(["sample", str(model_dir), "--n", "2", "--out", str(tmp_path / "s")]) == 1
    assert "model.pt: cannot be loaded as plain weights" in capsys.readouterr().err
    torch.save({"format": _Payload(marker)}, model_dir / "checkpoint.pt")
    with pytest.raises(CxrbenchError, match="checkpoint.pt: unreadable checkpoint"):
        from cxrbench.training import TrainOptions

        from .generator_contract import LabelledImages

        VAE.train(LabelledImages(4, 16, seed=0), VAEConfig(image_size=16, channels=(8, 16), z_dim=4, batch_size=2),
                  model_dir, options=TrainOptions(steps=1, progress=False))
    assert not marker.exists()


def test_every_torch_load_and_np_load_refuses_pickles():
    # a guard on the source: each call must pass weights_only=True / allow_pickle=False explicitly
    offenders = []
    for path in [*REPO.glob("cxrbench/**/*.py"), *REPO.glob("baselines/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = getattr(node.func.value, "id", None)
                kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                if (base == "torch" and kw.get("weights_only") is not True) or \
                        (base == "np" and kw.get("allow_pickle") is not False):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_a_named_pipe_in_the_folder_is_listed_as_unreadable_not_read(tmp_path):
    """Reading a FIFO blocks forever; the folder scan names it instead (it hung `evaluate` before)."""
    import os
    import threading

    from cxrbench.data.imageset import open_folder
    from cxrbench.data.synthetic import synthetic_cxr

    from .conftest import write_pngs

    write_pngs(tmp_path, synthetic_cxr(3, 16, 0.0, seed=0))
    os.mkfifo(tmp_path / "pipe.png")
    found = {}
    t = threading.Thread(target=lambda: found.update(src=open_folder(tmp_path, role="samples", index=False)),
                         daemon=True)
    t.start()
    t.join(30)
    assert "src" in found, "opening a folder with a named pipe blocked"
    src = found["src"]
    assert len(src) == 3 and [rel for rel, _ in src.unreadable] == ["pipe.png"]
    assert "not a regular file" in src.unreadable[0][1]
