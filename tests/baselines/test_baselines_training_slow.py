"""Slow: each baseline trains for a few CPU minutes on real NIH thumbnails and its samples get closer to
held-out real images in XRV feature space (FID with random-weight XRV DenseNet features).

Run by hand (prints and saves the figures that go into the issue's closing note)::

    OMP_NUM_THREADS=1 python -m tests.baselines.test_baselines_training_slow [MODEL ...] [--minutes 3] [--out figures.json]

or as tests: ``pytest -m slow tests/baselines/test_baselines_training_slow.py``. Data: ``../shared/data/nih1000_64px``
(600 train images; the 400 valid + test images are the held-out reference), resized to 32 px.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from cxrbench.config import EvalConfig
from cxrbench.data import ImageFolder
from cxrbench.data.transforms import CXRTransform
from cxrbench.engine.evaluate import evaluate_generator, images_source
from cxrbench.registry import GENERATORS
from cxrbench.seeding import seed_everything
from cxrbench.training import TrainOptions, config_from_overrides

from ..conftest import shared_folder

SIZE = 32
N_SAMPLES = 200
MINUTES = 3.0

# CPU-sized configurations at 32 px (the seed configurations are for 128-224 px and GPUs)
CONFIGS = {
    "vae": dict(channels=[32, 64, 128], z_dim=64),
    "gmvae": dict(encoder="conv", conv_channels=[32, 64, 128], z_dim=64, k=10, decoder="decoder2"),
    "fs-gmvae": dict(encoder="conv", conv_channels=[32, 64, 128], z_dim=64, k=10, decoder="linear"),
    "lsgan": dict(),
    "pggan": dict(fmap_base=256, fmap_max=64, z_dim=128, phase_steps=60),
}


def held_out_reference(root: Path):
    tf = CXRTransform(image_size=SIZE)
    images, labels = [], []
    for split in ("valid", "test"):
        ds = ImageFolder(root, split=split, transform=tf)
        for i in range(len(ds)):
            x, y = ds[i]
            images.append(x)
            labels.append(y)
    return images_source(torch.stack(images), name=f"{root.name} valid+test @{SIZE}px"), torch.stack(labels)


def xrv_fid(model, reference, labels, cache_dir) -> float:
    cfg = EvalConfig(extractors=("xrv",), metrics=("fid",), weights="random", device="cpu", n_bootstrap=0,
                     num_workers=0, cache_dir=str(cache_dir), progress=False)
    lab = labels[:N_SAMPLES] if getattr(model, "conditional", False) else None  # held-out label mix
    result = evaluate_generator(model.eval(), N_SAMPLES, reference, config=cfg, labels=lab, seed=0)
    return float(result["metrics"]["fid_xrv"]["value"]), result["metrics"]["fid_xrv"].get("real_vs_real")


def train_and_measure(name: str, root: Path, work: Path, *, minutes: float = MINUTES, reference=None) -> dict:
    reference, labels = reference or held_out_reference(root)
    cls = GENERATORS.get(name)
    config = config_from_overrides(cls.Config, {"image_size": SIZE, **CONFIGS[name]}, source="slow test")
    train = ImageFolder(root, split="train", transform=CXRTransform(image_size=SIZE))
    seed_everything(0)  # the same seeded init cls.train starts from
    start = cls(config)
    if hasattr(start, "on_train_start"):
        start.on_train_start(train)
    fid_start, rvr = xrv_fid(start, reference, labels, work / "cache")
    t0 = time.monotonic()
    model = cls.train(train, config, work / name, options=TrainOptions(steps=100_000, max_minutes=minutes,
                                                                        progress=False, seed=0))
    train_minutes = (time.monotonic() - t0) / 60
    fid_end, _ = xrv_fid(model, reference, labels, work / "cache")
    state = json.loads((work / name / "train_state.json").read_text())
    return {"model": name, "config": CONFIGS[name], "image_size": SIZE, "n_train": len(train),
            "n_samples": N_SAMPLES, "n_reference": len(labels), "steps": state["step"],
            "train_minutes": round(train_minutes, 2), "fid_xrv_step0": round(fid_start, 2),
            "fid_xrv_end": round(fid_end, 2), "fid_xrv_real_vs_real": rvr}


@pytest.fixture(scope="module")
def nih():
    root = shared_folder("nih1000_64px")
    return root, held_out_reference(root)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_short_cpu_training_lowers_xrv_fid(name, nih, tmp_path_factory):
    root, reference = nih
    fig = train_and_measure(name, root, tmp_path_factory.mktemp(name), reference=reference)
    print(json.dumps(fig))
    assert fig["steps"] > 0
    assert fig["fid_xrv_end"] < fig["fid_xrv_step0"], fig


def main(argv=None) -> int:
    from ..conftest import SHARED_DATA

    p = argparse.ArgumentParser(description="train each baseline briefly on CPU; XRV FID at step 0 vs end")
    p.add_argument("models", nargs="*", default=sorted(CONFIGS))
    p.add_argument("--minutes", type=float, default=MINUTES)
    p.add_argument("--out", default=None, help="append the figures as JSON lines here")
    args = p.parse_args(argv)
    root = SHARED_DATA / "nih1000_64px"
    if not root.is_dir():
        print(f"{root}: not found", file=sys.stderr)
        return 1
    reference = held_out_reference(root)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            fig = train_and_measure(name, root, Path(tmp), minutes=args.minutes, reference=reference)
            line = json.dumps(fig)
            print(line, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
