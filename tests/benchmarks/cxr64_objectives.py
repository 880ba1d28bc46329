"""Which training objective makes the better cxr64 network? Compares trained runs side by side.

For each run folder (written by ``cxrbench train cxr64-net`` with a different ``objective``): linear-probe
AUROC (Kermany ValData Pneumonia vs No Finding; held-out NIH abnormal vs normal, patient folds), the
label head's held-out AUROC per label, and how far FID separates a shifted population (pediatric Kermany)
and a blurred copy from the real-vs-real value (held-out NIH vs reference), in units of that value.

    python tests/benchmarks/cxr64_objectives.py runs/cxr64-supervised runs/cxr64-contrastive runs/cxr64-both
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from baselines.cxr64net import run_network
from cxrbench.data.labels import LABELS
from cxrbench.features.cxr64 import CXR64Extractor
from cxrbench.metrics.fid import fid_from_features
from cxrbench.protocols.cxr64_splits import image_splits
from tests.benchmarks.cxr64_validity import blur, feats, images_of, probe_auroc


def main(argv=None) -> int:
    from sklearn.metrics import roc_auc_score

    runs = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    data = ROOT.parent / "shared" / "data"
    nih = pd.read_csv(data / "nih1000_64px" / "labels.csv")
    nih["s"] = image_splits(nih)
    ev = nih[nih["s"].isin(["reference", "heldout"])]
    x_ev = images_of(data / "nih1000_64px", ev["path"])
    is_ref = (ev["s"] == "reference").to_numpy()
    kdir = data / "kermany_pediatric_covid_skytells"
    k = pd.read_csv(kdir / "labels.csv")
    k = k[k["split"] == "ValData"]
    x_k = images_of(kdir, k["path"])
    rows = []
    for run in runs:
        net = run_network(run)
        ext = CXR64Extractor(network=net)
        f_ev, f_k = feats(ext, x_ev), feats(ext, x_k)
        fr, fh = f_ev[is_ref], f_ev[~is_ref][:200]
        floor = fid_from_features(fh, fr)
        with torch.no_grad():
            logits = net.head(torch.from_numpy(f_ev[is_ref]).float()).numpy()
        aucs = {}
        for j, name in enumerate(LABELS):
            y = ev[name].to_numpy()[is_ref]
            if 15 <= y.sum() <= len(y) - 15:
                aucs[name] = roc_auc_score(y, logits[:, j])
        rows.append({
            "run": run.name,
            "probe Kermany": probe_auroc(f_k, k["Pneumonia"].to_numpy()),
            "probe NIH": probe_auroc(f_ev, 1 - ev["No Finding"].to_numpy(), ev["patient_id"].to_numpy()),
            "fid floor": floor,
            "Kermany/floor": fid_from_features(f_k[:200], fr) / floor,
            "blur1/floor": fid_from_features(feats(ext, blur(x_ev[~is_ref][:200], 1.0)), fr) / floor,
            "head AUROC": " ".join(f"{n[:5]}={v:.2f}" for n, v in aucs.items()),
        })
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
