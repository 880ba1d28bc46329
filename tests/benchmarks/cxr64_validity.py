"""Does the cxr64 protocol measure what it should? Prints the tables quoted in the README.

1. Linear probes (5-fold cross-validated AUROC of a logistic regression on frozen features):
   Pneumonia vs No Finding on Kermany ValData (never trained on) and abnormal vs normal on the held-out NIH
   images (reference + heldout splits, folds grouped by patient), for the shipped network, the same
   architecture with random weights, and raw pixels.
2. fid_cxr64 of the held-out NIH split (real images the network never saw) against the shipped reference
   under growing blur, noise, JPEG compression and contrast loss: each ladder should rise monotonically.
3. Partial mode collapse: a growing fraction of the held-out images replaced by copies of 5 of them; recall
   and coverage should fall.
4. A different population: 200 pediatric Kermany images vs the adult NIH reference, against the
   real-vs-real floor at the same N.

    python tests/benchmarks/cxr64_validity.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.data.io import load_image
from cxrbench.features.cxr64 import CXR64Extractor, to_cxr64
from cxrbench.metrics.fid import fid_from_features
from cxrbench.metrics.prdc import prdc_result
from cxrbench.protocols.cxr64 import SAMPLE_COUNT, load_features
from cxrbench.protocols.cxr64_splits import image_splits


def images_of(folder: Path, paths) -> torch.Tensor:
    return torch.stack([to_cxr64(torch.from_numpy(load_image(folder / p))[None, None])[0] for p in paths])


def feats(ext, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([ext.extract(x[i : i + 256]) for i in range(0, len(x), 256)]).numpy().astype(np.float64)


def probe_auroc(f: np.ndarray, y: np.ndarray, groups=None) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = (GroupKFold(5).split(f, y, groups) if groups is not None
             else StratifiedKFold(5, shuffle=True, random_state=0).split(f, y))
    score = np.zeros(len(y))
    for tr, te in folds:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(f[tr], y[tr])
        score[te] = clf.predict_proba(f[te])[:, 1]
    return float(roc_auc_score(y, score))


def blur(x, s):
    if s == 0:
        return x
    r = int(3 * s + 0.5)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * s * s))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(2, 3))


def noise(x, s):
    return (x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


def jpeg(x, q):
    if q >= 100:
        return x
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray((im[0].numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=int(q))
        out.append(torch.from_numpy(np.asarray(Image.open(buf), dtype=np.float32) / 255)[None])
    return torch.stack(out)


def contrast(x, c):
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + (x - m) * c).clamp(0, 1)


LADDERS = {
    "blur sigma px": (blur, [0, 0.5, 1, 1.5, 2, 3]),
    "noise std": (noise, [0, 0.01, 0.02, 0.05, 0.1, 0.2]),
    "JPEG quality": (jpeg, [100, 75, 50, 30, 15, 5]),
    "contrast factor": (contrast, [1, 0.8, 0.6, 0.4, 0.25, 0.1]),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args(argv)
    data = Path(args.data)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    shipped = CXR64Extractor()
    rand = CXR64Extractor(weights="random")
    ref = load_features("reference")
    fr = ref.features["cxr64"].astype(np.float64)

    nih = pd.read_csv(data / "nih1000_64px" / "labels.csv")
    nih["s"] = image_splits(nih)
    held = nih[nih["s"] == "heldout"].head(SAMPLE_COUNT)
    x_held = images_of(data / "nih1000_64px", held["path"])
    kdir = data / "kermany_pediatric_covid_skytells"
    kval = pd.read_csv(kdir / "labels.csv")
    kval = kval[kval["split"] == "ValData"]
    x_k = images_of(kdir, kval["path"])

    print("1. linear-probe AUROC (5-fold CV, logistic regression on frozen features)")
    ev = nih[nih["s"].isin(["reference", "heldout"])]
    x_ev = images_of(data / "nih1000_64px", ev["path"])
    tasks = {
        f"Kermany ValData Pneumonia vs No Finding (n={len(kval)})": (x_k, kval["Pneumonia"].to_numpy(), None),
        f"held-out NIH abnormal vs normal (n={len(ev)}, patient folds)":
            (x_ev, 1 - ev["No Finding"].to_numpy(), ev["patient_id"].to_numpy()),
    }
    print(f"   {'task':58s} {'cxr64':>7s} {'random':>7s} {'pixels':>7s}")
    for name, (x, y, g) in tasks.items():
        row = [probe_auroc(feats(e, x), y, g) for e in (shipped, rand)]
        row.append(probe_auroc(x.flatten(1).numpy(), y, g))
        print(f"   {name:58s} " + " ".join(f"{v:7.3f}" for v in row))

    f_held = feats(shipped, x_held)
    floor = fid_from_features(f_held, fr)
    print(f"\n2. fid_cxr64 of {len(held)} held-out NIH images vs the shipped reference ({len(fr)}); "
          f"undistorted: {floor:.3f}")
    for name, (fn, levels) in LADDERS.items():
        vals = [fid_from_features(feats(shipped, fn(x_held, lv)), fr) for lv in levels]
        mono = all(b > a for a, b in zip(vals, vals[1:]))
        print(f"   {name:16s} " + "  ".join(f"{lv:>5g}: {v:8.3f}" for lv, v in zip(levels, vals))
              + f"   monotone: {'yes' if mono else 'NO'}")

    print("\n3. partial mode collapse: a fraction of the held-out images replaced by copies of 5 of them")
    print(f"   {'fraction':>8s} {'fid':>8s} {'precision':>9s} {'recall':>7s} {'density':>8s} {'coverage':>8s}")
    n = len(f_held)
    rng = np.random.default_rng(0)
    for frac in (0, 0.25, 0.5, 0.75, 0.9):
        f = f_held.copy()
        idx = rng.permutation(n)[: int(frac * n)]
        f[idx] = f_held[rng.choice(5, size=len(idx))]
        r = prdc_result(fr, f, k=5).as_dict()
        print(f"   {frac:8.2f} {fid_from_features(f, fr):8.3f} {r['precision']:9.3f} {r['recall']:7.3f} "
              f"{r['density']:8.3f} {r['coverage']:8.3f}")

    print("\n4. population shift (same N as the held-out row)")
    fk = feats(shipped, x_k[torch.randperm(len(x_k), generator=torch.Generator().manual_seed(0))[:n]])
    print(f"   held-out adult NIH vs reference:     fid_cxr64 {floor:8.3f}")
    print(f"   pediatric Kermany vs NIH reference:  fid_cxr64 {fid_from_features(fk, fr):8.3f}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
