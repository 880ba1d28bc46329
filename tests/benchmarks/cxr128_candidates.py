"""Which cxr128 network agrees with the eye? FID of image sets a person can order, per candidate network.

For each feature network (a ``cxrbench train cxr128-net`` run folder, its ``checkpoint.pt`` when training is
still under way, or ``cxr64`` / ``random-conv`` / ``pixels16`` for comparison), with the ``cxr128`` reference
split (599 NIH images) as the reference and N = 200 images in every set:

- the effective dimensionality of the reference features (variance share of the top 1 / 3 / 10 principal
  components, participation ratio ``(sum l)^2 / sum l^2``);
- FID of: held-out real NIH; each degraded set (``cxrbench.data.corruptions``, mild and moderate) and each
  anatomy-violated set, made from the same held-out images at 128 px; pediatric Kermany ``ValData``; the
  retired cxr64 leaderboard's sample sets (``leaderboard/validity/sets/cxr64-board/*``);
- the order checks: real below every degraded set, every moderate degraded set below every violated set
  (violations counted), Kendall tau (tau-b) of FID against the expected tiers (real 0, degraded 1,
  violated 2), Kendall tau of the generator sets against their eye tiers, and whether the blob set (ldm)
  ranks last among the generators.

    python tests/benchmarks/cxr128_candidates.py runs/c128_A runs/c128_C cxr64 random-conv pixels16
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cxrbench.data.corruptions import CORRUPTIONS, apply
from cxrbench.data.io import load_image
from cxrbench.features.cxr128 import CXR128Extractor, CXR128Net, to_cxr128
from cxrbench.metrics.fid import fid_from_features
from cxrbench.protocols.cxr128_splits import nih_splits

N = 200
#: eye tiers of the retired cxr64 leaderboard's sample sets, written down from its thumbnails before measuring
EYE_TIERS = {"lsgan": 1, "pggan": 1, "gmvae": 2, "fs-gmvae": 2, "vae": 2, "ddpm": 2, "diffusevae": 3, "ldm": 4}


def images(folder: Path, paths) -> torch.Tensor:
    return torch.cat([to_cxr128(torch.from_numpy(load_image(folder / p))[None, None]) for p in paths])


def network(spec: str) -> torch.nn.Module:
    """A run folder (model.pt, else checkpoint.pt) as an extractor, or a registered / built-in comparison."""
    path = Path(spec)
    if path.is_dir():
        file = path / "model.pt" if (path / "model.pt").is_file() else path / "checkpoint.pt"
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        net = CXR128Net()
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
        return CXR128Extractor(network=net.eval())
    if spec == "pixels16":
        return None
    from cxrbench.registry import EXTRACTORS

    return EXTRACTORS.get(spec)(weights="auto" if spec.startswith("cxr") else "random")


@torch.no_grad()
def feats(ext, x: torch.Tensor, batch: int = 100) -> np.ndarray:
    if ext is None:  # raw pixels at 16 x 16
        return torch.nn.functional.interpolate(x, size=(16, 16), mode="area").flatten(1).double().numpy()
    return np.concatenate([ext.extract(x[i : i + batch]).double().numpy() for i in range(0, len(x), batch)])


def effective_dim(f: np.ndarray) -> dict:
    lam = np.sort(np.linalg.eigvalsh(np.cov(f, rowvar=False)))[::-1].clip(min=0)
    share = lam.cumsum() / lam.sum()
    return {"pc1": share[0], "pc3": share[2], "pc10": share[9], "pr": lam.sum() ** 2 / (lam**2).sum()}


def main(argv=None) -> int:
    from scipy.stats import kendalltau

    specs = list(argv if argv is not None else sys.argv[1:])
    data = Path(__import__("os").environ.get("CXRBENCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
    nih = nih_splits(data).sort_values("path")
    folder = data / "nih_extra_256px"
    x_ref = images(folder, nih.loc[nih["cxr128_split"] == "reference", "path"])
    x_held = images(folder, nih.loc[nih["cxr128_split"] == "heldout", "path"][:N])
    kdir = data / "kermany_pediatric_covid_skytells"
    k = pd.read_csv(kdir / "labels.csv")
    x_kid = images(kdir, k.loc[k["split"] == "ValData", "path"].sort_values()[:N])
    sets = {"real held-out": (0, x_held)}
    for name, c in CORRUPTIONS.items():
        for strength in c.strengths:
            tier = 2 if c.kind == "violated" else 1
            sets[f"{name} {strength}" if c.kind == "degraded" else name] = (tier, apply(name, x_held, strength, seed=0))
    sets["kermany pediatric"] = (None, x_kid)
    lb = ROOT / "leaderboard" / "validity" / "sets" / "cxr64-board"  # the retired cxr64 board's sample sets
    for name in EYE_TIERS:
        sets[f"gen:{name}"] = (None, images(lb / name, sorted(p.name for p in (lb / name).glob("*.png"))[:N]))
    table, summary = {}, {}
    for spec in specs:
        ext = network(spec)
        f_ref = feats(ext, x_ref)
        col = {name: fid_from_features(feats(ext, x), f_ref) for name, (_, x) in sets.items()}
        table[spec] = col
        tiers = {n: t for n, (t, _) in sets.items() if t is not None}
        deg_mod = [n for n in tiers if tiers[n] == 1 and n.endswith("moderate")]
        deg = [n for n in tiers if tiers[n] == 1]
        vio = [n for n in tiers if tiers[n] == 2]
        gens = {n.removeprefix("gen:"): v for n, v in col.items() if n.startswith("gen:")}
        summary[spec] = {
            **effective_dim(f_ref),
            "real<deg": sum(col["real held-out"] < col[d] for d in deg) / len(deg),
            "deg(mod)<vio violations": sum(col[d] >= col[v] for d in deg_mod for v in vio),
            "tau sets": kendalltau([tiers[n] for n in tiers], [col[n] for n in tiers]).statistic,
            "tau generators": kendalltau([EYE_TIERS[g] for g in gens], [gens[g] for g in gens]).statistic,
            "blob last": all(gens["ldm"] > v for g, v in gens.items() if g != "ldm"),
        }
        print(f"done {spec}", file=sys.stderr, flush=True)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(pd.DataFrame(table).round(1).to_string())
    print(pd.DataFrame(summary).T.round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
