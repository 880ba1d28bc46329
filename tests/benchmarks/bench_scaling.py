"""Scaling benchmark: how each stage of ``cxrbench evaluate`` grows from 1k to 100k images, run by hand
(pytest does not collect it).

For every N it writes N generated and N reference 64-px PNGs (procedural radiographs; the reference at
shift 0, the samples at shift 0.3; with ``--train``, N training images too, so memorization runs), then
evaluates them in a fresh subprocess with the ``cxr64`` extractor and its label head
(``EvalConfig(extractors=("cxr64", "cxr64-classifier"))``, no feature cache, so every file is hashed,
decoded and run through the network): every default metric that applies, with its bootstrap CIs and
real-vs-real floors. Per stage it records wall time and peak RSS (a sampler thread reads /proc every 2 ms;
"peak" is the stage's highest RSS, "delta" that minus the RSS when the stage began):

  hash       open both folders: list, read and sha256 every file
  decode     waiting for decoded batches (DataLoader workers)       \\  parts of ``timings.extract_s``
  forward    network + label head + copies to the host               /
  <metric>   each metric's compute, split into ``boot`` (bootstrap replicates) and ``floor`` (real-vs-real
             floor and the metric at the floor's sizes); the rest is the point estimate

It then fits each stage's growth exponent (slope of log time on log N over N >= 5k, or all points when
fewer) and flags a stage whose exponent exceeds its inherent complexity by more than 0.3: 1 for hashing,
decoding, the forward pass and the moment/KS/label metrics, 2 for exact kNN (PRDC, memorization; their
memory must stay O(N * block): a memory exponent above 1.3 is flagged), and 1 for every bootstrap (a
replicate must reuse the neighbours, not recompute them). Prints a table, writes ``scaling.json`` and
``scaling.png`` to ``--out``.

    python tests/benchmarks/bench_scaling.py                           # N = 1k, 5k, 20k, 50k, 100k
    python tests/benchmarks/bench_scaling.py --n 1000,2000 --out /tmp/s  # a quick check
    python tests/benchmarks/bench_scaling.py --budget-min 25             # skip an N projected past 25 min

Before each N the total time of the next run is projected from the previous two (power law); an N that
would overrun ``--budget-min`` is skipped and listed as such. Times on a shared machine vary with its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: inherent time exponent per stage kind (see the docstring); anything not listed is expected linear
INHERENT = {"prdc": 2.0, "memorization": 2.0}
TOLERANCE = 0.3
#: distinct procedural images per set; the rest are copies with a different index written into 4 pixels
POOL = 2048


def _log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- inputs -------------------------------------------------------------------------------------------------
def write_set(folder: Path, n: int, shift: float, seed: int, size: int = 64, start: int = 0,
              pool_size: int = POOL) -> None:
    """``n`` PNGs ``img_{i:07d}.png`` (i from ``start``): pool images with the index written into the top-left
    corner's 4 pixels, so every file (hence every sha256) differs at the cost of generating ``pool_size``
    images. The pool depends on (shift, seed, size) only, so ranges written by several processes join up."""
    from PIL import Image

    from cxrbench.data.synthetic import synthetic_cxr

    folder.mkdir(parents=True, exist_ok=True)
    pool = np.round(synthetic_cxr(pool_size, size, shift=shift, seed=seed)[:, 0].numpy() * 255).astype(np.uint8)
    for i in range(start, start + n):
        a = pool[i % pool_size].copy()
        a[0, :4] = np.frombuffer(int(i).to_bytes(4, "little"), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img_{i:07d}.png", compress_level=1)


def prepare(data: Path, n_max: int, size: int, train: bool) -> dict[str, Path]:
    """The largest sets once (resumable: files already there are kept), in ``data/{gen,ref,train}``."""
    roles = {"gen": (0.3, 1), "ref": (0.0, 2)} | ({"train": (0.0, 3)} if train else {})
    out = {}
    for role, (shift, seed) in roles.items():
        d = data / role
        have = len(list(d.glob("*.png"))) if d.is_dir() else 0
        if have < n_max:
            t = time.perf_counter()
            write_set(d, n_max - have, shift, seed, size, start=have)
            _log(f"wrote {n_max - have} {role} PNGs in {time.perf_counter() - t:.0f} s")
        out[role] = d
    return out


def subset_dirs(pools: dict[str, Path], work: Path, n: int) -> dict[str, Path]:
    """Folders of the first ``n`` files of each pool, as hard links (instant, no copy)."""
    out = {}
    for role, src in pools.items():
        d = work / f"{role}_{n}"
        if not d.is_dir() or len(os.listdir(d)) != n:
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                p = d / f"img_{i:07d}.png"
                if not p.exists():
                    os.link(src / f"img_{i:07d}.png", p)
        out[role] = d
    return out


# --- the measured run (a subprocess per N) -------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Sampler(threading.Thread):
    """Highest RSS since the last ``reset``, sampled every 2 ms (numpy/torch release the GIL in big kernels)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = self.base = _rss_mb()
        self.stop = False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def reset(self) -> float:
        self.base = self.peak = _rss_mb()
        return self.base


class _Stages:
    """Wall time and peak RSS per stage; ``sub`` times nested parts (bootstrap, floor) of the open stage."""

    def __init__(self, sampler: _Sampler):
        self.s, self.rows, self.current = sampler, {}, None

    def wrap(self, name, fn):
        def inner(*a, **kw):
            prev, self.current = self.current, name
            base = self.s.reset()
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                row = self.rows.setdefault(name, {"s": 0.0, "peak_mb": 0.0, "delta_mb": 0.0, "boot_s": 0.0,
                                                  "floor_s": 0.0})
                row["s"] += time.perf_counter() - t
                row["peak_mb"] = max(row["peak_mb"], self.s.peak)
                row["delta_mb"] = max(row["delta_mb"], self.s.peak - base)
                self.current = prev
        return inner

    def sub(self, part, fn):
        def inner(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                if self.current:
                    row = self.rows.setdefault(self.current, {"s": 0.0, "peak_mb": 0.0, "delta_mb": 0.0,
                                                              "boot_s": 0.0, "floor_s": 0.0})
                    row[part] += time.perf_counter() - t
        return inner


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    import cxrbench
    import cxrbench.engine.evaluate as ev
    import cxrbench.engine.metric_runner as runner
    import cxrbench.metrics.fid as fid_mod
    import cxrbench.metrics.kid as kid_mod
    import cxrbench.metrics.ks as ks_mod
    import cxrbench.metrics.labels as labels_mod
    import cxrbench.metrics.memorization as mem_mod
    import cxrbench.metrics.prdc as prdc_mod
    import cxrbench.metrics.rrs as rrs_mod
    from cxrbench.config import EvalConfig
    from cxrbench.metrics import common

    sampler = _Sampler()
    sampler.start()
    st = _Stages(sampler)
    ev.open_source = st.wrap("hash", ev.open_source)
    ev.extract_features = st.wrap("extract", ev.extract_features)
    run = ev.run_metric  # every metric runs through the engine's run_metric: one stage per metric name
    ev.run_metric = lambda m, ctx: st.wrap(m.name, run)(m, ctx)
    # bootstrap replicates: the shared drivers, PRDC's replicate loop, FD_inf's replicate refits
    for mod in (fid_mod, kid_mod, ks_mod, labels_mod):  # the metric modules that hold a functional entry
        mod.two_sample_bootstrap = st.sub("boot_s", mod.two_sample_bootstrap)
    for mod in (common, rrs_mod):
        mod.bootstrap_ci = st.sub("boot_s", mod.bootstrap_ci)
    prdc_mod.PRDCResult.resampled = st.sub("boot_s", prdc_mod.PRDCResult.resampled)
    import cxrbench.metrics.fd_inf as fdi

    fd_calls = {"n": 0}
    fd_orig = fdi.fd_inf_two_sample

    def fd_counted(*x, **kw):  # fd_inf.fd_inf: the first call is the estimate, the rest are replicates
        fd_calls["n"] += 1
        return fd_orig(*x, **kw) if fd_calls["n"] == 1 else fd_boot(*x, **kw)

    fd_boot = st.sub("boot_s", fd_orig)
    fdi.fd_inf_two_sample = fd_counted
    f_fd = fdi.fd_inf

    def fd_inf_reset(*x, **kw):
        fd_calls["n"] = 0
        return f_fd(*x, **kw)

    fdi.fd_inf = fd_inf_reset
    for mod in (runner, mem_mod, labels_mod, rrs_mod, common):
        if hasattr(mod, "matched_floor"):
            mod.matched_floor = st.sub("floor_s", mod.matched_floor)

    cfg = EvalConfig(extractors=("cxr64", "cxr64-classifier"), use_cache=False, progress=False,
                     n_bootstrap=a.n_bootstrap, num_workers=a.workers, device="cpu")
    rss0 = _rss_mb()
    t = time.perf_counter()
    r = cxrbench.evaluate(a.gen, a.ref, config=cfg, train_reference=a.train)
    wall = time.perf_counter() - t
    sampler.stop = True
    d = r.to_dict() if hasattr(r, "to_dict") else dict(r)
    tm = d["timings"]
    out = {
        "n": a.n, "wall_s": wall, "rss_start_mb": rss0,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "timings": tm, "stages": st.rows,
        "skipped_metrics": d.get("skipped_metrics", {}),
        "values": {k: v.get("value") for k, v in d["metrics"].items()},
        "cis": {k: v.get("ci") for k, v in d["metrics"].items()},
    }
    Path(a.result).write_text(json.dumps(out, indent=1, default=float))


# --- analysis -----------------------------------------------------------------------------------------------
def stage_table(runs: list[dict]) -> dict[str, dict]:
    """``{stage: {"n": [...], "s": [...], "peak_mb": [...], "delta_mb": [...], "kind": ...}}`` over the runs."""
    rows: dict[str, dict] = {}

    def add(name, n, s, peak=None, delta=None, expect=1.0):
        row = rows.setdefault(name, {"n": [], "s": [], "peak_mb": [], "delta_mb": [], "expect": expect})
        row["n"].append(n)
        row["s"].append(s)
        row["peak_mb"].append(peak)
        row["delta_mb"].append(delta)

    for r in runs:
        n, tm, stg = r["n"], r["timings"], r["stages"]
        h = stg.get("hash", {})
        add("hash", n, tm["hash_s"], h.get("peak_mb"), h.get("delta_mb"))
        x = stg.get("extract", {})
        add("decode", n, tm.get("decode_s", float("nan")))
        add("forward", n, tm.get("forward_s", float("nan")), x.get("peak_mb"), x.get("delta_mb"))
        for name, row in sorted(stg.items()):
            if name in ("hash", "extract") or row["s"] <= 0:
                continue
            expect = INHERENT.get(name, 1.0)
            add(name, n, row["s"], row["peak_mb"], row["delta_mb"], expect)
            if row["boot_s"] > 0:
                add(f"{name}:boot", n, row["boot_s"], expect=1.0)
            if row["floor_s"] > 0:
                add(f"{name}:floor", n, row["floor_s"], expect=expect)
        add("total", n, r["wall_s"], r["maxrss_mb"], None, 2.0)
    return rows


def exponent(n, y) -> float | None:
    """Slope of log y on log n over the points with n >= 5000 (all points when fewer than two are)."""
    n, y = np.asarray(n, float), np.asarray(y, dtype=float)
    ok = np.isfinite(y) & (y > 0)
    big = ok & (n >= 5000)
    use = big if big.sum() >= 2 else ok
    if use.sum() < 2:
        return None
    return float(np.polyfit(np.log(n[use]), np.log(y[use]), 1)[0])


def report(runs: list[dict], skipped: list[str], out: Path) -> dict:
    rows = stage_table(runs)
    ns = [r["n"] for r in runs]
    flags = []
    lines = [f"{'stage':<22}" + "".join(f"{n:>16,}" for n in ns) + f"{'exp t':>8}{'exp mem':>8}  flag"]
    for name, row in rows.items():
        e = exponent(row["n"], row["s"])
        em = exponent(row["n"], [d if d is not None and d > 50 else np.nan for d in row["delta_mb"]])
        row["exponent"], row["mem_exponent"] = e, em
        bad = []
        if e is not None and e > row["expect"] + TOLERANCE and name != "total":
            bad.append(f"time ~N^{e:.2f} > N^{row['expect']:g}")
        if name in INHERENT and em is not None and em > 1 + TOLERANCE:
            bad.append(f"memory ~N^{em:.2f} > N")
        row["flag"] = "; ".join(bad)
        if bad:
            flags.append(f"{name}: {row['flag']}")
        cells = []
        for s, p in zip(row["s"], row["peak_mb"]):
            cells.append(f"{s:8.1f}s" + (f"/{p / 1024:4.1f}G" if p else "      "))
        lines.append(f"{name:<22}" + "".join(f"{c:>16}" for c in cells)
                     + f"{'' if e is None else f'{e:.2f}':>8}{'' if em is None else f'{em:.2f}':>8}  {row['flag']}")
    print("time per stage in s / peak RSS of the process during it in GiB; exponents fitted on N >= 5000")
    print("\n".join(lines))
    for r in runs:
        print(f"N={r['n']:,}: wall {r['wall_s']:.1f} s, peak RSS {r['maxrss_mb'] / 1024:.2f} GiB, "
              f"skipped metrics: {', '.join(sorted(r['skipped_metrics'])) or 'none'}")
    for s in skipped:
        print("not run:", s)
    print("flags:", "; ".join(flags) if flags else "none")
    doc = {"argv": sys.argv, "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "runs": runs,
           "stages": rows, "flags": flags, "not_run": skipped}
    (out / "scaling.json").write_text(json.dumps(doc, indent=1, default=float))
    try:
        plot(rows, out / "scaling.png")
    except ImportError as e:
        print(f"no plot ({e})")
    return doc


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, am) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab20").colors
    for j, (name, row) in enumerate((k, v) for k, v in rows.items() if ":" not in k):
        style = dict(color=colors[j % 20], marker="os^v"[j % 4], ls="-" if j < 10 else "--")
        lab = name + ("" if row.get("exponent") is None else f" (N^{row['exponent']:.2f})")
        ax.loglog(row["n"], row["s"], label=lab, lw=2.5 if name == "total" else 1.2, **style)
        pk = [np.nan if p is None else p / 1024 for p in row["peak_mb"]]
        if np.isfinite(pk).any():
            am.semilogx(row["n"], pk, label=name, **style)
    ax.set(xlabel="N generated = N reference", ylabel="wall time (s)", title="time per stage")
    am.axhline(4, color="k", ls=":", lw=1)
    am.set(xlabel="N generated = N reference", ylabel="peak RSS during the stage (GiB)", title="memory")
    ax.legend(fontsize=7)
    am.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- driver -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,5000,20000,50000,100000", help="comma-separated sizes")
    ap.add_argument("--out", default="scaling_out", help="folder for scaling.json and scaling.png")
    ap.add_argument("--data", default=None, help="folder for the PNG pools (kept; default: a temporary folder)")
    ap.add_argument("--train", action="store_true", help="add N training images, so memorization runs")
    ap.add_argument("--n-bootstrap", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cxrbench's)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2))
    ap.add_argument("--budget-min", type=float, default=25.0, help="skip an N projected to overrun this total")
    # the per-N subprocess
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("gen", "ref", "result"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    ap.add_argument("--train-dir", dest="train_dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.n = int(a.n)
        a.train = a.train_dir
        child(a)
        return

    ns = sorted(int(x) for x in a.n.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data) if a.data else Path(tmp) / "pool"
        runs, skipped = [], []
        for n in ns:
            spent = time.perf_counter() - t_start
            if len(runs) >= 2:  # power-law projection from the last two runs (data writing included)
                (n1, w1), (n2, w2) = [(r["n"], r["wall_s"] + r["prep_s"]) for r in runs[-2:]]
                proj = w2 * (n / n2) ** (np.log(w2 / w1) / np.log(n2 / n1))
                if spent + proj > 60 * a.budget_min:
                    skipped.append(f"N={n:,}: projected {proj / 60:.1f} min after {spent / 60:.1f} min spent "
                                   f"(budget {a.budget_min:g} min)")
                    _log(skipped[-1])
                    continue
            tp = time.perf_counter()
            pools = prepare(data, n, 64, a.train)
            dirs = subset_dirs(pools, Path(tmp) / "sets", n)
            prep = time.perf_counter() - tp
            res = Path(tmp) / f"result_{n}.json"
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "--gen", str(dirs["gen"]), "--ref",
                   str(dirs["ref"]), "--result", str(res), "--n-bootstrap", str(a.n_bootstrap), "--threads",
                   str(a.threads)]
            if a.train:
                cmd += ["--train-dir", str(dirs["train"])]
            if a.workers is not None:
                cmd += ["--workers", str(a.workers)]
            _log(f"N={n:,}: evaluating ...")
            env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            subprocess.run(cmd, check=True, env=env)
            r = json.loads(res.read_text())
            r["prep_s"] = prep
            runs.append(r)
            _log(f"N={n:,}: {r['wall_s']:.1f} s, peak RSS {r['maxrss_mb'] / 1024:.2f} GiB")
            report(runs, skipped, out)  # after every N, so an interrupted curve still leaves its figures
        print()
        report(runs, skipped, out)
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
