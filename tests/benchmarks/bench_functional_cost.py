"""Cost of the functional API: F.fid + F.kid as a point estimate (the default) and with ci=True.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_functional_cost.py
"""

import time

import numpy as np

from cxrbench.metrics import functional as F


def main() -> None:
    rng = np.random.default_rng(0)
    warm = rng.normal(size=(20, 4))
    F.fid(real=warm, fake=warm + 1, ci=True), F.kid(real=warm, fake=warm + 1, ci=True)  # imports, first-call setup
    for n_fake, n_real, d in ((500, 400, 64), (1000, 1000, 512)):
        fake, real = rng.normal(size=(n_fake, d)), rng.normal(size=(n_real, d))
        for label, kw in (("default (point)", {}), (f"ci=True ({F.N_BOOTSTRAP} replicates)", {"ci": True})):
            t = time.perf_counter()
            F.fid(real=real, fake=fake, **kw), F.kid(real=real, fake=fake, **kw)
            print(f"{n_fake} x {d} fake vs {n_real} x {d} real, F.fid + F.kid, {label}: "
                  f"{time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
