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

from cxrbench import cli
from cxrbench.errors import CxrbenchError, DataError
from cxrbench.engine.evaluate import evaluate

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
