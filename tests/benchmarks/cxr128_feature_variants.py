"""Does the shipped cxr128 feature space beat its near neighbours on the validity suite and the eye panel?

The shipped network's raw 128-d embedding is computed once per input variant for every set of the validity suite
(``cxrbench validate``'s sets: n = 200, seed 0), the ``cxr128`` reference split and the training split. Input
variants: ``--preblur SIGMA...``, a Gaussian blur of SIGMA px applied to the 128 px input before the network (0 =
the shipped input). Feature variants, each a linear map fitted on the training split's embeddings of that input:
``lw`` (the shipped form: ``Sigma^-1/2`` of the Ledoit-Wolf covariance; with ``--preblur 0`` it reproduces the
shipped whitening), ``raw`` (no map, version 1), ``alphaA`` (``Sigma^-A/2``: partial whitening, A = 1 is ``lw``) and
``topK`` (only the top K principal directions, whitened). For each pair it prints what ``cxrbench validate``
summarizes: violations, Kendall tau, eye-consensus violations, the mean tau-b with the blind raters, the
leave-one-rater-out count, the mean tau-b with the pilot raters (used by no selection), the class tau-b, violations on families the network never saw, the blob generator's
rank and the splice's distance over the floor; ``--values`` adds every set's FID.

    OMP_NUM_THREADS=1 python tests/benchmarks/cxr128_feature_variants.py --data ../shared/data \
        --preblur 0 0.5 1.0 --variants lw raw alpha0.5 top32
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from baselines.cxr128net import fit_whitening
from cxrbench.data.corruptions import gaussian_blur
from cxrbench.engine.validity import EYE_RATERS, SuiteData, load_square, summarize, tau_b
from cxrbench.features.cxr128 import WHITEN_FILE, CXR128Extractor
from cxrbench.fileio import atomic_write_bytes
from cxrbench.metrics.functional import fid
from cxrbench.protocols.validity_sets import PROTOCOL_DATA


def embeddings(data: SuiteData, sigma: float, weights: str = "auto") -> tuple[dict, list]:
    ext = CXR128Extractor(weights=weights, whiten=False)

    def emb(x: torch.Tensor) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 50):
                xb = ext.preprocess(x[i:i + 50])  # [-1, 1]
                if sigma > 0:
                    xb = gaussian_blur((xb + 1) / 2, sigma) * 2 - 1
                out.append(ext(xb).double().numpy())
        return np.concatenate(out)

    table, root = data.protocol.splits(data.data_root)
    train = [root / p for p in table.loc[table["_split"] == "train", "path"]]
    feats = {"__reference__": emb(data.reference()), "__train__": emb(load_square(train, data.size))}
    sets = []
    for s, x in data.sets():
        feats[s.name] = emb(x)
        sets.append(s)
    return feats, sets


def pilot_tiers() -> list[dict[str, int]]:
    """The pilot raters' tiers by set name (``leaderboard/validity/eye-panel/pilot``: rated, not used by the suite)."""
    folder = ROOT / "leaderboard" / "validity" / "eye-panel" / "pilot"
    key = json.loads((folder / "key.json").read_text())
    return [{key[k]: t for k, t in json.loads(f.read_text())["tiers"].items()} for f in sorted(folder.glob("pilot-*.json"))]


def panel_figures(sets: list, values: dict, seen, pilots: list[dict[str, int]]) -> dict:
    """What ``cxrbench validate`` summarizes of one variant's FIDs, plus the eye panel's figures: the suite summary
    (``summary``), eye-consensus violations and pairs, the blind raters' mean tau-b, the mean leave-one-rater-out
    count and the pilot raters' mean tau-b (used by no selection)."""
    sm = summarize(sets, values, seen_families=seen)
    eye = [c for c in sm["checks"] if c["rule"] == "eye (panel consensus)"]
    gens = sorted(pilots[0])
    return {"summary": sm, "eye_violated": sum(not c["ok"] for c in eye), "eye_pairs": len(eye),
            "blind": np.mean([sm["kendall_tau_raters"][r] for r in EYE_RATERS if r.startswith("blind")]),
            "loo": np.mean([r["metric_wrong"] for r in sm["eye_leave_one_out"].values()]),
            "pilot": np.mean([tau_b([p[g] for g in gens], [values[f"gen:{g}"] for g in gens]) for p in pilots])}


def write_whitening(train: np.ndarray, path: Path) -> None:
    w = fit_whitening(train)
    meta = {"method": "Ledoit-Wolf covariance of the cxr128 training split's raw embeddings of this candidate",
            "shrinkage": float(w["shrinkage"])}
    buf = io.BytesIO()
    np.savez(buf, mean=w["mean"], whiten=w["whiten"], meta=np.array(json.dumps(meta, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path} (shrinkage {float(w['shrinkage']):.4f})")


def linear_map(name: str, train: np.ndarray):
    from sklearn.covariance import LedoitWolf

    if name == "raw":
        return lambda f: f
    if name == "lw":  # the shipped whitening's own fit (baselines.cxr128net), not a second copy of it
        w = fit_whitening(train)
        return lambda f: (f - w["mean"]) @ w["whiten"]
    ev, u = np.linalg.eigh(LedoitWolf().fit(train).covariance_)
    ev, u = ev[::-1], u[:, ::-1]
    mu = train.mean(0)
    if name.startswith("alpha"):
        a = float(name[5:])
        w = (u * ev ** (-a / 2)) @ u.T
    elif name.startswith("top"):
        k = int(name[3:])
        w = u[:, :k] / np.sqrt(ev[:k])
    else:
        raise SystemExit(f"unknown variant {name}: lw, raw, alphaA or topK")
    return lambda f: (f - mu) @ w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--preblur", type=float, nargs="+", default=[0.0])
    p.add_argument("--variants", nargs="+", default=["lw"])
    p.add_argument("--values", action="store_true", help="print every set's FID too")
    p.add_argument("--weights", default="auto", help="a candidate network's cxr128-net.pt (default: the shipped one)")
    p.add_argument("--write-whitening", action="store_true",
                   help="with --weights: write the candidate's Ledoit-Wolf whitening (fitted on the training split's "
                        "embeddings, no pre-blur) beside it as cxr128-whiten.npz, which `cxrbench validate "
                        "--extractor cxr128 --weights DIR` then applies")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = SuiteData(args.data, protocol=PROTOCOL_DATA["cxr128"], root=ROOT, progress_dir=ROOT / "leaderboard/progress")
    seen = CXR128Extractor.training_corruptions
    pilots = pilot_tiers()
    for sigma in args.preblur:
        feats, sets = embeddings(data, sigma, args.weights)
        if args.write_whitening and sigma == 0 and args.weights != "auto":
            write_whitening(feats["__train__"], Path(args.weights).parent / WHITEN_FILE)
        for v in args.variants:
            t = linear_map(v, feats["__train__"])
            ref = t(feats["__reference__"])
            values = {s.name: fid(real=ref, fake=t(feats[s.name])).value for s in sets}
            pf = panel_figures(sets, values, seen, pilots)
            sm = pf["summary"]
            print(f"preblur {sigma:<4} {v:<9} violations {len(sm['violations']):3d} of {len(sm['checks'])}, tau "
                  f"{sm['kendall_tau']:+.3f}; eye {pf['eye_violated']} of {pf['eye_pairs']}, blind raters "
                  f"{pf['blind']:+.3f}, leave-one-out {pf['loo']:.2f}, pilot raters {pf['pilot']:+.3f}; classes "
                  f"{sm['kendall_tau_classes']:+.3f}; unseen "
                  f"{sm['unseen_families']['violations']}; blob generator "
                  f"{sm['blob_ranks']['gen:ldm-15min']['rank_generators']} of "
                  f"{sm['blob_ranks']['gen:ldm-15min']['of_generators']}; splice "
                  f"{values['splice:moderate'] / values['real']:.2f}x the floor", flush=True)
            if args.values:
                for name in sorted(values, key=values.get):
                    print(f"    {values[name]:9.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
