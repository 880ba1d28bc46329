"""Coverage of every interval ``cxrbench.metrics.functional`` reports, on features with known answers.

    OMP_NUM_THREADS=1 python tests/benchmarks/coverage.py --reps 200 --workers 16
    OMP_NUM_THREADS=1 python tests/benchmarks/coverage.py --quick     # a smoke run, one core, ~1 minute

Two populations per setting: reference ~ P(0, S) and generated ~ P(delta, c S), with S a decaying spectrum,
P Gaussian or multivariate t (5 degrees of freedom, same covariance: heavy tails). The target each interval
should cover:

- FID, FD_inf: the population Frechet distance of the two populations (closed form from mean and covariance);
- KID: the population MMD^2 (the estimator is unbiased, so the mean of the repetitions estimates it);
- precision / recall / density / coverage and the KS rejected fraction depend on N by definition: their
  target is the expected value at that N (the mean over repetitions).

For every (distribution, D, N) and metric the table gives the coverage over the repetitions where the
result was ``valid``, the number of those, and the coverage over all repetitions (``all``) so flagged
settings show what an unflagged interval would have done. Nominal is 0.95; with 200 repetitions the
binomial standard error is 0.015.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cxrbench.metrics import functional as F
from cxrbench.metrics.fid import frechet_distance

SETTINGS = [  # (D, N): N >> D, N > D, N ~ D, N < D
    (8, 1000), (16, 2000), (32, 300), (64, 64), (64, 32),
]
QUICK = [(8, 300), (32, 64)]


def population(d: int):
    spectrum = 1.0 / (1.0 + np.arange(d) / 4.0)
    delta = np.zeros(d)
    delta[: max(1, d // 8)] = 0.3
    scale = 1.2
    return spectrum, delta, scale


def draw(rng, n, d, dist, mean, var):
    z = rng.normal(size=(n, d))
    if dist == "t5":  # multivariate t, 5 dof, rescaled to covariance var
        z = z / np.sqrt(rng.chisquare(5, size=(n, 1)) / 5) * np.sqrt(3 / 5)
    return mean + z * np.sqrt(var)


def one_rep(args):
    dist, d, n, rep, n_boot, metrics = args
    spectrum, delta, scale = population(d)
    rng = np.random.default_rng(1000 * rep + d + n)
    ref = draw(rng, n, d, dist, 0.0, spectrum)
    gen = draw(rng, n, d, dist, delta, scale * spectrum)
    out = {}
    kw = dict(n_bootstrap=n_boot, seed=rep)
    t = time.perf_counter()
    if "fid" in metrics:
        out["fid"] = F.fid(real=ref, fake=gen, **kw)
    if "kid" in metrics:
        out["kid"] = F.kid(real=ref, fake=gen, subset_size=n, **kw)
    if "prdc" in metrics:
        out.update(F.prdc(real=ref, fake=gen, **kw))
    if "ks_features" in metrics:
        out["ks_features"] = F.ks_features(real=ref, fake=gen, **kw)
    if "fd_inf" in metrics and n >= 20:
        out["fd_inf"] = F.fd_inf(real=ref, fake=gen, n_bootstrap=min(n_boot, 100), seed=rep)
    rows = {k: (v.value, v.ci, v.valid, v.value_bias_corrected) for k, v in out.items()}
    rows["_seconds"] = time.perf_counter() - t
    return dist, d, n, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--boot", type=int, default=F.N_BOOTSTRAP)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dists", default="gauss,t5")
    ap.add_argument("--metrics", default="fid,kid,prdc,ks_features,fd_inf")
    ap.add_argument("--settings", default=None, help="D:N pairs, e.g. 8:200,64:32 (default: the built-in list)")
    ap.add_argument("--quick", action="store_true", help="2 small settings, 40 repetitions, 200 replicates")
    a = ap.parse_args(argv)
    settings, reps, boot = (QUICK, 40, 200) if a.quick else (SETTINGS, a.reps, a.boot)
    if a.settings:
        settings = [tuple(int(v) for v in p.split(":")) for p in a.settings.split(",")]
    jobs = [(dist, d, n, r, boot, a.metrics.split(",")) for dist in a.dists.split(",") for d, n in settings for r in range(reps)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as ex:
        results = list(ex.map(one_rep, jobs, chunksize=4))
    by = {}
    for dist, d, n, rows in results:
        by.setdefault((dist, d, n), []).append(rows)
    print(f"{len(jobs)} repetitions, {boot} bootstrap replicates, {time.perf_counter() - t0:.0f} s")
    print(f"{'dist':6} {'D':>4} {'N':>5} {'metric':12} {'target':>9} {'mean':>9} {'mean_bc':>9} "
          f"{'cover(valid)':>12} {'n_valid':>7} {'cover(all)':>10} {'width':>9}")
    for (dist, d, n), reps_ in by.items():
        spectrum, delta, scale = population(d)
        fd_true = frechet_distance(np.zeros(d), np.diag(spectrum), delta, np.diag(scale * spectrum))
        for key in [k for k in reps_[0] if not k.startswith("_")]:
            vals = np.array([r[key][0] for r in reps_])
            target = fd_true if key in ("fid", "fd_inf") else float(vals.mean())
            ci = [r[key][1] for r in reps_]
            valid = np.array([r[key][2] for r in reps_])
            hit = np.array([c is not None and c[0] <= target <= c[1] for c in ci])
            width = np.mean([c[1] - c[0] for c in ci if c is not None]) if any(c is not None for c in ci) else np.nan
            bc = [r[key][3] for r in reps_ if r[key][3] is not None]
            cv = f"{hit[valid].mean():.3f}" if valid.any() else "-"
            print(f"{dist:6} {d:>4} {n:>5} {key:12} {target:9.4g} {vals.mean():9.4g} "
                  f"{(np.mean(bc) if bc else np.nan):9.4g} {cv:>12} {int(valid.sum()):>7} {hit.mean():10.3f} "
                  f"{width:9.3g}")
        print(f"  ({dist} D={d} N={n}: {np.mean([r['_seconds'] for r in reps_]):.2f} s per repetition)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
