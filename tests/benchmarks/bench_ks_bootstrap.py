"""KS-battery bootstrap before and after the column-block / int32 change, run by hand (pytest does not collect it).

"before" is the previous replicate (float64 counts, the whole D x 2N tables at once), kept here as ``Before``;
"after" is ``cxrbench.metrics.ks.WeightedKS``. Both give identical statistics (asserted). Prints, on one torch
thread, 64-d Gaussian features:

  1. one replicate, best of 6, for N + N rows (N = 5k ... 100k);
  2. the whole ``functional.ks_features`` with 200 replicates (N = 5k ... 50k), and whether the intervals agree.

    python tests/benchmarks/bench_ks_bootstrap.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cxrbench.metrics import ks
from cxrbench.metrics.functional import ks_features

After = ks.WeightedKS


class Before(After):
    """The replicate as it was: float64 counts and running sums over every column at once."""

    def __call__(self, counts_x, counts_y):
        def ecdf(order, idx, counts):
            c = torch.as_tensor(counts, dtype=torch.float64)[order]
            cum = torch.cat([torch.zeros(len(c), 1, dtype=c.dtype), c.cumsum(1)], 1)
            return cum.gather(1, idx) / float(counts.sum())

        return (ecdf(self.ox, self.ix, counts_x) - ecdf(self.oy, self.iy, counts_y)).abs().amax(1).numpy()


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("one replicate, 64-d, best of 6:")
    for n in (5000, 20000, 50000, 100000):
        g, r = rng.standard_normal((n, 64)), rng.standard_normal((n, 64)) + 0.02
        impl = {"before": Before(g, r), "after": After(g, r)}
        t = {k: [] for k in impl}
        for _ in range(6):
            cg = np.bincount(rng.integers(0, n, n), minlength=n)
            cr = np.bincount(rng.integers(0, n, n), minlength=n)
            for k, w in impl.items():
                t0 = time.perf_counter()
                w(cg, cr)
                t[k].append(time.perf_counter() - t0)
            assert np.array_equal(impl["before"](cg, cr), impl["after"](cg, cr))
        print(f"  N={n:7,d}  before {min(t['before']) * 1e3:7.1f} ms  after {min(t['after']) * 1e3:7.1f} ms")
    print("functional.ks_features, 200 replicates:")
    for n in (5000, 20000, 50000):
        g = rng.standard_normal((n, 64)).astype(np.float32)
        r = (rng.standard_normal((n, 64)) + 0.02).astype(np.float32)
        out = {}
        for k, cls in (("before", Before), ("after", After)):
            ks.WeightedKS = cls
            t0 = time.perf_counter()
            v = ks_features(real=r, fake=g, n_bootstrap=200)
            out[k] = (time.perf_counter() - t0, v.ci)
        ks.WeightedKS = After
        print(f"  N={n:7,d}  before {out['before'][0]:6.1f} s  after {out['after'][0]:6.1f} s  "
              f"same interval: {out['before'][1] == out['after'][1]}")


if __name__ == "__main__":
    main()
