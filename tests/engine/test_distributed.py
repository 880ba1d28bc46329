"""torchrun sharding: 2 gloo ranks on CPU give the same features, cache entries and metrics as one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ..conftest import REPO, write_pngs


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


@pytest.mark.slow  # two full CLI evaluations end to end, one of them under torchrun with 2 ranks
def test_torchrun_two_ranks_match_one_process(tmp_path):
    from cxrbench.data.synthetic import synthetic_cxr

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


_HASH_SCRIPT = '''
import json, sys
from pathlib import Path
import cxrbench.data.imageset as imageset
from cxrbench.data.sources import open_source
from cxrbench.engine.distributed import from_env

folder, cache, out = sys.argv[1:4]
read = []
plain = imageset._hash_files
imageset._hash_files = lambda paths, **kw: read.extend(map(str, paths)) or plain(paths, **kw)
dist, _ = from_env("cpu")
runs = {}
for index in (False, True):
    src = open_source(folder, index=index, cache_dir=cache, dist=dist)
    runs[str(index)] = {"ids": src.ids, "hashes": src.hashes, "unreadable": [u for u, _ in src.unreadable]}
runs["read"] = read
Path(out, f"rank{dist.rank}.json").write_text(json.dumps(runs))
dist.close()
'''


def test_torchrun_ranks_share_the_hashing(tmp_path):
    """Each of 2 ranks reads about half the files, and both get the one-process order, hashes and index."""
    from cxrbench.data.index import index_path
    from cxrbench.data.sources import open_source
    from cxrbench.data.synthetic import synthetic_cxr

    folder = write_pngs(tmp_path / "imgs", synthetic_cxr(40, size=16, seed=3), "x")
    (folder / "broken.png").symlink_to(folder / "missing.png")  # unreadable: listed the same way by both
    script = tmp_path / "hash_ranks.py"
    script.write_text(_HASH_SCRIPT)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--monitor_interval", "0.1", str(script), str(folder), str(tmp_path / "c"), str(tmp_path)],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = open_source(folder, index=False)
    for r in ranks:
        for index in ("False", "True"):
            assert r[index]["ids"] == one.ids and r[index]["hashes"] == one.hashes
            assert r[index]["unreadable"] == [u for u, _ in one.unreadable] == ["broken.png"]
    # the unindexed open and the first indexed open each read every file once, split between the ranks (the
    # index's stat already finds the dangling link unreadable)
    reads = [sorted(r["read"]) for r in ranks]
    assert not set(reads[0]) & set(reads[1])
    files = [str(folder / i) for i in one.ids]
    assert sorted(reads[0] + reads[1]) == sorted(2 * files + [str(folder / "broken.png")])
    assert all(10 <= len(x) <= 72 for x in reads)  # crc32 of the path: roughly half each
    # rank 0 wrote the index: a one-process open now reads nothing
    assert index_path(folder, tmp_path / "c").is_file()
    from cxrbench.data import imageset

    read_now = []
    plain = imageset._hash_files
    imageset._hash_files = lambda paths, **kw: read_now.extend(paths) or plain(paths, **kw)
    try:
        again = open_source(folder, index=True, cache_dir=tmp_path / "c")
    finally:
        imageset._hash_files = plain
    assert again.hashes == one.hashes and read_now == []
