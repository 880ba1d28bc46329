"""Training the ``cxr64`` protocol's feature network (``cxrbench train cxr64-net``), and building its files.

The network (``cxrbench.features.cxr64.CXR64Net``) learns from the public radiographs in ``../shared/data``
and never from the protocol's reference or held-out NIH images:

- NIH thumbnails of the protocol's ``train`` split (14 findings + No Finding),
- Kermany pediatric set, ``NonAugmentedTrain`` only (its ``ValData`` is kept for the linear-probe check),
- the adult COVID-19 / pneumonia sets (frontal views): Pneumonia and No Finding.

Objectives (``Config.objective``), compared by measurement in the protocol's note:
- ``supervised``: multi-label BCE on the known labels (unknown ones masked);
- ``contrastive``: InfoNCE between two X-ray augmentations of each image with in-batch negatives (SimCLR
  form: on ~3,600 images a MoCo queue of thousands would hold a query's own earlier views as negatives);
- ``both``: the sum;
- ``quality`` (added to any of them with ``lambda_quality > 0``): a second view of each image is degraded by
  a random type (Gaussian blur, noise, contrast loss, JPEG-like block-DCT quantisation, or none) at a random
  strength, and a small head predicts the type and the strength from the embedding. A label classifier
  alone learns to ignore blur (measured: FID of blurred real images was not monotone in the blur); a
  fidelity metric must see it, so the embedding is taught to place quality along a direction.

``python -m baselines.cxr64net build --run runs/cxr64 --data ../shared/data`` then writes the package data:
the network state dict, the Platt-calibrated label head with the held-out AUROC that chose its labels, and
the features of the reference, training and held-out splits (``cxrbench/protocols/cxr64_data``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.data.io import load_image
from cxrbench.data.labels import LABELS
from cxrbench.errors import DataError
from cxrbench.features.cxr64 import CXR64Net, to_cxr64
from cxrbench.generator import PretrainedMixin
from cxrbench.protocols.cxr64_splits import image_splits

from .moco import augment
from .trainer import Batch, Trainable, set_cosine_lr

NIH = "nih1000_64px"
KERMANY = "kermany_pediatric_covid_skytells"
ADULT_SETS = ("covid_chestxray_ieee8023_2020-03_fork", "actualmed_covid_cxr", "figure1_covid_cxr")


@dataclass
class Config:
    image_size: int = 64
    objective: str = "supervised"  # supervised | contrastive | both
    lambda_quality: float = 0.0  # weight of the degradation type + strength head (0: off)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    schedule_steps: int = 0  # cosine decay length in steps (0: constant lr)
    temperature: float = 0.2
    lambda_contrastive: float = 1.0
    # augmentations (as baselines.moco's, milder: the labels must survive them)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    rotation_deg: float = 10.0
    translate: float = 0.06
    brightness: float = 0.2
    contrast: float = 0.2
    hflip_prob: float = 0.0

    def __post_init__(self):
        self.crop_scale = tuple(float(s) for s in self.crop_scale)
        if self.objective not in ("supervised", "contrastive", "both"):
            raise ValueError(f"objective {self.objective!r}: expected supervised, contrastive or both")


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _decode(folder: Path, paths) -> torch.Tensor:
    out = []
    for p in paths:
        img = torch.from_numpy(load_image(folder / p))[None, None]
        out.append(to_cxr64(img)[0])
    return torch.stack(out)


def _label_rows(table: pd.DataFrame) -> torch.Tensor:
    m = torch.full((len(table), len(LABELS)), float("nan"))
    for j, name in enumerate(LABELS):
        if name in table.columns:
            m[:, j] = torch.tensor(pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64))
    return m


def nih_table(data_root: Path) -> pd.DataFrame:
    t = pd.read_csv(data_root / NIH / "labels.csv")
    t["cxr64_split"] = image_splits(t)
    return t


def training_tables(data_root: Path) -> list[tuple[Path, pd.DataFrame]]:
    """The (folder, rows) the network trains on; reference and held-out NIH images are never among them."""
    data_root = Path(data_root)
    missing = [n for n in (NIH, KERMANY, *ADULT_SETS) if not (data_root / n / "labels.csv").is_file()]
    if missing:
        raise DataError(f"{data_root}: cxr64-net trains on the shared data root's {', '.join(missing)} folders "
                        "(each with labels.csv); pass --data the folder that holds them (e.g. ../shared/data)")
    out = []
    nih = nih_table(data_root)
    out.append((data_root / NIH, nih[nih["cxr64_split"] == "train"]))
    k = pd.read_csv(data_root / KERMANY / "labels.csv")
    out.append((data_root / KERMANY, k[k["split"] == "NonAugmentedTrain"]))
    for name in ADULT_SETS:
        t = pd.read_csv(data_root / name / "labels.csv")
        if "view" in t.columns:
            t = t[t["view"].astype(str) != "L"]
        out.append((data_root / name, t))
    return out


DEGRADATIONS = ("none", "blur", "noise", "contrast", "jpeg")


def _gauss_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur, ``sigma`` (N,) in pixels (0: unchanged); separable, reflect padding."""
    r = 9
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 2r+1)
    n = x.shape[0]
    xp = F.pad(x, (r, r, r, r), mode="reflect").transpose(0, 1)  # (1, N, H+2r, W+2r): images as channels
    y = F.conv2d(xp, k.view(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, k.view(n, 1, -1, 1), groups=n).transpose(0, 1)
    return torch.where(sigma.view(-1, 1, 1, 1) > 1e-3, y, x)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * i[None] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m


def _jpeg_like(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Block-DCT quantisation (what JPEG does to luminance), ``step`` (N,) per image; 64 px is 8 x 8 blocks."""
    d = _dct_matrix().to(x)
    n, _, h, w = x.shape
    b = x.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (N, h/8, w/8, 8, 8)
    c = d @ b @ d.T
    q = step.view(n, 1, 1, 1, 1) * (1 + torch.arange(8, device=x.device)[:, None] + torch.arange(8, device=x.device))
    c = torch.round(c / q) * q  # higher frequencies quantised more coarsely, as JPEG's tables do
    y = (d.T @ c @ d).permute(0, 1, 3, 2, 4).reshape(n, 1, h, w)
    return y.clamp(0, 1)


def degrade(x: torch.Tensor, kind: torch.Tensor, strength: torch.Tensor, g=None) -> torch.Tensor:
    """Each image degraded by its ``kind`` (index into DEGRADATIONS) at ``strength`` in [0, 1]."""
    s = strength.view(-1, 1, 1, 1)
    out = x
    out = torch.where((kind == 1).view(-1, 1, 1, 1), _gauss_blur(x, 2.5 * strength * (kind == 1)), out)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    out = torch.where((kind == 2).view(-1, 1, 1, 1), (x + 0.15 * s * noise).clamp(0, 1), out)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    out = torch.where((kind == 3).view(-1, 1, 1, 1), m + (x - m) * (1 - 0.8 * s), out)
    out = torch.where((kind == 4).view(-1, 1, 1, 1), _jpeg_like(x, 0.005 + 0.06 * strength), out)
    return out


class CXR64NetTrainer(Trainable, PretrainedMixin, nn.Module):
    """The network plus a projection head for the contrastive term (dropped when the weights are built)."""

    name = "cxr64-net"
    Config = Config

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.net = CXR64Net()
        d = self.net.embed.out_features
        self.proj = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 64))
        self.quality = nn.Linear(d, 1 + len(DEGRADATIONS))  # strength, then type logits

    @classmethod
    def training_dataset(cls, data_root, config: Config, *, split: str | None = None) -> _Images:
        """Every training image decoded once to the protocol's 64 px contract (a few seconds per thousand)."""
        images, labels, names = [], [], []
        for folder, table in training_tables(Path(data_root)):
            images.append(_decode(folder, table["path"]))
            labels.append(_label_rows(table))
            names += [f"{folder.name}/{p}" for p in table["path"]]
        return _Images(torch.cat(images), torch.cat(labels), names)

    def configure_optimizers(self):
        c = self.config
        return {"adamw": torch.optim.AdamW(self.parameters(), lr=c.lr, weight_decay=c.weight_decay)}

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        v1, v2 = augment(images, c), augment(images, c)
        n = images.shape[0]
        if c.lambda_quality > 0:  # the second view degraded: type uniform over DEGRADATIONS, strength U(0.1, 1)
            kind = torch.randint(0, len(DEGRADATIONS), (n,))
            strength = torch.where(kind == 0, 0.0, 0.1 + 0.9 * torch.rand(n))
            v2 = degrade(v2, kind.to(images.device), strength.to(images.device))
        f = self.net.features(torch.cat([v1, v2]) * 2 - 1)
        out = {}
        total = torch.zeros((), device=images.device)
        if c.lambda_quality > 0:
            q = self.quality(f)
            kinds = torch.cat([torch.zeros(n, dtype=torch.long), kind]).to(images.device)
            strengths = torch.cat([torch.zeros(n), strength]).to(images.device)
            out["quality"] = F.mse_loss(q[:, 0], strengths) + F.cross_entropy(q[:, 1:], kinds)
            total = total + c.lambda_quality * out["quality"]
        if c.objective in ("supervised", "both"):
            # with the quality head on, the second view may be degraded beyond reading: labels on the first only
            logits = self.net.head(f[:n] if c.lambda_quality > 0 else f)
            y = labels if c.lambda_quality > 0 else torch.cat([labels, labels])
            known = ~y.isnan()
            bce = F.binary_cross_entropy_with_logits(logits[known], y[known]) if known.any() else logits.sum() * 0
            out["bce"] = bce
            total = total + bce
        if c.objective in ("contrastive", "both"):
            z = F.normalize(self.proj(f), dim=1)
            n = images.shape[0]
            sim = z @ z.T / c.temperature
            sim.fill_diagonal_(float("-inf"))
            target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(images.device)
            nce = F.cross_entropy(sim, target)
            out["nce"] = nce
            total = total + c.lambda_contrastive * nce
        out["loss"] = total
        return out

    def training_step(self, batch: Batch, optimizers, step: int) -> dict[str, float]:
        c, opt = self.config, optimizers["adamw"]
        lr = set_cosine_lr(opt, c.lr, step, c.schedule_steps)
        out = self.losses(batch.images, batch.labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return {"lr": lr, **{k: float(v.detach()) for k, v in out.items()}}


# ---------------------------------------------------------------------------------------------------------
# building the protocol's package data from a trained run


def run_network(run_dir: Path) -> CXR64Net:
    """The feature network of a trained run (its ``net.*`` weights; the training heads are left behind)."""
    state = torch.load(Path(run_dir) / "model.pt", map_location="cpu", weights_only=True)
    net = CXR64Net()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()


def nih_features(data_root: Path, weights_file: Path) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """Features of every NIH thumbnail through the harness's own extraction path (same kernels, same order)."""
    from cxrbench.config import EvalConfig
    from cxrbench.data.sources import open_source
    from cxrbench.engine.extraction import build_extractors, extract_features, extractor_spec
    from cxrbench.features.cache import FeatureCache

    folder = Path(data_root) / NIH
    config = EvalConfig(extractors=("cxr64",), weights=str(weights_file), progress=False, num_workers=0)
    ext = build_extractors(("cxr64",), config, "cpu")
    src = open_source(folder, role="reference")
    feats, bad = extract_features(src, ext, config, FeatureCache(None, enabled=False), "cpu", desc="nih")
    if bad:
        raise RuntimeError(f"undecodable NIH images: {bad[:3]}")
    table = pd.read_csv(folder / "labels.csv").set_index("path").loc[src.ids].reset_index()
    table["cxr64_split"] = image_splits(table)
    return table, feats["cxr64"], list(src.hashes), extractor_spec(ext["cxr64"], config)


def calibrate_head(net: CXR64Net, feats: np.ndarray, table: pd.DataFrame, *, min_auroc: float = 0.65,
                   min_pos: int = 15) -> dict:
    """Platt scaling of each label's logit on the held-out split; AUROC on the reference split chooses labels.

    A label is kept when its AUROC is at least ``min_auroc`` on both splits, with at least ``min_pos``
    positives (and negatives) in each: with fewer, neither the calibration nor the AUROC means much, and a
    label the head cannot rank on the calibration split gets a flat (useless) Platt slope.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    with torch.no_grad():
        logits = net.head(torch.from_numpy(feats)).numpy().astype(np.float64)
    held, ref = (table["cxr64_split"] == "heldout").to_numpy(), (table["cxr64_split"] == "reference").to_numpy()
    report, keep = {}, []
    for j, name in enumerate(LABELS):
        y = table[name].to_numpy().astype(int)
        npos = {"heldout": int(y[held].sum()), "reference": int(y[ref].sum())}
        ok = all(min_pos <= npos[s] <= m.sum() - min_pos for s, m in (("heldout", held), ("reference", ref)))
        auc = float(roc_auc_score(y[ref], logits[ref, j])) if 0 < npos["reference"] < ref.sum() else float("nan")
        auc_h = float(roc_auc_score(y[held], logits[held, j])) if 0 < npos["heldout"] < held.sum() else float("nan")
        entry = {"auroc_reference": auc, "auroc_heldout": auc_h, "positives": npos}
        if ok and auc >= min_auroc and auc_h >= min_auroc:
            lr = LogisticRegression(C=1e4).fit(logits[held, j : j + 1], y[held])
            p = lr.predict_proba(logits[held, j : j + 1])[:, 1]
            # operating point: the probability above which as many held-out images are called positive as are
            # labelled so; mapped to 0.5 as torchxrayvision's op_threshs are, so prevalences are comparable
            op = float(np.quantile(p, 1 - y[held].mean()))
            entry.update(a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]), op=op)
            keep.append(name)
        report[name] = entry
    return {
        "labels": keep,
        "index": [LABELS.index(n) for n in keep],
        "a": [report[n]["a"] for n in keep],
        "b": [report[n]["b"] for n in keep],
        "op": [report[n]["op"] for n in keep],
        "rule": f"kept: AUROC >= {min_auroc} on both the held-out (calibration) and the reference split, with >= "
                f"{min_pos} positives and negatives in each; Platt scaling fitted on the held-out split, then its "
                "operating point (held-out prevalence) mapped to 0.5",
        "per_label": report,
    }


def _write_set(path: Path, table: pd.DataFrame, feats: np.ndarray, hashes: list[str], spec: dict, which: str):
    import io
    import json as _json

    from cxrbench.fileio import atomic_write_bytes

    meta = {"name": f"cxr64 {which}: {len(table)} NIH ChestX-ray14 images (64 px, patient-disjoint split '{which}')",
            "spec": spec, "label_columns": list(LABELS), "source": "nih1000_64px (NIH ChestX-ray14 thumbnails)"}
    arrays = {"ids": np.array(table["image_index"], dtype=str), "hashes": np.array(hashes, dtype=str),
              "features": feats.astype(np.float32), "patient_ids": np.array(table["patient_id"].astype(str), dtype=str),
              "meta": np.array(_json.dumps(meta, sort_keys=True))}
    for c in LABELS:
        arrays[f"label:{c}"] = table[c].to_numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: the bytes (and the pinned sha256) do not depend on zlib
    atomic_write_bytes(path, buf.getvalue())


def build(run_dir: Path, data_root: Path, out_dir: Path) -> dict:
    """Write the protocol's package data from a trained run and return the sha256 pins to put in the code."""
    from cxrbench.data.io import sha256_file
    from cxrbench.features.cxr64 import HEAD_FILE, WEIGHTS_FILE
    from cxrbench.fileio import atomic_torch_save, atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    net = run_network(run_dir)
    weights = out_dir / WEIGHTS_FILE
    atomic_torch_save({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    table, feats, hashes, spec = nih_features(data_root, weights)
    calib = calibrate_head(net, feats, table)
    atomic_write_bytes(out_dir / HEAD_FILE, json.dumps(calib, indent=1, sort_keys=True).encode())
    for which in ("reference", "train", "heldout"):
        m = (table["cxr64_split"] == which).to_numpy()
        _write_set(out_dir / f"cxr64-{which}.npz", table[m], feats[m], [h for h, k in zip(hashes, m) if k], spec, which)
    return {f.name: sha256_file(f) for f in sorted(out_dir.iterdir()) if f.is_file()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m baselines.cxr64net", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write cxrbench/protocols/cxr64_data from a trained run")
    b.add_argument("--run", required=True, help="folder written by `cxrbench train cxr64-net`")
    b.add_argument("--data", default="../shared/data", help="the shared data root (nih1000_64px inside)")
    b.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cxrbench/protocols/cxr64_data"))
    b.add_argument("--pin", action="store_true", help="also write the new sha256 pins into the cxrbench sources")
    args = p.parse_args(argv)
    pins = build(Path(args.run), Path(args.data), Path(args.out))
    for name, digest in pins.items():
        print(f"{digest}  {name}")
    if args.pin:
        pin_sources(pins)
    return 0


def pin_sources(pins: dict[str, str]) -> None:
    """Rewrite the pinned sha256s in ``features/cxr64.py`` and ``protocols/cxr64.py`` (the pins live in code)."""
    import re

    import cxrbench.features.cxr64 as feat
    import cxrbench.protocols.cxr64 as proto

    f = Path(feat.__file__)
    text = re.sub(r'^WEIGHTS_SHA256 = "[0-9a-zA-Z]*"', f'WEIGHTS_SHA256 = "{pins[feat.WEIGHTS_FILE]}"',
                  f.read_text(), count=1, flags=re.MULTILINE)
    f.write_text(re.sub(r'^HEAD_SHA256 = "[0-9a-zA-Z]*"', f'HEAD_SHA256 = "{pins[feat.HEAD_FILE]}"', text, count=1,
                        flags=re.MULTILINE))
    f = Path(proto.__file__)
    text = f.read_text()
    for which, (fname, _) in proto.FEATURE_FILES.items():
        const = f"{which.upper()}_SHA256"
        text = re.sub(rf'^{const} = "[0-9a-zA-Z]*"', f'{const} = "{pins[fname]}"', text, count=1, flags=re.MULTILINE)
    f.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
