"""Features of the real populations ``interval_coverage.py`` draws from (cxr128 embedding, the shipped network).

    OMP_NUM_THREADS=1 nice -n 5 python tests/benchmarks/interval_coverage_features.py --data ../shared/data \
        --out /work/scratch/cov

Writes one ``<population>.npy`` (float32, N x 128) per population, plus ``populations.json`` (sizes and how each
was built). Every image goes through the protocol's preprocessing (centre crop, bilinear-antialias to 128 px);
the corruptions act on the 128 px image, in the units ``cxrbench.data.corruptions`` uses.

- ``nih``: every NIH ChestX-ray14 image in ``nih_extra_256px`` and ``nih1000_64px`` (2,594 images);
- ``nih_blur05``: the same images blurred with a 0.5 px Gaussian; ``nih_jpeg50``: JPEG at quality 50;
- ``nih_gan``: the GAN upsampling-artefact corruption (mild), a generator-like set;
- ``kermany``: the pediatric Kermany set (the mixture draws half its rows from it);
- ``nih_pa``: the NIH PA views only (a mode-dropped subset: every AP film missing);
- ``lsgan`` (with ``--generator DIR``): a bundled generator's samples, e.g. the board's LSGAN-64 run sampled
  2,594 times: ``cxrbench sample RUN --n 2594 --seed 7 --out DIR`` (the board's own samples use seed 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrbench.data import corruptions
from cxrbench.data.io import load_image
from cxrbench.features.cxr128 import CXR128Extractor, to_cxr128

FOLDERS = ("nih_extra_256px", "nih1000_64px")


def load128(paths: list[Path]) -> torch.Tensor:
    return torch.cat([to_cxr128(torch.from_numpy(load_image(p))[None, None]) for p in paths])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--generator", type=Path, default=None,
                    help="a folder of generated PNGs: their features become the `lsgan` population")
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    ext = CXR128Extractor()

    def feats(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return ext(x * 2 - 1).numpy().astype(np.float32)

    variants = {"nih": lambda x: x, "nih_blur05": lambda x: corruptions.gaussian_blur(x, 0.5),
                "nih_jpeg50": lambda x: corruptions.jpeg(x, 50), "nih_gan": lambda x: corruptions.apply("gan-artefacts", x, "mild")}
    out: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    views = []
    for folder in FOLDERS:
        lab = pd.read_csv(a.data / folder / "labels.csv")
        views += list(lab["view_position"])
        paths = [a.data / folder / p for p in lab["path"]]
        for i in range(0, len(paths), a.batch):
            x = load128(paths[i : i + a.batch])
            for k, fn in variants.items():
                out[k].append(feats(fn(x)))
            print(folder, i, flush=True)
    info = {}
    for k, v in out.items():
        np.save(a.out / f"{k}.npy", np.concatenate(v))
        info[k] = {"n": int(sum(len(b) for b in v)), "images": "nih_extra_256px + nih1000_64px", "transform": k}
    pa = np.asarray(views) == "PA"
    np.save(a.out / "nih_pa.npy", np.concatenate(out["nih"])[pa])
    info["nih_pa"] = {"n": int(pa.sum()), "images": "NIH PA views only (mode-dropped: no AP film)"}
    lab = pd.read_csv(a.data / "kermany_pediatric_covid_skytells" / "labels.csv")
    lab = lab[lab["near_duplicate_of"].isna()]
    paths = [a.data / "kermany_pediatric_covid_skytells" / p for p in lab["path"]]
    k = [feats(load128(paths[i : i + a.batch])) for i in range(0, len(paths), a.batch)]
    np.save(a.out / "kermany.npy", np.concatenate(k))
    info["kermany"] = {"n": len(paths), "images": "kermany_pediatric_covid_skytells (near-duplicates dropped)"}
    if a.generator is not None:
        paths = sorted(a.generator.glob("*.png"))
        g = [feats(load128(paths[i : i + a.batch])) for i in range(0, len(paths), a.batch)]
        np.save(a.out / "lsgan.npy", np.concatenate(g))
        info["lsgan"] = {"n": len(paths), "images": f"generated samples from {a.generator}"}
    (a.out / "populations.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
