"""Throughput benchmark: cxrbench evaluate against the peer route, run by hand (pytest does not collect it).

On the same PNGs and the same extractor weights (a seeded random-init Inception-v3 and XRV DenseNet121, saved
to files that both routes load), it times

  (a) ``cxrbench evaluate --extractors inception,xrv --metrics fid,kid,prdc`` (one decode per image feeding
      both networks, then every metric with bootstrap CIs and real-vs-real floors), against
  (b) the peer route: torch-fidelity ``calculate_metrics`` (fid, kid, prc on the Inception weights file),
      torchmetrics ``FrechetInceptionDistance`` with the XRV network as its feature module, and the ``prdc``
      package on XRV features from a plain extraction loop (each tool decodes the images itself);

and prints images per second, wall time, peak memory (``ru_maxrss`` of each route's process) and the ratio.
It also times the Frechet distance of 2048-d covariances (cxrbench's eigvalsh route against scipy's ``sqrtm``
formula) and, with ``--knn-only``, measures the peak memory of PRDC at N = 20k.

    python tests/benchmarks/bench_throughput.py --n 2000 --size 256            # the issue's setting
    python tests/benchmarks/bench_throughput.py --n 300 --size 256 --device cpu
    python tests/benchmarks/bench_throughput.py --knn-only --knn-n 20000 --knn-dim 64

Each route runs in its own subprocess, so peak memory and warm-up are per route. Figures on a shared machine
vary with the other load; run the routes more than once before quoting a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("CXRBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
if not SHARED_DATA.is_dir() and (REPO.parents[1] / "shared" / "data").is_dir():  # a git worktree under /work/wt
    SHARED_DATA = REPO.parents[1] / "shared" / "data"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- inputs -------------------------------------------------------------------------------------------------
def prepare_images(work: Path, n: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """``gen/`` and ``ref/``: n grayscale ``size``-px PNGs each, from the shared real CXRs (synthetic if short)."""
    from PIL import Image

    gen, ref = work / f"gen_{n}_{size}", work / f"ref_{n}_{size}"
    if all(d.is_dir() and len(list(d.glob("*.png"))) == n for d in (gen, ref)):
        return gen, ref
    paths = sorted(p for p in SHARED_DATA.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if SHARED_DATA.is_dir() else []
    paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))][: 2 * n]
    for d in (gen, ref):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(2 * n):
        d, j = (gen, i) if i < n else (ref, i - n)
        if i < len(paths):
            im = Image.open(paths[i]).convert("L")
            s = min(im.size)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        else:  # not enough real images here: procedural radiographs
            from cxrbench.data.synthetic import synthetic_cxr

            a = synthetic_cxr(1, size, seed=seed + i)[0, 0].numpy()
            im = Image.fromarray(np.round(a * 255).astype(np.uint8))
        im.save(d / f"img_{j:05d}.png")
    _log(f"images: {min(len(paths), 2 * n)} real + {max(0, 2 * n - len(paths))} synthetic, {size} px")
    return gen, ref


def prepare_weights(work: Path) -> Path:
    """One folder with the random-init Inception and XRV state dicts under their published file names."""
    import torch

    from cxrbench.features.inception import FILENAMES, InceptionV3Extractor
    from cxrbench.features.xrv import XRVDenseNetExtractor, _weights_url

    wdir = work / "weights"
    inc, xrv = wdir / FILENAMES[0], wdir / Path(_weights_url()).name
    if not (inc.is_file() and xrv.is_file()):
        wdir.mkdir(parents=True, exist_ok=True)
        torch.save(InceptionV3Extractor(weights="random", seed=0).net.state_dict(), inc)
        torch.save(XRVDenseNetExtractor(weights="random", seed=0).net.state_dict(), xrv)
    return wdir


# --- routes (each in its own process) ------------------------------------------------------------------------
def route_cxrbench(a) -> dict:
    from cxrbench.cli import main

    out = Path(a.work) / "cxrbench_result.json"
    argv = ["evaluate", "--samples", a.gen, "--reference", a.ref, "--weights", a.weights, "--extractors",
            "inception,xrv", "--metrics", "fid,kid,prdc", "--device", a.device, "--no-cache", "--quiet",
            "--n-bootstrap", str(a.n_bootstrap), "--batch-size", str(a.batch_size), "--out", str(out), "--json"]
    if a.num_workers is not None:
        argv += ["--num-workers", str(a.num_workers)]
    if a.xrv_resize:
        argv += ["--xrv-resize", a.xrv_resize]
    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # the result JSON goes to --out
    try:
        rc = main(argv)
    finally:
        sys.stdout = stdout
    assert rc == 0, rc
    r = json.loads(out.read_text())
    t = r["timings"]
    return {"values": {k: v["value"] for k, v in r["metrics"].items()},
            "steps": {"hash": t["hash_s"], "extract": t["extract_s"], "metrics": t["metrics_s"]}, "timings": t}


class _XRVFeatures:
    """torchxrayvision DenseNet121 features for torchmetrics: float [0, 1] (N, 1, H, W) in, (N, 1024) out."""

    def __init__(self, weights: Path, device: str):
        import torch
        import torchxrayvision as xrv

        self.net = xrv.models.DenseNet(weights=None)
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
        self.net.eval().to(device)

    def module(self):
        import torch
        import torch.nn.functional as F

        net = self.net

        class M(torch.nn.Module):
            num_features = 1024

            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                h, w = x.shape[-2:]
                s = min(h, w)
                x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
                x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
                return self.net.features2(x * 2048.0 - 1024.0)

        return M().eval()


def _load_batches(folder: str, batch_size: int):
    """What a peer script does: PIL decode, to float [0, 1], stack."""
    import torch
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))
    for s in range(0, len(files), batch_size):
        arrs = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files[s : s + batch_size]]
        yield torch.from_numpy(np.stack(arrs))[:, None]


def route_peers(a) -> dict:
    import prdc
    import torch
    import torch_fidelity
    from torchmetrics.image.fid import FrechetInceptionDistance

    from cxrbench.features.inception import FILENAMES
    from cxrbench.features.xrv import _weights_url

    steps, values = {}, {}
    wdir = Path(a.weights)
    t = time.perf_counter()
    tf = torch_fidelity.calculate_metrics(
        input1=a.gen, input2=a.ref, fid=True, kid=True, prc=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(wdir / FILENAMES[0]), cuda=a.device.startswith("cuda"),
        batch_size=a.batch_size, kid_subset_size=min(1000, a.n), prc_neighborhood=5, cache=False, verbose=False,
        save_cpu_ram=True,
    )
    steps["torch-fidelity (inception: fid, kid, prc)"] = time.perf_counter() - t
    values.update({"fid_inception": tf["frechet_inception_distance"], "kid_inception": tf["kernel_inception_distance_mean"],
                   "precision_inception": tf["precision"], "recall_inception": tf["recall"]})

    xrv = _XRVFeatures(wdir / Path(_weights_url()).name, a.device)
    t = time.perf_counter()
    fid = FrechetInceptionDistance(feature=xrv.module(), normalize=True).to(a.device)
    with torch.no_grad():
        for real, folder in ((True, a.ref), (False, a.gen)):
            for x in _load_batches(folder, a.batch_size):
                fid.update(x.to(a.device), real=real)
        values["fid_xrv"] = float(fid.compute())
    steps["torchmetrics FID (xrv)"] = time.perf_counter() - t

    t = time.perf_counter()
    m = xrv.module()
    with torch.no_grad():
        feats = {f: torch.cat([m(x.to(a.device)).cpu() for x in _load_batches(f, a.batch_size)]).numpy()
                 for f in (a.ref, a.gen)}
    steps["xrv features for prdc"] = time.perf_counter() - t
    t = time.perf_counter()
    p = prdc.compute_prdc(real_features=feats[a.ref], fake_features=feats[a.gen], nearest_k=5)
    steps["prdc package (xrv)"] = time.perf_counter() - t
    values.update({f"{k}_xrv": float(v) for k, v in p.items()})
    return {"values": values, "steps": {k: round(v, 3) for k, v in steps.items()}}


def _run_route(name: str, a, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--route", name, *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "CXRBENCH_ALLOW_UNPUBLISHED_WEIGHTS": "1"}  # the self-made Inception file of prepare_weights
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"route {name} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t  # interpreter start, imports and exit included
    return out


def profile_rows(r: dict) -> list[tuple[str, float]]:
    """Every second of the cxrbench route's process, from its result's ``timings``: the stages measured
    inside ``evaluate`` and, as remainders, what lies between them (so the rows sum to the process time)."""
    t = r["timings"]
    nets = t.get("network_s", {})
    fwd_rest = t["forward_s"] - t.get("preprocess_s", 0.0) - sum(nets.values())
    loop_rest = t["extract_s"] - t["decode_s"] - t["forward_s"] - t["cache_s"]
    evaluate_rest = t["total_s"] - t["hash_s"] - t.get("build_extractors_s", 0.0) - t["extract_s"] - t["metrics_s"]
    rows = [("interpreter start, imports, CLI, exit", r["process_s"] - t["total_s"]),
            ("build extractors (load weights, fold BN)", t.get("build_extractors_s", 0.0)),
            ("hash: list, read and sha256 both folders", t["hash_s"]),
            ("decode: waiting for decoded batches", t["decode_s"]),
            ("preprocessing (resize, quantise, layout)", t.get("preprocess_s", 0.0))]
    rows += [(f"network forward: {k}", v) for k, v in nets.items()]
    rows += [("features to host, derived heads", fwd_rest),
             ("cache lookups and writes", t["cache_s"]),
             ("extraction loop (progress, bookkeeping)", loop_rest)]
    rows += [(f"metric {k} (CI + floor)", v) for k, v in t.get("per_metric_s", {}).items()]
    rows += [("metrics loop, result assembly", t["metrics_s"] - sum(t.get("per_metric_s", {}).values())),
             ("set checks, provenance", evaluate_rest)]
    return rows


# --- Frechet distance at 2048-d ------------------------------------------------------------------------------
def bench_fd(d: int = 2048, n: int = 4000, repeats: int = 3) -> None:
    import scipy.linalg
    import torch

    from cxrbench.metrics.fid import frechet_distance, gaussian_stats

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x1 = rng.standard_normal((n, d)) @ mix
    x2 = (rng.standard_normal((n, d)) * 1.1 + 0.05) @ mix
    (mu1, s1), (mu2, s2) = gaussian_stats(x1), gaussian_stats(x2)
    m1, c1, m2, c2 = mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy()

    def scipy_fd():
        covmean, _ = scipy.linalg.sqrtm(c1 @ c2, disp=False)
        diff = m1 - m2
        return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real))

    def timed(f):
        ts, v = [], None
        for _ in range(repeats):
            t = time.perf_counter()
            v = f()
            ts.append(time.perf_counter() - t)
        return v, min(ts)

    v_ours, t_ours = timed(lambda: frechet_distance(mu1, s1, mu2, s2))
    v_scipy, t_scipy = timed(scipy_fd)
    print(f"\nFrechet distance, {d}-d covariances (from {n} samples), best of {repeats}, torch threads "
          f"{torch.get_num_threads()}:")
    print(f"  cxrbench frechet_distance (Cholesky + eigvalsh, float64): {t_ours:8.3f} s   FD = {v_ours:.10g}")
    print(f"  scipy.linalg.sqrtm formula:                              {t_scipy:8.3f} s   FD = {v_scipy:.10g}")
    print(f"  speed-up {t_scipy / t_ours:.1f}x, relative difference {abs(v_ours - v_scipy) / abs(v_scipy):.2e}")


# --- kNN memory -------------------------------------------------------------------------------------------------
def route_knn(a) -> dict:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((a.knn_n, a.knn_dim), dtype=np.float32)
    gen = (rng.standard_normal((a.knn_n, a.knn_dim), dtype=np.float32) * 1.1 + 0.1).astype(np.float32)
    import prdc

    from cxrbench.metrics.prdc import prdc_result as cx_prdc

    base = _maxrss_mb()  # after the imports: the figure is the call's own working memory
    t = time.perf_counter()
    if a.knn_impl == "cxrbench":
        v = cx_prdc(real, gen, k=5, device=a.device).as_dict()
    else:
        v = prdc.compute_prdc(real_features=real, fake_features=gen, nearest_k=5)
    return {"values": {k: float(x) for k, x in v.items()}, "wall_s": time.perf_counter() - t,
            "inputs_mb": (real.nbytes + gen.nbytes) / 2**20, "base_mb": base, "peak_mb": _maxrss_mb()}


def knn_report(a) -> None:
    print(f"\nPRDC (k=5) on {a.knn_n} x {a.knn_n} random {a.knn_dim}-d float32 features, device {a.device}:")
    impls = ["cxrbench"] + (["prdc-package"] if a.knn_peer else [])
    for impl in impls:
        r = _run_route("knn", a, ["--knn-impl", impl, "--knn-n", str(a.knn_n), "--knn-dim", str(a.knn_dim),
                                  "--device", a.device])
        print(f"  {impl:13s} wall {r['wall_s']:7.1f} s  peak RSS {r['peak_mb']:7.0f} MB  (+{r['peak_mb'] - r['base_mb']:.0f} MB "
              f"over the {r['base_mb']:.0f} MB before the call; inputs {r['inputs_mb']:.0f} MB)  "
              + ", ".join(f"{k} {v:.4f}" for k, v in r["values"].items()))
    if not a.knn_peer:
        print(f"  (one {a.knn_n} x {a.knn_n} float32 distance matrix alone is {a.knn_n**2 * 4 / 2**20:.0f} MB; the prdc "
              "package builds three; --knn-peer runs it)")


# --- main -------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="images per set (generated and reference)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=None, help="cxrbench decoding workers (default its own)")
    p.add_argument("--n-bootstrap", type=int, default=100, help="cxrbench bootstrap replicates (peers compute none)")
    p.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "cxrbench_bench"))
    p.add_argument("--skip-fd", action="store_true")
    p.add_argument("--xrv-resize", default=None,
                   help="cxrbench's XRV resize (default its own, xrv's XRayResizer); torch-antialias is what the "
                        "peer route's XRV module does, so the XRV rows then compare the same preprocessing")
    p.add_argument("--knn-only", action="store_true", help="only the PRDC peak-memory measurement")
    p.add_argument("--knn-n", type=int, default=20000)
    p.add_argument("--knn-dim", type=int, default=64)
    p.add_argument("--knn-peer", action="store_true", help="also run the prdc package at --knn-n (N x N matrices)")
    # internal: one route in this process
    p.add_argument("--route", choices=["cxrbench", "peers", "knn"], help=argparse.SUPPRESS)
    p.add_argument("--knn-impl", default="cxrbench", help=argparse.SUPPRESS)
    p.add_argument("--gen", help=argparse.SUPPRESS)
    p.add_argument("--ref", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.route:
        t = time.perf_counter()
        out = {"cxrbench": route_cxrbench, "peers": route_peers, "knn": route_knn}[a.route](a)
        out.setdefault("wall_s", time.perf_counter() - t)
        out.setdefault("peak_mb", _maxrss_mb())
        print(json.dumps(out))
        return

    if a.knn_only:
        knn_report(a)
        return
    import torch

    work = Path(a.work)
    gen, ref = prepare_images(work, a.n, a.size)
    wdir = prepare_weights(work)
    common = ["--gen", str(gen), "--ref", str(ref), "--weights", str(wdir), "--device", a.device, "--n", str(a.n),
              "--batch-size", str(a.batch_size), "--n-bootstrap", str(a.n_bootstrap), "--work", str(work)]
    if a.num_workers is not None:
        common += ["--num-workers", str(a.num_workers)]
    if a.xrv_resize:
        common += ["--xrv-resize", a.xrv_resize]
    print(f"{a.n} vs {a.n} images at {a.size} px, device {a.device}, {os.cpu_count()} CPUs "
          f"(torch threads {torch.get_num_threads()}), batch {a.batch_size}")
    res = {}
    for name in ("cxrbench", "peers"):
        _log(f"running {name} ...")
        res[name] = _run_route(name, a, common)
    n_img = 2 * a.n
    print(f"\n{'route':10s} {'wall s':>8s} {'img/s':>8s} {'peak RSS MB':>12s}  steps (s)")
    for name, r in res.items():
        steps = ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
        print(f"{name:10s} {r['wall_s']:8.1f} {n_img / r['wall_s']:8.1f} {r['peak_mb']:12.0f}  {steps}")
    print(f"ratio (peer wall / cxrbench wall): {res['peers']['wall_s'] / res['cxrbench']['wall_s']:.2f}x  "
          f"(images per second counts each of the {n_img} images once; both routes run Inception and XRV on all)")
    print(f"ratio of whole processes (interpreter start and imports included): "
          f"{res['peers']['process_s'] / res['cxrbench']['process_s']:.2f}x "
          f"({res['peers']['process_s']:.1f} s / {res['cxrbench']['process_s']:.1f} s)")
    rows = profile_rows(res["cxrbench"])
    print(f"\ncxrbench route, every second of its process ({res['cxrbench']['process_s']:.1f} s):")
    for label, v in rows:
        print(f"  {label:44s} {v:8.1f} s  {100 * v / res['cxrbench']['process_s']:5.1f} %")
    print(f"  {'sum':44s} {sum(v for _, v in rows):8.1f} s")
    print("\nagreement on shared metrics (same weights, same images):")
    for k, v in sorted(res["peers"]["values"].items()):
        c = res["cxrbench"]["values"].get(k)
        print(f"  {k:22s} cxrbench {'-' if c is None else f'{c:.6g}':>12s}   peer {v:.6g}")
    if not a.skip_fd:
        bench_fd()


if __name__ == "__main__":
    main()
