"""cxr64 against destroyed anatomy (run by hand): held-out NIH images intact, with 16-px or 8-px blocks shuffled,
and a smooth random field carrying each image's own histogram; prints FID, precision and recall under the protocol.

    python tests/benchmarks/cxr64_anatomy.py      # needs ../shared/data; about a minute on 2 cores
"""
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter

import cxrbench
from cxrbench.config import EvalConfig
from cxrbench.protocols.cxr64_splits import image_splits

NIH = Path("../shared/data/nih1000_64px")
t = pd.read_csv(NIH / "labels.csv"); t = t[np.array(image_splits(t)) == "heldout"].iloc[:200]
rng = np.random.default_rng(0)
out = {}
for name, block in (("intact", None), ("shuffle16", 16), ("shuffle8", 8), ("blur-blobs", "blobs")):
    d = Path(tempfile.mkdtemp())
    for i, p in enumerate(t["path"]):
        a = np.asarray(Image.open(NIH / p).convert("L").resize((64, 64)))
        if isinstance(block, int):
            b = a.reshape(64 // block, block, 64 // block, block).swapaxes(1, 2).reshape(-1, block, block)
            b = b[rng.permutation(len(b))]
            a = b.reshape(64 // block, 64 // block, block, block).swapaxes(1, 2).reshape(64, 64)
        elif block == "blobs":  # smooth random field with the image's histogram: no anatomy at all
            f = gaussian_filter(rng.normal(size=(64, 64)), 4)
            a = np.sort(a.ravel())[np.argsort(np.argsort(f.ravel()))].reshape(64, 64)
        Image.fromarray(a.astype(np.uint8)).save(d / f"{i:04d}.png")
    r = cxrbench.evaluate(d, config=EvalConfig(protocol="cxr64", use_cache=False, progress=False, metrics=("fid", "prdc")))
    out[name] = {k: round(r["metrics"][k]["value"], 2) for k in ("fid_cxr64", "precision_cxr64", "recall_cxr64")}
    print(name, out[name], flush=True)
