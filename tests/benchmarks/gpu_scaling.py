"""GPU throughput at 50k images, one command for a machine with a CUDA device (run by hand; pytest does not
collect it; needs nothing from the network: the networks are seeded random inits of the published ones).

    python tests/benchmarks/gpu_scaling.py                                  # 50k + 50k 256-px PNGs, cuda
    python tests/benchmarks/gpu_scaling.py --n 200 --size 64 --device cpu   # the CPU path, to check the script

Steps, each timed:

  write      N samples + N reference PNGs (procedural radiographs, ``--size`` px; all processes)
  hash       opening both folders (every file read and sha256'd; no index)
  decode     a decode-only loop over the same 2N files: cxrbench's decoder in DataLoader workers, batches
             stacked, nothing else (the ceiling for end-to-end images per second)
  evaluate   ``cxrbench.evaluate`` with ``--extractors inception,xrv`` (``--metrics``, default fid,kid,prdc),
             no feature cache: images per second end to end, split into the time spent waiting for decoded
             batches and the time in the networks (``timings.decode_s`` / ``forward_s``), and each metric
  device     on random features of the networks' widths (N x 2048 and N x 1024): Gaussian statistics and the
             Frechet distance, FID with its 200-replicate bootstrap, the k = 5 kNN radii of N points, and PRDC
             with its bootstrap

It prints one table (the figures the README quotes) and writes ``gpu_scaling.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scaling import write_set  # noqa: E402  (the same procedural PNGs as the CPU scaling curve)


def _log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def write_parallel(folder: Path, n: int, shift: float, seed: int, size: int, procs: int) -> None:
    """``n`` PNGs written by ``procs`` processes, each a contiguous range (the same files one process writes)."""
    step = -(-n // procs)
    jobs = [(folder, min(step, n - s), shift, seed, size, s, 256) for s in range(0, n, step)]
    with Pool(len(jobs)) as pool:
        pool.starmap(write_set, jobs)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device="cpu"):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def decode_only(folders, batch_size: int, workers: int) -> tuple[float, int]:
    """Seconds and images for decoding every file of ``folders`` with cxrbench's decoder, batches stacked."""
    import torch

    from cxrbench.data.sources import open_source
    from cxrbench.engine.extraction import _collate, _Decode

    srcs = [open_source(f, index=False) for f in folders]
    n = 0
    t = time.perf_counter()
    for src in srcs:
        loader = torch.utils.data.DataLoader(_Decode(src), batch_size=batch_size, num_workers=workers,
                                             collate_fn=_collate)
        for batch in loader:
            x = torch.stack([img for _, img, err in batch if err is None])
            n += len(x)
    return time.perf_counter() - t, n


def device_timings(n: int, device: str, n_bootstrap: int) -> dict[str, float]:
    """FD and kNN timings on ``device`` for random N x D features (D = 2048 Inception, 1024 XRV)."""
    import torch

    from cxrbench.metrics import functional as F
    from cxrbench.metrics import knn
    from cxrbench.metrics.fid import frechet_distance, gaussian_stats

    rng = np.random.default_rng(0)
    out = {}
    for d in (2048, 1024):
        g = rng.standard_normal((n, d), dtype=np.float32)
        r = (rng.standard_normal((n, d), dtype=np.float32) * 1.05 + 0.02).astype(np.float32)
        dev64 = "cpu" if device == "mps" else device

        def fd():
            mu1, s1 = gaussian_stats(g, device=dev64)
            mu2, s2 = gaussian_stats(r, device=dev64)
            return frechet_distance(mu1, s1, mu2, s2)

        out[f"fd_stats_and_distance_{d}d_s"], _ = timed(fd, device)
        out[f"fid_with_{n_bootstrap}_bootstrap_{d}d_s"], _ = timed(
            lambda: F.fid(real=r, fake=g, n_bootstrap=n_bootstrap, device=dev64), device)
        out[f"knn_radii_k5_{d}d_s"], _ = timed(lambda: knn.kth_radii(g, 5, device=device), device)
        out[f"prdc_with_{n_bootstrap}_bootstrap_{d}d_s"], _ = timed(
            lambda: F.prdc(real=r, fake=g, n_bootstrap=n_bootstrap, device=device), device)
        del g, r
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000, help="images per set (samples and reference)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    ap.add_argument("--metrics", default="fid,kid,prdc")
    ap.add_argument("--n-bootstrap", type=int, default=200)
    ap.add_argument("--data", default=None, help="folder for the PNGs (kept and reused; default: temporary)")
    ap.add_argument("--out", default="gpu_scaling_out")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (EvalConfig.compile)")
    a = ap.parse_args()

    import cxrbench
    from cxrbench.config import EvalConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    rows: list[tuple[str, float, int | None]] = []  # (step, seconds, images)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp)
        gen, ref = data / f"gen_{a.n}_{a.size}", data / f"ref_{a.n}_{a.size}"
        t = time.perf_counter()
        for folder, shift, seed in ((gen, 0.3, 1), (ref, 0.0, 2)):
            if not (folder.is_dir() and len(os.listdir(folder)) == a.n):
                write_parallel(folder, a.n, shift, seed, a.size, os.cpu_count() or 1)
        rows.append(("write PNGs (not in the run)", time.perf_counter() - t, 2 * a.n))
        _log("PNGs ready; decode-only loop ...")

        s, n_dec = decode_only([gen, ref], a.batch_size, a.workers)  # also warms the page cache for the run
        rows.append((f"decode-only loop ({a.workers} workers)", s, n_dec))
        _log("evaluate ...")
        cfg = EvalConfig(extractors=("inception", "xrv"), metrics=tuple(a.metrics.split(",")), weights="random",
                         device=a.device, use_cache=False, progress=False, batch_size=a.batch_size,
                         num_workers=a.workers, n_bootstrap=a.n_bootstrap, compile=a.compile)
        wall, res = timed(lambda: cxrbench.evaluate(str(gen), str(ref), config=cfg), a.device)
        tm = res["timings"]
        rows += [
            ("evaluate: end to end", wall, 2 * a.n),
            ("  hash (2 folders)", tm["hash_s"], 2 * a.n),
            ("  extract (inception + xrv)", tm["extract_s"], 2 * a.n),
            ("    waiting for decoded batches", tm.get("decode_s", float("nan")), None),
            ("    preprocessing + networks + copies", tm.get("forward_s", float("nan")), None),
            ("      preprocessing (resize, quantise)", tm.get("preprocess_s", float("nan")), None),
            *[(f"      network {k}", v, 2 * a.n) for k, v in tm.get("network_s", {}).items()],
            ("    cache writes", tm.get("cache_s", float("nan")), None),
            ("  metrics", tm["metrics_s"], None),
        ]
        other = wall - tm["hash_s"] - tm["extract_s"] - tm["metrics_s"] - tm.get("build_extractors_s", 0.0)
        rows.append(("  build extractors", tm.get("build_extractors_s", float("nan")), None))
        rows += [(f"    {k}", v, None) for k, v in tm["per_metric_s"].items()]
        rows.append(("  other (set checks, the result)", other, None))
    _log("device timings ...")
    dev = device_timings(a.n, a.device, a.n_bootstrap)
    rows += [(f"device: {k[:-2]}", v, None) for k, v in dev.items()]

    print(f"gpu_scaling: N = {a.n:,} samples + {a.n:,} reference, {a.size} px, {dev_name}, torch {torch.__version__}, "
          f"batch {a.batch_size}, {a.workers} workers{', compiled networks' if a.compile else ''}")
    print(f"{'step':<44}{'seconds':>10}{'images/s':>12}")
    for name, s, n in rows:
        rate = f"{n / s:12.0f}" if n and s > 0 else f"{'':>12}"
        print(f"{name:<44}{s:10.2f}{rate}")
    doc = {"n": a.n, "size": a.size, "device": dev_name, "torch": torch.__version__, "batch_size": a.batch_size,
           "workers": a.workers, "rows": [{"step": r[0].strip(), "s": r[1], "images": r[2]} for r in rows],
           "timings": tm, "values": {k: v["value"] for k, v in res["metrics"].items()}}
    (out / "gpu_scaling.json").write_text(json.dumps(doc, indent=1, default=float))
    print(f"wrote {out / 'gpu_scaling.json'}")


if __name__ == "__main__":
    main()
