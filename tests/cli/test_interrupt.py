"""Kill -9 and resume, and two evaluations sharing one cache, as real processes (``python -m cxrbench``).

Marked slow: each test starts three Python processes (tens of seconds on a busy 2-core machine). The same
properties are checked in-process, fast, in test_reliability.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ..conftest import write_pngs

REPO = Path(__file__).resolve().parents[2]
FAST = ["--weights", "random", "--extractors", "random-conv", "--metrics", "fid", "--n-bootstrap", "10",
        "--num-workers", "0", "--quiet", "--json"]


def _cmd(samples, reference, cache, *extra):
    return [sys.executable, "-m", "cxrbench", "evaluate", "--samples", str(samples), "--reference", str(reference),
            "--cache-dir", str(cache), *FAST, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "features").glob("*/*.npz")) if (cache / "features").is_dir() else []


@pytest.fixture
def folders(tmp_path):
    from cxrbench.data.synthetic import synthetic_cxr

    # tiny images so that a chunk takes a fraction of a second
    return (write_pngs(tmp_path / "gen", synthetic_cxr(240, 16, 0.5, seed=1)),
            write_pngs(tmp_path / "ref", synthetic_cxr(60, 16, 0.0, seed=2)))


@pytest.mark.slow
def test_kill_9_mid_evaluation_then_resume_reuses_chunks_and_equals_uninterrupted(folders, tmp_path):
    gen, ref = folders
    cache = tmp_path / "cache"
    out = tmp_path / "result.json"
    # throttle: batch 4, chunk 8, so the run is still going after the first chunks are cached
    cmd = _cmd(gen, ref, cache, "--chunk-size", "8", "--batch-size", "4", "--out", str(out))
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 120
    while len(_entries(cache)) < 4 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(_entries(cache))
    assert p.returncode == -signal.SIGKILL and killed_at >= 4, "the run finished before it could be killed"
    assert killed_at < 240 // 8 + 60 // 8 + 1, "every chunk was already cached: nothing was interrupted"
    assert not out.exists()  # the result is written once, atomically, at the end

    resumed = _run(cmd)
    assert resumed["cache"]["hits"] >= killed_at  # finished chunks were read back, not recomputed
    assert resumed["cache"]["corrupt_entries_recomputed"] == 0
    assert json.loads(out.read_text())["metrics"] == resumed["metrics"]

    straight = _run(_cmd(gen, ref, tmp_path / "fresh", "--chunk-size", "8", "--batch-size", "4"))
    assert straight["cache"]["hits"] == 0
    assert json.dumps(straight["metrics"], sort_keys=True) == json.dumps(resumed["metrics"], sort_keys=True)


@pytest.mark.slow
def test_two_evaluations_sharing_one_cache_at_once(folders, tmp_path):
    from cxrbench.features.cache import FeatureCache

    gen, ref = folders
    cache = tmp_path / "shared-cache"
    cmd = _cmd(gen, ref, cache, "--chunk-size", "16")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1000:] for _, e in outs]
    a, b = (json.loads(o) for o, _ in outs)
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)

    entries = _entries(cache)
    assert len(entries) == 240 // 16 + 60 // 16 + 1  # one entry per chunk, none doubled or half-written
    check = FeatureCache(cache)
    for e in entries:
        feats = check.get(e.stem)
        assert feats is not None and np.isfinite(feats).all()
    assert check.corrupt == []
    # a third run reads everything from the shared cache and agrees
    c = _run(cmd)
    assert c["cache"]["misses"] == 0 and c["metrics"] == a["metrics"]


@pytest.mark.slow
def test_kill_9_during_training_resumes_from_checkpoint(tmp_path):
    from cxrbench.data.synthetic import synthetic_cxr

    data = write_pngs(tmp_path / "train", synthetic_cxr(16, 32, 0.0, seed=0))

    def cmd(out, steps):
        return [sys.executable, "-m", "cxrbench", "train", "vae", "--data", str(data), "--image-size", "32",
                "--out", str(out), "--steps", str(steps), "--checkpoint-every", "2", "--batch-size", "8",
                "--device", "cpu", "--quiet"]

    run = tmp_path / "run"
    p = subprocess.Popen(cmd(run, 100000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    import torch

    done = int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])
    assert done >= 2
    # the same folder with a budget just past the checkpoint: it continues from there, not from step 0
    subprocess.run(cmd(run, done + 2), check=True, capture_output=True, env=_env(), timeout=300)
    state = json.loads((run / "train_state.json").read_text())
    assert state["step"] == done + 2
    rows = (run / "losses.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[0]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == done + 2  # no step logged twice
    # and the weights equal an uninterrupted run of the same length
    subprocess.run(cmd(tmp_path / "straight", done + 2), check=True, capture_output=True, env=_env(), timeout=300)
    a = torch.load(run / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
