"""Can another readout of the shipped cxr128 network make FID see arrangement (splices, a mirrored chest)?

Version 3's FID puts a left/right splice of two chests at 1.9x the real row and a mirrored chest at 1.6x, below
moderate noise and contrast loss, though its orientation pretext was shown both. This asks whether the
information is in the network but lost by the readout FD uses (the 4 x 4 map pooled to 2 x 2, a linear map to
128-d, whitened). Each readout is fitted on the ``cxr128`` training split only and scored like ``cxrbench
validate`` (the suite's sets, n = 200, seed 0), plus the arrangement-only and degraded sets of
``cxr128_extra_sets.py``:

- ``e``: the shipped readout (the whitened 128-d embedding);
- ``pair`` / ``diff``: the embedding of the image and of its mirror image, side by side, or their difference
  (a chest's left/right asymmetry, which a mirror reverses and a left half mirrored onto the right removes);
- ``m2``: the 2 x 2 pooled map before the linear embedding (512-d, Ledoit-Wolf whitened); ``m4-pca256``: the
  unpooled 4 x 4 map (2,048-d), its top 256 principal directions whitened; ``m4-loc``: FD at each of the 16
  map positions on its own (128-d each, whitened), averaged;
- ``e+probe``: the embedding plus the 7 logits of an arrangement probe, whitened together: a logistic regression
  on the frozen 4 x 4 map that names upright / 90 / 180 / 270 degrees / upside down / mirrored / two chests
  joined along a random line, trained on the training split's images (``baselines.cxr128net.orient``). Its
  accuracy per class on the suite's held-out real images is printed first.

Why a readout cannot be enough, in numbers: a class that a linear readout separates with accuracy p from real
images (equal spreads) sits d' = 2 Phi^-1(p) spreads away along one direction, and adds d'^2 to FD in whitened
units. The probe names a mirrored chest 88% of the time (d' = 2.35, so about +5.5), against a real row of 17.4
and moderate contrast loss at +55 (d' of 7.4: a class told apart 99.99% of the time).

    OMP_NUM_THREADS=2 python tests/benchmarks/cxr128_readouts.py --data ../shared/data [--weights FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cxr128_extra_sets import sets as extra_sets  # sibling scripts: the extra sets and the panel summary
from cxr128_feature_variants import linear_map, panel_figures, pilot_tiers

from baselines.cxr128net import ORIENTATIONS, orient
from cxrbench.engine.validity import SuiteData, load_square
from cxrbench.features.cxr128 import CXR128Extractor
from cxrbench.metrics.functional import fid
from cxrbench.protocols.validity_sets import PROTOCOL_DATA

PROBE_EXTRA = ("hflip", "seam")
ARRANGEMENT = ("left-right mirror (heart on the right)", "top / bottom splice", "left half mirrored onto the right")


def outputs(ext: CXR128Extractor, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The raw embedding of each image and of its mirror image, and the last map pooled to 2 x 2 and unpooled."""
    net, out = ext.net, {"e": [], "eh": [], "m2": [], "m4": []}
    with torch.no_grad():
        for i in range(0, len(x), 100):
            xb = ext.preprocess(x[i:i + 100].clamp(0, 1))
            for key, v in (("", xb), ("h", xb.flip(-1))):
                m = net.blocks(net.stem(v))
                p2 = F.adaptive_avg_pool2d(m, 2).flatten(1)
                out["e" + key].append(net.embed(p2).double().numpy())
                if not key:
                    out["m2"].append(p2.double().numpy())
                    out["m4"].append(m.flatten(1).double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_probe(ext: CXR128Extractor, train: torch.Tensor, real: torch.Tensor, c: float):
    """The arrangement probe (logistic regression on the frozen 4 x 4 map): its logits function and its held-out
    accuracy per class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    names = list(ORIENTATIONS) + list(PROBE_EXTRA)
    torch.manual_seed(0)
    xs, ys = [], []
    for k, name in enumerate(names):
        for _ in range(2 if name == "seam" else 1):  # the one drawn class gets two draws of its random lines
            xs.append(outputs(ext, (orient(train * 2 - 1, torch.full((len(train),), k), PROBE_EXTRA) + 1) / 2)["m4"])
            ys.append(np.full(len(train), k))
    sc = StandardScaler().fit(np.concatenate(xs))
    clf = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(np.concatenate(xs)), np.concatenate(ys))
    torch.manual_seed(1)
    acc = {}
    for k, name in enumerate(names):
        held = (orient(real * 2 - 1, torch.full((len(real),), k), PROBE_EXTRA) + 1) / 2
        acc[name] = float(np.mean(clf.predict(sc.transform(outputs(ext, held)["m4"])) == k))
    return (lambda m: clf.decision_function(sc.transform(m))), acc


def pca_whiten(train: np.ndarray, k: int):
    mu = train.mean(0)
    _, s, vt = np.linalg.svd(train - mu, full_matrices=False)
    w = vt[:k].T / (s[:k] / np.sqrt(len(train) - 1))
    return lambda f: (f - mu) @ w


def readout(name: str, train: dict, probe=None):
    """A function of one set's outputs and the reference's outputs -> FD, fitted on the training split."""
    rows = {"e": lambda d: d["e"], "pair": lambda d: np.concatenate([d["e"], d["eh"]], 1),
            "diff": lambda d: d["e"] - d["eh"], "m2": lambda d: d["m2"], "m4-pca256": lambda d: d["m4"],
            "e+probe": lambda d: np.concatenate([d["e"], probe(d["m4"])], 1)}
    if name == "m4-loc":  # one whitening per map position: (N, 128 channels, 16 positions)
        pos = lambda d, j: d["m4"].reshape(len(d["m4"]), -1, 16)[:, :, j]
        ts = [linear_map("lw", pos(train, j)) for j in range(16)]
        return lambda d, ref: float(np.mean([fid(real=ts[j](pos(ref, j)), fake=ts[j](pos(d, j))).value
                                             for j in range(16)]))
    row = rows[name]
    t = pca_whiten(row(train), 256) if name == "m4-pca256" else linear_map("lw", row(train))
    return lambda d, ref: fid(real=t(row(ref)), fake=t(row(d))).value


def report(name: str, suite: list, values: dict, extra: dict) -> None:
    pf = panel_figures(suite, values, CXR128Extractor.training_corruptions, pilot_tiers())
    sm, fl = pf["summary"], values["real"]
    print(f"{name:<10} violations {len(sm['violations']):3d} of {len(sm['checks'])}, eye {pf['eye_violated']} "
          f"of {pf['eye_pairs']}, blind raters {pf['blind']:+.3f}, leave-one-out {pf['loo']:.2f}, pilot raters "
          f"{pf['pilot']:+.3f}, unseen {sm['unseen_families']['violations']}")
    print(f"{'':<10} x floor: splice (suite) {values['splice:moderate'] / fl:.2f}, "
          + ", ".join(f"{n.split(' (')[0]} {extra[n] / fl:.2f}" for n in ARRANGEMENT)
          + f"; noise {values['noise:moderate'] / fl:.2f}, contrast {values['contrast:moderate'] / fl:.2f}, "
          f"GAN grid {values['gan-artefacts:moderate'] / fl:.2f}, pediatric {values['pediatric'] / fl:.2f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--weights", default="auto", help="a candidate network's cxr128-net.pt (default: the shipped one)")
    p.add_argument("--readouts", nargs="+", default=["e", "pair", "diff", "m2", "m4-pca256", "m4-loc", "e+probe"])
    p.add_argument("--probe-c", type=float, default=0.01, help="the probe's inverse L2 strength (sklearn's C)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ext = CXR128Extractor(weights=args.weights, whiten=False)
    data = SuiteData(args.data, protocol=PROTOCOL_DATA["cxr128"], root=ROOT, progress_dir=ROOT / "leaderboard/progress")
    table, root = data.protocol.splits(data.data_root)
    train_x = load_square([root / q for q in table.loc[table["_split"] == "train", "path"]], data.size)
    train, ref, real = outputs(ext, train_x), outputs(ext, data.reference()), data.real()
    suite, sets = [], {}
    for s, x in data.sets():
        suite.append(s)
        sets[s.name] = outputs(ext, x)
    extra = {name: outputs(ext, x) for _, name, x in extra_sets(real) if name in ARRANGEMENT}
    probe = None
    if "e+probe" in args.readouts:
        probe, acc = fit_probe(ext, train_x, real, args.probe_c)
        print("arrangement probe, held-out accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    for name in args.readouts:
        fd = readout(name, train, probe)
        report(name, suite, {k: fd(d, ref) for k, d in sets.items()}, {k: fd(d, ref) for k, d in extra.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
