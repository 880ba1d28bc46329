"""MoCo-CXR measurement for issue 4 (run by hand, CPU minutes; prints the figures, writes summary.json).

On the Kermany pediatric set (``../shared/data/kermany_pediatric_covid_skytells``, 64 px):

1. Training lowers the contrastive loss: InfoNCE of two fixed random views of 256 held-out images (in-batch
   negatives), for the randomly initialised and the trained encoder; and the training curve, first vs last
   20 steps.
2. Linear probe: logistic regression (standardised features, C by 5-fold CV on the training split) on the
   pooled backbone features of the ``NonAugmentedTrain`` images, Pneumonia vs No Finding, AUROC on the
   ``ValData`` images. Trained models: plain MoCo (lambda = 0), + clustering loss with label groups, +
   clustering loss with learned k-means. Baseline: the same architecture randomly initialised (several
   seeds; BatchNorm statistics from 256 training images so the features are well scaled).
3. RRS on real images: reference = one half of ValData; samples = the other half, as is, blurred, or
   noised; unpaired (nearest reference image) and paired with each sample's undistorted source; FID in the
   same space for comparison; the real-vs-real floor. Paired: a mild geometric + photometric change of an
   image against the image itself vs against another image.

    CXRBENCH_SHARED_DATA=../shared/data python tests/benchmarks/moco_probe.py --out /tmp/moco_probe --seeds 2
    python tests/benchmarks/moco_probe.py --runs plain --steps 600 --width 32 --out /tmp/moco_probe_big

The first line is the issue-4 measurement: 3 models x 2 seeds x 300 steps at 64 px, about 12 minutes of wall
clock on 2 shared CPU cores (~110 s per training run). Training runs are resumable: rerunning with the same
--out continues (or reuses) them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from baselines.moco import Config, MoCoCXR, augment, to_square
from cxrbench.config import EvalConfig
from cxrbench.data import ImageFolder
from cxrbench.features.base import bn_recalibrate
from cxrbench.features.moco import MoCoExtractor
from cxrbench.metrics.base import EvalContext, FeatureSet
from cxrbench.metrics.fid import fid_from_features
from cxrbench.metrics.rrs import RRS
from cxrbench.seeding import seed_everything, torch_generator
from cxrbench.training import TrainOptions

DEFAULT_DATA = Path(os.environ.get("CXRBENCH_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "kermany_pediatric_covid_skytells"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class MemorySet(torch.utils.data.Dataset):
    """Decoded, resized images and their label vectors, so that training does not decode every epoch."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def load_split(data: Path, split: str, size: int):
    ds = ImageFolder(data, split=split)
    imgs = torch.stack([to_square(ds[i][0][None], size)[0] for i in range(len(ds))])
    lab = ds.labels
    train_set = MemorySet(imgs, torch.stack([ds[i][1] for i in range(len(ds))]))
    return train_set, imgs, lab["Pneumonia"].to_numpy(float), lab["No Finding"].to_numpy(float)


@torch.no_grad()
def embed(model: MoCoCXR, x: torch.Tensor) -> np.ndarray:
    return torch.cat([model.embed(x[i : i + 256]) for i in range(0, len(x), 256)]).double().numpy()


def probe_auroc(f_tr, y_tr, f_te, y_te) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-3, 1, 5), cv=5, scoring="roc_auc",
                                                               max_iter=5000))
    clf.fit(f_tr, y_tr)
    return float(roc_auc_score(y_te, clf.decision_function(f_te))), float(clf[-1].C_[0])


def rrs(gen_feats, ref_feats, ref_ids, sources=None, seed=0):
    import pandas as pd

    gen_ids = [f"gen_{i}" for i in range(len(gen_feats))]
    manifest = None if sources is None else pd.DataFrame({"source": sources})
    ctx = EvalContext(
        gen=FeatureSet("samples", gen_ids, gen_ids, {"moco": gen_feats.astype(np.float32)}, manifest=manifest),
        ref=FeatureSet("reference", ref_ids, ref_ids, {"moco": ref_feats.astype(np.float32)}),
        train=None, extractors={"moco": {"kind": "embedding"}}, config=EvalConfig(n_bootstrap=0, seed=seed))
    return RRS().compute(ctx)["rrs_moco"]


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=Path("/tmp/moco_probe"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--lambda-kmeans", type=float, default=0.5, help="lambda of the clustering runs")
    p.add_argument("--random-seeds", type=int, default=3, help="random-init baselines")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per trained model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="plain,labels,kmeans", help="which trained models (comma-separated)")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    if not (args.data / "labels.csv").is_file():
        log(f"{args.data}: not found (set CXRBENCH_SHARED_DATA or --data)")
        return 2
    torch.set_num_threads(args.threads)
    t0 = time.time()
    base = Config(image_size=args.image_size, width=args.width, batch_size=64, lr=args.lr, schedule_steps=args.steps,
                  queue_size=1024, momentum=0.99, num_clusters=8)
    runs = {
        "plain": dataclasses.replace(base, lambda_kmeans=0.0),
        "labels": dataclasses.replace(base, lambda_kmeans=args.lambda_kmeans, use_labels=True),
        "kmeans": dataclasses.replace(base, lambda_kmeans=args.lambda_kmeans, use_labels=False),
    }
    wanted = args.runs.split(",")
    runs = {f"{k}_s{seed}": (v, seed) for k, v in runs.items() if k in wanted for seed in range(args.seeds)}

    ds_tr, x_tr, pn_tr, nf_tr = load_split(args.data, "NonAugmentedTrain", args.image_size)
    _, x_te, pn_te, nf_te = load_split(args.data, "ValData", args.image_size)
    keep_tr, keep_te = (pn_tr + nf_tr) == 1, (pn_te + nf_te) == 1  # Pneumonia xor No Finding
    log(f"data: {len(x_tr)} train, {len(x_te)} val images; probe on {keep_tr.sum()} / {keep_te.sum()}")
    held = x_te[torch.randperm(len(x_te), generator=torch_generator(0))[:256]]
    summary: dict = {"config": dataclasses.asdict(base), "runs": {}, "random": []}

    def evaluate_model(model):
        f_tr, f_te = embed(model, x_tr), embed(model, x_te)
        auc, c = probe_auroc(f_tr[keep_tr], pn_tr[keep_tr], f_te[keep_te], pn_te[keep_te])
        return {"probe_auroc": auc, "probe_C": c, "eval_infonce": model.eval_contrastive_loss(held, seed=1)}

    for seed in range(args.random_seeds):
        seed_everything(seed)
        rnd = MoCoCXR(base)
        bn_recalibrate(rnd.encoder_q.backbone, rnd.preprocess(x_tr[torch.randperm(len(x_tr))[:256]]))
        summary["random"].append(evaluate_model(rnd))
        log(f"random seed {seed}: {summary['random'][-1]}")

    models = {}
    for name, (cfg, seed) in runs.items():
        t = time.time()
        options = TrainOptions(steps=args.steps, seed=seed, checkpoint_every=100, log_every=1)
        model = MoCoCXR.train(ds_tr, cfg, args.out / name, options=options, device="cpu")
        with open(args.out / name / "losses.csv") as f:
            hist = list(csv.DictReader(f))
        r = evaluate_model(model)
        # the queue starts as random vectors (an easy loss): compare the 40 steps after it is full with the last 40
        full = cfg.queue_size // cfg.batch_size
        loss = [float(h["loss_moco"]) for h in hist]
        r.update(train_infonce_after_fill=float(np.mean(loss[full : full + 40])),
                 train_infonce_last40=float(np.mean(loss[-40:])), train_s=round(time.time() - t, 1))
        summary["runs"][name] = r
        models[name] = model
        log(f"{name}: {r}")

    # RRS on real images, in the plain model's space (and a random backbone's, for contrast)
    perm = torch.randperm(len(x_te), generator=torch_generator(1))
    ref_idx, gen_idx = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    ref_ids = [f"val_{int(i)}" for i in ref_idx]
    g = torch_generator(2)
    noise = torch.randn(x_te[gen_idx].shape, generator=g)
    variants = {"real (other half)": x_te[gen_idx]}
    for s in (0.5, 1.0, 2.0):
        variants[f"blur sigma={s}px"] = blur(x_te[gen_idx], s)
    for s in (0.02, 0.05, 0.1):
        variants[f"noise sigma={s}"] = (x_te[gen_idx] + s * noise).clamp(0, 1)
    spaces = {}
    if "plain_s0" in models:
        spaces["moco (plain, trained)"] = MoCoExtractor(model=models["plain_s0"])
    seed_everything(0)
    rnd = MoCoCXR(base)
    bn_recalibrate(rnd.encoder_q.backbone, rnd.preprocess(x_tr[:256]))
    spaces["random backbone"] = MoCoExtractor(model=rnd)
    summary["rrs"] = {}
    for sname, ext in spaces.items():
        def feats(x, ext=ext):
            return torch.cat([ext.extract(x[i : i + 256]) for i in range(0, len(x), 256)]).double().numpy()

        f_ref, f_src = feats(x_te[ref_idx]), feats(x_te[gen_idx])
        src_ids = [f"src_{i}" for i in range(len(gen_idx))]
        out = {}
        for vname, xv in variants.items():
            f = feats(xv)
            v = rrs(f, f_ref, ref_ids)
            out[f"nearest: {vname}"] = v.value
            if vname != "real (other half)":
                out[f"paired with source: {vname}"] = rrs(f, f_src, src_ids, sources=src_ids).value
            out[f"fid_moco: {vname}"] = fid_from_features(f, f_ref)
        out["real_vs_real (leave-one-out)"] = v.real_vs_real
        out["real_vs_real_halves"] = v.extra["real_vs_real_halves"]
        # paired: a mild geometric + photometric change of an image vs a different image
        mild = augment(x_te[ref_idx], dataclasses.replace(base, crop_scale=(0.9, 1.0), rotation_deg=3.0,
                                                           translate=0.02, brightness=0.05, contrast=0.05), g)
        f_mild = feats(mild)
        out["paired: mild change of itself"] = rrs(f_mild, f_ref, ref_ids, sources=ref_ids).value
        out["paired: a different image"] = rrs(f_mild, f_ref, ref_ids, sources=ref_ids[1:] + ref_ids[:1]).value
        summary["rrs"][sname] = out
    summary["wall_s"] = round(time.time() - t0, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    rs = [r["probe_auroc"] for r in summary["random"]]
    print(f"linear probe AUROC, Pneumonia vs No Finding (train {keep_tr.sum()} / held-out {keep_te.sum()} images, "
          f"{args.image_size} px, resnet18 width {args.width}, {args.steps} steps):")
    print(f"  random init ({len(rs)} seeds)        {np.mean(rs):.4f}  (min {min(rs):.4f}, max {max(rs):.4f})")
    for name, r in summary["runs"].items():
        print(f"  trained: {name:<22} {r['probe_auroc']:.4f}  (C={r['probe_C']:g})")
    print("contrastive loss (InfoNCE, 256 held-out images, two fixed views, in-batch negatives; log 256 = 5.545):")
    print(f"  random init ({len(rs)} seeds)        {np.mean([r['eval_infonce'] for r in summary['random']]):.3f}")
    for name, r in summary["runs"].items():
        print(f"  trained: {name:<22} {r['eval_infonce']:.3f}   training InfoNCE (queue {base.queue_size}): "
              f"{r['train_infonce_after_fill']:.3f} (40 steps after the queue fills) -> "
              f"{r['train_infonce_last40']:.3f} (last 40), {r['train_s']} s")
    for sname, out in summary["rrs"].items():
        print(f"RRS (1 - cos), {sname}:")
        for k, v in out.items():
            print(f"  {k:<42} {v:.4f}")
    print(f"wall time {summary['wall_s']} s; summary in {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
