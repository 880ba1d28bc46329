"""Patient re-identification: how many generated images a verification network takes for a training patient.

Packhaeuser et al., "Deep learning-based patient re-identification is able to exploit the biometric nature of
medical chest X-ray data" (Scientific Reports 2022) showed that a Siamese network tells whether two chest
radiographs show the same patient; CheXGenBench (Dutt et al. 2025) turned it into a privacy metric for
synthetic images (the probability of "same patient" between a generated image and real images).

Here, for every generated image, the highest same-patient probability over *all* training images
(``--train-reference``: the generator's training set). Each image is embedded once (one branch of the
Siamese network); the pair head (``fc_end(|a - b|)``) then runs over every sample-training pair in blocks,
so the maximum is exact, with no nearest-neighbour shortlist. Outputs:

- ``reid``: the share of generated images whose maximum probability exceeds the threshold (0.5, the
  published decision threshold): images a verification network would link to a training patient;
- ``reid_mean``: the mean of those maxima.

Both have a percentile-bootstrap CI over the generated set. ``real_vs_real`` is the same statistic for the
evaluation reference's images, real images that were not trained on, against the same training set: the
level a generator that leaks no identity should show. They must be other patients than the training set's
(``extra["reference_shares_patients"]`` reports the share that are not, where patient ids are known):
a held-out image of a training patient *is* a re-identification.

Unlike the pixel or feature nearest-neighbour memorization score, this one also finds a new image of a
training patient (another film, another day, another position): what leaks identity, not only copies.

The network (``MetricSettings.reid_weights``): ``cxrbench``, the verification network cxrbench trains and ships
(``cxrbench.features.reid.ReidNet``, 128 px; not the published network, so its numbers are not CheXGenBench's);
a file, the published Siamese ResNet-50's state dict (CheXGenBench's checkpoint), read by
``cxrbench.features.reid.load_siamese`` with the preprocessing ``reid_preprocessing`` names; or ``random``.

One file: the estimator (``reid_scores``, ``reid_sets``), the functional entry ``reid(real=, fake=, train=)`` on
image arrays (re-exported by ``functional``) and the registered metric ``reid``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..config import MetricSettings
from ..features.reid import load_reid_network
from .base import EvalContext, FeatureSet, Metric, MetricValue
from .common import bootstrap_interval, gray_image_4d, image_set, one_thread, replicates

#: images decoded and embedded at a time
EMBED_BATCH = 32
#: sample-training pairs the head scores at a time (x feature dimension floats)
PAIR_BLOCK = 2**16


@torch.no_grad()
def embed_set(net, fs: FeatureSet, device="cpu") -> torch.Tensor:
    """``(N, D)`` branch features of every image of ``fs`` (decoded ``EMBED_BATCH`` at a time; each image is
    preprocessed on its own, so sets of mixed sizes work)."""
    out = []
    for s in range(0, len(fs), EMBED_BATCH):
        imgs = fs.load_images(list(range(s, min(s + EMBED_BATCH, len(fs)))))
        batch = []
        for im in imgs:
            batch.append(net.preprocess(gray_image_4d(im, fs).to(device)))
        out.append(net.forward_once(torch.cat(batch)).float())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def max_same_patient(net, query: torch.Tensor, train: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each query embedding, the highest same-patient probability over ``train`` and that row's index."""
    rows = max(1, PAIR_BLOCK // max(len(train), 1))
    best, arg = [], []
    for s in range(0, len(query), rows):
        logits = net.pair_logits(query[s : s + rows], train)  # (rows, N_train)
        m, i = logits.max(1)
        best.append(torch.sigmoid(m).double().cpu().numpy())
        arg.append(i.cpu().numpy())
    if not best:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(best), np.concatenate(arg)


def reid_scores(net, gen: FeatureSet, ref: FeatureSet, train: FeatureSet, *, device="cpu"):
    """``(gen_max, gen_arg, ref_max)``: each generated and reference image's best match among the training images."""
    t = embed_set(net, train, device)
    g, gi = max_same_patient(net, embed_set(net, gen, device), t)
    r, _ = max_same_patient(net, embed_set(net, ref, device), t)
    return g, gi, r


def reid_sets(gen: FeatureSet, ref: FeatureSet, train: FeatureSet, st: MetricSettings, device="cpu", *,
              n_closest: int = 10) -> dict[str, MetricValue]:
    """``reid`` and ``reid_mean`` of three image sets under the settings ``st`` (the registered metric's code)."""
    net, weights_id = load_reid_network(st.reid_weights, seed=st.seed, preprocessing=st.reid_preprocessing)
    net = net.to(device)
    g, gi, r = reid_scores(net, gen, ref, train, device=device)
    thr = st.reid_threshold
    above = g > thr
    n_gen, n_ref = len(g), len(r)
    top = np.argsort(-g, kind="stable")[:n_closest]
    extra = {
        "threshold": thr,
        "network": net.describe(),
        "weights": weights_id,
        "n_train": len(train),
        "reference_above_threshold": float((r > thr).mean()),
        "reference_mean": float(r.mean()),
        "closest_pairs": [{"sample": gen.ids[j], "train": train.ids[gi[j]], "probability": float(g[j])}
                          for j in top],
    }
    if ref.patient_ids is not None and train.patient_ids is not None:
        known = {str(p) for p in train.patient_ids if p is not None and str(p) not in ("", "nan")}
        extra["reference_shares_patients"] = float(np.mean([str(p) in known for p in ref.patient_ids]))
    share = float(above.mean())
    mean = float(g.mean())
    ci_share = bootstrap_interval(lambda idx: float(above[idx].mean()), n_gen, share, st, lower=0.0, upper=1.0)
    ci_mean = bootstrap_interval(lambda idx: float(g[idx].mean()), n_gen, mean, st, lower=0.0, upper=1.0)
    method = "percentile bootstrap (samples)"
    return {
        "reid": MetricValue(share, False, ci_share, n_gen, n_ref, float((r > thr).mean()), extra=extra,
                            ci_method=method if ci_share else None),
        "reid_mean": MetricValue(mean, False, ci_mean, n_gen, n_ref, float(r.mean()),
                                 extra={"threshold": thr, "weights": weights_id},
                                 ci_method=method if ci_mean else None),
    }


# the functional entry (``functional.reid``)


@one_thread
def reid(*, real, fake, train, weights: str = MetricSettings.reid_weights,
         preprocessing: str = MetricSettings.reid_preprocessing, threshold: float = MetricSettings.reid_threshold,
         ci: bool = False, n_bootstrap: int | None = None, seed: int = MetricSettings.seed,
         alpha: float = MetricSettings.alpha, device: str = "cpu") -> dict[str, MetricValue]:
    """``{"reid", "reid_mean"}`` for image arrays: each ``fake`` image's highest same-patient probability over the
    ``train`` images (the generator's training set); ``real_vs_real`` the same for ``real`` images of other
    patients. Images: ``(N, H, W)`` or ``(N, 1, H, W)`` grey arrays or tensors in [0, 1]. ``weights``: as the
    ``reid_weights`` setting (``cxrbench``, ``random`` or a state dict file of the published network).
    """
    st = MetricSettings(seed=seed, n_bootstrap=replicates(n_bootstrap, ci), alpha=alpha, reid_weights=weights,
                        reid_preprocessing=preprocessing, reid_threshold=threshold)
    sets = [image_set(x, name) for x, name in ((fake, "fake"), (real, "real"), (train, "train"))]  # none empty
    return reid_sets(*sets, st, device)


# the registered metric (``cxrbench evaluate``)


class ReID(Metric):
    name = "reid"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"reid": False, "reid_mean": False}
    #: highest-probability sample-training pairs listed in extra
    n_closest: ClassVar[int] = 10

    def skip_reason(self, ctx: EvalContext) -> str | None:
        if ctx.train is None:
            return "needs the generator's training images (--train-reference)"
        for fs in (ctx.gen, ctx.ref, ctx.train):
            if fs.load_images is None:
                return f"{fs.name}: images are not available to decode (features only)"
            if len(fs) == 0:
                return f"{fs.name}: no images"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        return reid_sets(ctx.gen, ctx.ref, ctx.train, MetricSettings.from_config(ctx.config), ctx.device,
                         n_closest=self.n_closest)
