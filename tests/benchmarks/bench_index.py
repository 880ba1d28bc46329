"""Folder hash index benchmark, run by hand (pytest does not collect it).

Writes N small PNGs into a temporary folder, then opens it with cxrbench three times and prints the wall
time of each, side by side:

  no index     every file read and hashed (what each open cost before the index; also ``--no-cache``)
  first open   the same, plus writing the index
  second open  nothing changed: one stat per file against the index, no file read

    python tests/benchmarks/bench_index.py                 # 20,000 PNGs of 64x64
    python tests/benchmarks/bench_index.py --n 5000 --size 256

The files were just written, so every read comes from the page cache: the no-index and first-open times
are a lower bound (on a cold disk, reading 45 GB of NIH PNGs takes minutes to hours; the second open reads
none of it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def write_folder(root: Path, n: int, size: int) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        sub = root / f"images_{i // 5000:03d}"  # NIH-like layout: a few subfolders
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"{i:08d}_000.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(p, compress_level=1)
        total += p.stat().st_size
    return total


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    from cxrbench.data.imageset import open_folder
    from cxrbench.data.index import index_path

    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "imgs", Path(tmp) / "cache"
        t_write, nbytes = timed(lambda: write_folder(root, args.n, args.size))
        print(f"wrote {args.n} PNGs of {args.size}x{args.size} ({nbytes / 1e6:.0f} MB) in {t_write:.1f} s",
              file=sys.stderr)
        t_plain, plain = timed(lambda: open_folder(root, index=False))
        t_first, first = timed(lambda: open_folder(root, cache_dir=cache))
        t_second, second = timed(lambda: open_folder(root, cache_dir=cache))
        assert plain.hashes == first.hashes == second.hashes and plain.ids == second.ids
        idx_mb = index_path(root, cache).stat().st_size / 1e6
    rows = [("open", "wall s", "files read", "vs second"),
            ("no index", f"{t_plain:.2f}", str(args.n), f"{t_plain / t_second:.1f}x"),
            ("first open (builds index)", f"{t_first:.2f}", str(args.n), f"{t_first / t_second:.1f}x"),
            ("second open (index)", f"{t_second:.2f}", "0", "1.0x")]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
        if j == 0:
            print("  ".join("-" * x for x in w))
    print(f"{args.n} files, index {idx_mb:.1f} MB, {os.cpu_count()} CPUs; same ids and hashes on every open")


if __name__ == "__main__":
    main()
