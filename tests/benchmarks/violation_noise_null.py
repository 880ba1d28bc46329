"""Does the validity suite's noise test cry wolf? ``violation_noise`` on pairs with no true difference.

Each trial draws two disjoint subsets of N images from the ``cxr128`` training split's shipped features (one
population: any order between them is sampling noise), orients the pair so that it is a violation (the set
expected to be better has the larger FID), and asks ``cxrbench.engine.validity.violation_noise`` whether the
inversion is beyond the noise. A sound test says so in at most about 2.5% of trials (one side of a 95% interval).

    OMP_NUM_THREADS=1 python tests/benchmarks/violation_noise_null.py [--trials 60] [--n 200] [--reps 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.engine.validity import violation_noise
from cxrbench.metrics.functional import fid

DATA = ROOT / "cxrbench" / "protocols" / "cxr128_data"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args(argv)
    train = np.load(DATA / "cxr128-train.npz")["features"].astype(np.float64)
    ref = np.load(DATA / "cxr128-reference.npz")["features"].astype(np.float64)
    rng = np.random.default_rng(1)
    beyond = 0
    for k in range(args.trials):
        perm = rng.permutation(len(train))
        feats = {"a": train[perm[:args.n]], "b": train[perm[args.n:2 * args.n]]}
        values = {name: fid(real=ref, fake=f).value for name, f in feats.items()}
        better, worse = sorted(feats, key=values.get, reverse=True)  # a violation by construction
        v = [{"better": better, "worse": worse, "value_better": values[better], "value_worse": values[worse]}]
        beyond += violation_noise(ref, feats, v, reps=args.reps, seed=k)
    print(f"{args.trials} null pairs of {args.n} images (cxr128 training-split features), {args.reps} replicates: "
          f"{beyond} called beyond the noise ({beyond / args.trials:.1%}; a sound test: about 2.5% or fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
