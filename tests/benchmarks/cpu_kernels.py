"""What pinning PyTorch's CPU kernels to AVX2 (``cxrbench.kernels``) costs, and what it buys, on this machine.

Each configuration runs in its own interpreter (the libraries read the variables once): the machine's own widest
kernels (nothing set) against the pinned ones. For each extractor it prints the extraction time of the same
images (median of ``--repeats``, after a warm-up batch) and whether the features are bit for bit the pinned ones.
On an AVX2 machine the two rows are the same run; on an AVX-512 one the first row is the speed the pin gives up.

    python tests/benchmarks/cpu_kernels.py --n 600 --threads 2 [--extractors cxr128 inception]

Run it on quiet cores: a training or test run beside it changes the times, not the bits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.kernels import PORTABLE_CPU_KERNELS

CHILD = """
import hashlib, json, statistics, sys, time, torch
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.extraction import build_extractors
from cxrbench.config import EvalConfig
name, n, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
weights = "auto" if name == "cxr128" else "random"  # no downloaded weights here: the published architecture, seeded
ext = build_extractors((name,), EvalConfig(extractors=(name,), weights=weights, progress=False), "cpu")[name]
x = synthetic_cxr(n, 256, seed=0)
with torch.no_grad():
    ext(ext.preprocess(x[:20]))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f = torch.cat([ext(ext.preprocess(x[i:i + 50])) for i in range(0, n, 50)])
        times.append(time.perf_counter() - t)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "seconds": statistics.median(times),
                  "sha256": hashlib.sha256(f.numpy().tobytes()).hexdigest()}))
"""


def run(name: str, pinned: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_KERNELS}
    if pinned:
        env.update(PORTABLE_CPU_KERNELS)
    env["OMP_NUM_THREADS"] = str(args.threads)
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.n), str(args.threads), str(args.repeats)],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--extractors", nargs="+", default=["cxr128", "inception"])
    args = p.parse_args(argv)
    print(f"{args.n} synthetic 256 px images, {args.threads} threads, median of {args.repeats}")
    print(f"{'extractor':<12}{'kernels':<28}{'seconds':>9}{'images/s':>10}  same bits as pinned")
    for name in args.extractors:
        pinned = run(name, True, args)
        native = run(name, False, args)
        for label, r in ((f"native ({native['capability']})", native), (f"pinned ({pinned['capability']})", pinned)):
            print(f"{name:<12}{label:<28}{r['seconds']:9.2f}{args.n / r['seconds']:10.0f}  "
                  f"{'yes' if r['sha256'] == pinned['sha256'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
