"""Did a cxr128 training run's orientation pretext learn its classes? Accuracy of its head on held-out images.

The pretext head is a training-only head (``CXR128NetTrainer.orientation``); the built weights drop it, so this
reads a run folder (``cxrbench train cxr128-net --out RUN``). It prints, for each pretext class, how often the
head names it on the validity suite's 200 held-out real images (seed 0) turned into that class after a training
view (``CXR128NetTrainer.view``: crop, shift, intensity, mild blur / noise), three draws each; then, on clean
images (no view), which class the head names for the real set and for arrangement-only sets. A class the head
cannot name is one the network never learned to see, whatever the training loss says.

    OMP_NUM_THREADS=1 python tests/benchmarks/cxr128_pretext_head.py --run RUN --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cxr128_extra_sets as extra  # a sibling script: its arrangement-only sets

from baselines.cxr128net import ORIENTATIONS, Config, CXR128NetTrainer, orient
from cxrbench.data import corruptions as C
from cxrbench.engine.validity import SuiteData
from cxrbench.protocols.validity_sets import PROTOCOL_DATA


def load_trainer(run: Path) -> tuple[CXR128NetTrainer, tuple[str, ...]]:
    cfg = json.loads((run / "config.json").read_text())["config"]
    model = CXR128NetTrainer(Config(**{k: v for k, v in cfg.items() if k in Config.__dataclass_fields__}))
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    return model.eval(), tuple(cfg.get("orientation_extra", ()))


@torch.no_grad()
def named(model: CXR128NetTrainer, x: torch.Tensor) -> np.ndarray:
    """The class index the pretext head names for each image (the network's [-1, 1] input range)."""
    logits = torch.cat([model.orientation(model.net.features(x[i:i + 64].clamp(0, 1) * 2 - 1))
                        for i in range(0, len(x), 64)])
    return logits.argmax(1).numpy()


def shares(idx: np.ndarray, k: int) -> str:
    return " ".join(f"{v:5.2f}" for v in np.bincount(idx, minlength=k) / len(idx))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="a `cxrbench train cxr128-net` output folder")
    p.add_argument("--data", default="../shared/data")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    missing = [f for f in ("config.json", "model.pt") if not (args.run / f).is_file()]
    if missing:  # a mistyped folder, or a run still training (model.pt is written at the end)
        p.error(f"--run {args.run}: no {' or '.join(missing)} there; give a finished `cxrbench train cxr128-net` "
                "output folder")
    model, extra_classes = load_trainer(args.run)
    names = list(ORIENTATIONS) + list(extra_classes)
    real = SuiteData(args.data, protocol=PROTOCOL_DATA["cxr128"], root=ROOT, skip_missing=True).real()
    torch.manual_seed(0)
    views = model.view(torch.cat([real] * 3))
    print(f"{args.run}: pretext classes {', '.join(names)}")
    print(f"{'training views turned into':<28}{'accuracy':>9}   share named as each class")
    for j, name in enumerate(names):
        idx = named(model, orient(views, torch.full((len(views),), j), extra_classes))
        print(f"{name:<28}{(idx == j).mean():9.3f}   {shares(idx, len(names))}")
    print(f"{'clean held-out set':<38}share named as each class")
    for name, x in [("real", real), ("left/right splice (suite)", C.splice(real, seed=0)),
                    ("mirror", real.flip(-1)), ("top / bottom splice", extra.splice_rows(real, seed=4)),
                    ("left half mirrored", extra.symmetric(real))]:
        print(f"{name:<38}{shares(named(model, x), len(names))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
