"""Protocol ``chexgenbench``: the fidelity numbers of CheXGenBench (Dutt et al., "CheXGenBench: A Unified
Benchmark For Fidelity, Privacy and Utility of Synthetic Chest Radiographs", 2025), computed as its code does,
beside cxrbench's own on the same features.

What its ``metrics/fid.py`` does (``Raman1121/CheXGenBench`` at commit 9a201c1, 2025-09-28; requirements pin
torchmetrics 1.7.1, prdc 0.2, transformers 4.50.3), and what this protocol does the same way:

- features: ``microsoft/rad-dino`` through ``AutoModel``, ``outputs.pooler_output`` (the layer-normed CLS
  token), of images loaded with PIL, ``convert("RGB")``, ``Resize((299, 299))``, ``ToTensor()``, ``* 255`` to
  uint8, then RadDino's ``AutoImageProcessor``: the ``raddino`` extractor with ``resize="chexgenbench"``;
- FID: torchmetrics ``FrechetInceptionDistance(feature=<that module>)`` (float64 sums, float32 result);
- KID: torchmetrics ``KernelInceptionDistance(feature=..., subset_size=min(N_synthetic, N_real))``, its
  defaults otherwise (100 subsets, degree 3, gamma 1/d, coef 1); mean and std over subsets;
- PRDC: ``prdc.compute_prdc(real_features, fake_features, nearest_k=5)`` on the same RadDino features.

torchmetrics 1.7.1 and 1.9.0 run the same code for a custom feature module (``image/kid.py`` is unchanged
between the tags; ``image/fid.py`` only gained an ``antialias`` option for its own Inception resize).

The engine extracts each image's RadDino features once (batched, cached); torchmetrics' classes are fed them
through a pass-through feature module, which is what they compute from when they call the extractor
themselves (tested: the same numbers as torchmetrics calling the wrapped extractor on the images).

Not copied: unreadable files are refused (``--skip-bad`` drops and lists them), never replaced by a black image;
cxrbench's own ``kid_raddino`` keeps subsets of min(1000, N) (CheXGenBench's subsets are the whole smaller set,
so its KID std says nothing about uncertainty) and every cxrbench metric keeps its interval and real-vs-real floor.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..engine.protocol import Protocol
from ..errors import DataError, UsageError
from ..metrics.base import MetricValue

NAME = "chexgenbench"
VERSION = "1"
EXTRACTOR = "raddino"
#: cxrbench's own metrics on the same features (intervals, floors), unless --metrics says otherwise
METRICS = ("fid", "kid", "prdc")
SOURCE = {"repository": "Raman1121/CheXGenBench", "file": "metrics/fid.py",
          "commit": "9a201c11f61e14d88b8661c94b495ca3a4c2e523",
          "pinned_there": {"torchmetrics": "1.7.1", "prdc": "0.2", "transformers": "4.50.3"}}
KID_SUBSETS = 100
KID_DEGREE = 3
KID_COEF = 1.0
PRDC_K = 5
INSTALL_HINT = 'pip install "cxrbench[chexgenbench]"'
#: result key -> CheXGenBench's column in Results/image_generation_metrics.csv
COLUMNS = {"fid": "FID (RadDino)", "kid": "KID (RadDino)", "precision": "Precision", "recall": "Recall",
           "density": "Density", "coverage": "Coverage"}
DIFFERENCES = (
    ("the numbers are CheXGenBench's only with the published RadDino weights (microsoft/rad-dino) and the same "
     "real set: the MIMIC-CXR test images of MIMIC_Splits/LLAVARAD_ANNOTATIONS_TEST.csv, one per unique prompt, "
     "with samples generated from those prompts"),
    ("images are read as grey (RGB files as luminance, 16-bit files scaled to 8 bits); CheXGenBench feeds RGB files' "
     "three channels and PIL clips 16-bit files: identical for 8-bit grey images (MIMIC-CXR-JPG)"),
    ("KID subsets are drawn from torch's generator seeded by --seed; CheXGenBench's draw comes from the global "
     "generator as left by everything before compute() (seeded 42 at start): when the two sets have the same size "
     "every subset is the whole set and the draw does not matter"),
    ("the features are extracted once (batched, cached) and handed to torchmetrics through a pass-through module; "
     "CheXGenBench lets torchmetrics call RadDino on each batch: the same rows"),
    ("CheXGenBench rounds to 3 decimals ('as_published' here); its memory-saving script averages the metrics over 4 "
     "shards (FID on a quarter of the images is larger): compare with full-set runs"),
    "Inception FID/KID/IS, FRD and image-text alignment of CheXGenBench are not computed here",
)


class PassThrough(nn.Module):
    """torchmetrics' custom ``feature`` module for features extracted beforehand: rows in, the same rows out."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)  # torchmetrics then skips its dummy-image probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _prdc():
    try:
        import prdc
    except ImportError:
        raise UsageError(f"--protocol {NAME} needs the prdc package (CheXGenBench's PRDC): {INSTALL_HINT}") from None
    return prdc


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def settings(n_gen: int, n_ref: int) -> dict:
    return {"feature": "raddino pooler output (CLS after the final LayerNorm)",
            "preprocessing": "8-bit, PIL bilinear to 299x299, BitImageProcessor (PIL) bicubic 518, crop 518",
            "fid": "torchmetrics FrechetInceptionDistance(feature=RadDino)",
            "kid": {"class": "torchmetrics KernelInceptionDistance(feature=RadDino)",
                    "subset_size": min(n_gen, n_ref), "subsets": KID_SUBSETS, "degree": KID_DEGREE,
                    "gamma": None, "coef": KID_COEF},
            "prdc": {"function": "prdc.compute_prdc", "nearest_k": PRDC_K}}


def chexgenbench_numbers(real: np.ndarray, fake: np.ndarray, *, seed: int = 0) -> dict:
    """CheXGenBench's FID, KID (mean, std) and PRDC of two feature sets ``(N, D)``, computed by the same library
    calls as its ``metrics/fid.py``: torchmetrics' classes (rows through ``PassThrough``) and ``prdc``."""
    prdc = _prdc()
    real = np.ascontiguousarray(real, dtype=np.float32)  # RadDino's output dtype: torchmetrics returns FID in it
    fake = np.ascontiguousarray(fake, dtype=np.float32)
    n_ref, n_gen = len(real), len(fake)
    if min(n_ref, n_gen) <= PRDC_K:
        raise DataError(f"--protocol {NAME}: PRDC with k = {PRDC_K} needs at least {PRDC_K + 1} images in each set; "
                        f"got {n_gen} samples and {n_ref} reference images")
    d = real.shape[1]
    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    fid = FrechetInceptionDistance(feature=PassThrough(d))
    fid.update(r, real=True)
    fid.update(f, real=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        kid = KernelInceptionDistance(feature=PassThrough(d), subset_size=min(n_gen, n_ref), subsets=KID_SUBSETS,
                                      degree=KID_DEGREE, coef=KID_COEF)
    kid.update(r, real=True)
    kid.update(f, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes; stdout is the results'
        p = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=PRDC_K)
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            **{k: float(p[k]) for k in ("precision", "recall", "density", "coverage")}}


class CheXGenBenchProtocol(Protocol):
    """Registry entry ``PROTOCOLS["chexgenbench"]``: RadDino with CheXGenBench's preprocessing; its numbers
    (``chexgenbench_*_raddino``) after cxrbench's own metrics; the settings in the result's ``chexgenbench``."""

    name = NAME
    version = VERSION
    headline = "chexgenbench_fid_raddino"
    adds_metrics = True

    def __init__(self) -> None:
        self._section: dict = {}

    def prepare(self, config, reference, train_reference):
        if reference is None:
            raise UsageError(f"--protocol {NAME} compares your samples with your real images: pass --reference (for "
                             "CheXGenBench's tables, the MIMIC-CXR test images of its LLAVARAD_ANNOTATIONS_TEST.csv)")
        _prdc()  # a missing package fails before the images are read
        config = config.resolved(extractors=(EXTRACTOR,), raddino_resize="chexgenbench",
                                 metrics=config.metrics or METRICS)
        return config, reference, train_reference

    def after_metrics(self, ctx, sources: dict) -> dict:
        real, fake = ctx.ref.features[EXTRACTOR], ctx.gen.features[EXTRACTOR]
        nums = chexgenbench_numbers(real, fake, seed=ctx.config.seed)
        n_gen, n_ref = len(fake), len(real)
        tm = f"torchmetrics {_version('torchmetrics')}"
        impl = {"fid": f"{tm} FrechetInceptionDistance", "kid": f"{tm} KernelInceptionDistance",
                **{k: f"prdc {_version('prdc')} compute_prdc(nearest_k={PRDC_K})"
                   for k in ("precision", "recall", "density", "coverage")}}
        out = {}
        for k, column in COLUMNS.items():
            extra = {"chexgenbench_column": column, "implementation": impl[k], "as_published": round(nums[k], 3)}
            if k == "kid":
                extra.update(std=nums["kid_std"], subset_size=min(n_gen, n_ref), subsets=KID_SUBSETS)
            out[f"{NAME}_{k}_{EXTRACTOR}"] = MetricValue(value=nums[k], higher_is_better=k not in ("fid", "kid"),
                                                          n_gen=n_gen, n_ref=n_ref, extra=extra)
        self._section = {
            "mode": NAME, "source": SOURCE, "settings": settings(n_gen, n_ref),
            "versions": {p: _version(p) for p in ("torchmetrics", "prdc", "transformers", "scikit-learn")},
            "kid_seed": ctx.config.seed, "differences": list(DIFFERENCES),
        }
        return out

    def sections(self) -> dict:
        return {NAME: self._section} if self._section else {}
