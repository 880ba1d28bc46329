"""False-alarm and detection rates of ``cxrbench check`` (``compare.regressions`` with ``--tolerance auto``).

    OMP_NUM_THREADS=1 python tests/benchmarks/check_rates.py --reps 200 --workers 16
    OMP_NUM_THREADS=1 python tests/benchmarks/check_rates.py --reps 60 --boot 100    # ~3 minutes, one core

Each repetition draws one reference set and three generated sets from Gaussian features: the entry and a
re-run from the reference's own distribution (a check of these two must pass: a failure is a false alarm),
and a mildly degraded set (every dimension's mean shifted by ``--shift`` standard deviations and variance
scaled by ``--scale``; a check must fail: detection). Metrics: FID, KID, PRDC and the KS battery, computed
by ``cxrbench.metrics.functional`` exactly as ``cxrbench evaluate`` does. The table gives per metric and
for the check as a whole (any metric regressed) the false-alarm and detection rates; the target for the
whole check's false-alarm rate is at most 5%.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from cxrbench.metrics import functional as F
from cxrbench.publish.compare import Tolerance, regressions


def evaluate(gen, ref, boot, seed):
    out = {"fid": F.fid(real=ref, fake=gen, n_bootstrap=boot, seed=seed), "kid": F.kid(real=ref, fake=gen, n_bootstrap=boot, seed=seed)}
    out.update(F.prdc(real=ref, fake=gen, n_bootstrap=boot, seed=seed))
    out["ks_features"] = F.ks_features(real=ref, fake=gen, n_bootstrap=boot, seed=seed)
    return {k: v.to_dict() for k, v in out.items()}


def one_rep(args):
    rep, d, n, boot, shift, scale = args
    rng = np.random.default_rng(rep)
    ref = rng.normal(size=(n, d))
    entry = evaluate(rng.normal(size=(n, d)), ref, boot, rep)
    same = evaluate(rng.normal(size=(n, d)), ref, boot, rep + 1)
    worse = evaluate(rng.normal(size=(n, d)) * np.sqrt(scale) + shift, ref, boot, rep + 1)
    keys, tol = list(entry), Tolerance("auto")
    return ({r.key: r.regressed for r in regressions(entry, same, keys, tol)},
            {r.key: r.regressed for r in regressions(entry, worse, keys, tol)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--boot", type=int, default=F.N_BOOTSTRAP)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--shift", type=float, default=0.15)
    ap.add_argument("--scale", type=float, default=1.1)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    jobs = [(r, a.d, a.n, a.boot, a.shift, a.scale) for r in range(a.reps)]
    with ProcessPoolExecutor(a.workers) as ex:
        res = list(ex.map(one_rep, jobs))
    keys = list(res[0][0])
    print(f"D={a.d} N={a.n}, {a.reps} repetitions, {a.boot} replicates; degradation: mean +{a.shift} sd, "
          f"variance x{a.scale}")
    print(f"{'metric':12} {'false alarm':>11} {'detection':>9}")
    for k in keys:
        print(f"{k:12} {np.mean([s[k] for s, _ in res]):11.3f} {np.mean([w[k] for _, w in res]):9.3f}")
    print(f"{'any (check)':12} {np.mean([any(s.values()) for s, _ in res]):11.3f} "
          f"{np.mean([any(w.values()) for _, w in res]):9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
