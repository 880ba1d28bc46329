"""Time of one evaluation under the default protocol at its sample count, on this machine.

    python tests/benchmarks/bench_protocol_time.py [--samples examples/cxr128-samples] [--runs 3]

The first run extracts the samples' features (and fills a fresh feature cache); the later ones find them
cached, so their time is the metrics phase (bootstrap intervals and real-vs-real floors) plus overhead. The
protocol's target: under 30 s on 2 quiet cores once features are extracted. Prints each run's total, the
metrics phase and the slowest metrics.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cxrbench.config import DEFAULT_PROTOCOL
from cxrbench.engine.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default=str(Path(__file__).resolve().parents[2] / "examples" / "cxr128-samples"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"protocol {DEFAULT_PROTOCOL}, samples {args.samples}, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as cache:
        for i in range(args.runs):
            t = time.perf_counter()
            r = evaluate(args.samples, cache_dir=cache, progress=False)
            total = time.perf_counter() - t
            timings, n, comparable = r["timings"], r["samples"]["n_used"], r["comparable"]
            per = ", ".join(f"{k} {v:.1f}" for k, v in sorted(timings["per_metric_s"].items(), key=lambda kv: -kv[1])[:4])
            stage = "extracting" if i == 0 else "features cached"
            print(f"run {i + 1} ({stage}): total {total:.1f} s, metrics {timings['metrics_s']:.1f} s ({per}), "
                  f"n = {n}, comparable {comparable}", flush=True)


if __name__ == "__main__":
    main()
