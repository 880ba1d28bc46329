"""torchrun sharding: 2 gloo ranks on CPU give the same features, cache entries and metrics as one process."""

import json
import os
import subprocess
import sys

import numpy as np

from .conftest import REPO, write_pngs


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    # torchrun sets OMP_NUM_THREADS=1 in its workers; the single-process run must match for bitwise-equal convs
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def _cmd(samples, reference, cache, out):
    return ["-m", "cxrbench", "evaluate", "--samples", str(samples), "--reference", str(reference),
            "--weights", "random", "--extractors", "random-conv", "--metrics", "fid,kid,prdc", "--device", "cpu",
            "--chunk-size", "8", "--batch-size", "4", "--num-workers", "0", "--n-bootstrap", "20",
            "--cache-dir", str(cache), "--out", str(out), "--quiet", "--json"]


def _cache_entries(root):
    return {p.name: np.load(p)["features"] for p in (root / "features").rglob("*.npz")}


def test_torchrun_two_ranks_match_one_process(tmp_path):
    from cxrbench.synthetic import synthetic_cxr

    samples = write_pngs(tmp_path / "samples", synthetic_cxr(36, size=32, shift=0.3, seed=1), "s")
    reference = write_pngs(tmp_path / "reference", synthetic_cxr(28, size=32, shift=0.0, seed=2), "r")
    one = subprocess.run([sys.executable, *_cmd(samples, reference, tmp_path / "c1", tmp_path / "one.json")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--monitor_interval", "0.1",
                          *_cmd(samples, reference, tmp_path / "c2", tmp_path / "two.json")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    # only rank 0 prints the result
    assert two.stdout.count('"schema"') == 1

    r1 = json.loads((tmp_path / "one.json").read_text())
    r2 = json.loads((tmp_path / "two.json").read_text())
    assert r1["config"]["world_size"] == 1 and r2["config"]["world_size"] == 2
    assert r2["timings"]["world_size"] == 2 and r2["config"]["distributed_backend"] == "gloo"
    assert set(r1["metrics"]) == set(r2["metrics"]) and len(r1["metrics"]) >= 6
    # identical features, identical (deterministic) metric code: bitwise-equal values and CIs
    assert r1["metrics"] == r2["metrics"]
    assert r2["cache"]["misses"] == r1["cache"]["misses"] > 0  # every chunk counted once across ranks

    # chunk-aligned sharding: the same content-addressed entries with the same bytes
    c1, c2 = _cache_entries(tmp_path / "c1"), _cache_entries(tmp_path / "c2")
    assert set(c1) == set(c2) and len(c1) == 5 + 4  # 36 and 28 images in chunks of 8; rank 0 gets 3 + 2
    for k in c1:
        np.testing.assert_array_equal(c1[k], c2[k])
