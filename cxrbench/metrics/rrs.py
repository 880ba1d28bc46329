"""Reconstructed-representation score (Selvadeepa et al., "Synthetic Chest X-ray Image Generator",
Mphasis NEXT Labs white paper, 2023): ``1 - cos`` in the MoCo-CXR embedding; lower is better.

- Paired mode, when the samples' ``manifest.csv`` has a ``source`` column (reconstructions, image-to-image
  models): each sample against the reference image it was made from. ``source`` names the reference image
  by its path relative to the reference folder (an absolute path or a unique file name also matches).
- Unpaired mode otherwise: each sample against its nearest reference image by cosine similarity, found in
  blocks (never an N x M matrix in memory).

The value is the mean per-image score with a bootstrap CI over the samples. ``real_vs_real`` is the score
of real images that are not in the reference: each reference image against its nearest *other* reference
image (leave-one-out; another patient's when patient ids are known), the level a generator that does not
copy its training images should approach. Not the usual two halves: a nearest-neighbour distance shrinks
as the candidate set grows, so half against half (M/2 candidates) sits above what new real images reach
against all M (measured on Kermany ValData in a trained MoCo space: 0.0199 for halves, 0.0166 for held-out
real images); the halves value stays in ``real_vs_real_halves``. The
per-image scores go into the result (``per_image``: ids, scores and the matched reference image) up to
``PER_IMAGE_MAX`` samples, a histogram beyond that.

One file: the estimator ``rrs_scores``, the functional entry ``rrs(real=, fake=, source=)`` (re-exported by
``functional``) and the registered metric ``rrs_moco``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from ..config import MetricSettings
from ..data.splits import real_vs_real_split
from ..errors import DataError
from .base import EvalContext, Metric, MetricValue
from .bootstrap import bootstrap_ci
from .common import check_pair, one_thread, replicates

PER_IMAGE_MAX = 10_000
HIST_BINS = 50


def unit_rows(x) -> np.ndarray:
    """Rows scaled to unit length in float64 (a zero row stays zero: cosine 0 with everything)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def nearest_cosine(a, b, *, block: int = 1024, groups_a=None, groups_b=None) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``a``: the highest cosine similarity to a row of ``b`` and that row's index.

    ``groups_a`` / ``groups_b`` (integer ids, e.g. patients) exclude the pairs whose ids are equal: with
    ``a is b`` and ``groups = arange(n)`` this is the leave-one-out nearest neighbour. Works on
    ``block x block`` tiles, so memory stays ~``8 * block**2`` bytes whatever N and M are.
    """
    a, b = unit_rows(a), unit_rows(b)
    if len(b) == 0:
        raise DataError("nearest-neighbour cosine: the reference set is empty")
    best = np.full(len(a), -np.inf)
    arg = np.full(len(a), -1, dtype=np.int64)
    for s in range(0, len(a), block):
        rows = slice(s, s + block)
        for t in range(0, len(b), block):
            sim = a[rows] @ b[t : t + block].T
            if groups_a is not None:
                sim[np.asarray(groups_a)[rows, None] == np.asarray(groups_b)[None, t : t + block]] = -np.inf
            j = sim.argmax(1)
            v = sim[np.arange(len(j)), j]
            better = v > best[rows]
            best[rows] = np.where(better, v, best[rows])
            arg[rows] = np.where(better, j + t, arg[rows])
    return best, arg


def leave_one_out_score(r, patient_ids=None) -> float | None:
    """Mean ``1 - cos`` from each reference image to its nearest *other* reference image (another patient's,
    when patients are known): the level a set of new real images reaches against the same reference."""
    groups = np.arange(len(r)) if patient_ids is None else np.unique(np.asarray(patient_ids, dtype=str),
                                                                      return_inverse=True)[1]
    sim, _ = nearest_cosine(r, r, groups_a=groups, groups_b=groups)
    ok = np.isfinite(sim)  # a patient alone in the reference has no neighbour of another patient: skipped
    return float(np.clip(1.0 - sim[ok], 0.0, 2.0).mean()) if ok.any() else None


def paired_cosine(a, b) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    return (unit_rows(a) * unit_rows(b)).sum(1)


def match_sources(sources, ref_ids: list[str]) -> np.ndarray:
    """Index into ``ref_ids`` of each ``source`` entry: the exact id, the longest path suffix that is an id
    (absolute paths, ``./`` prefixes, Windows separators), or a file name that is unique in the reference."""
    exact = {rid: i for i, rid in enumerate(ref_ids)}
    by_name: dict[str, list[int]] = {}
    for i, rid in enumerate(ref_ids):
        by_name.setdefault(PurePosixPath(rid).name, []).append(i)
    out = np.full(len(sources), -1, dtype=np.int64)
    for k, s in enumerate(sources):
        parts = [p for p in PurePosixPath(str(s).replace("\\", "/")).parts if p not in ("/", ".")]
        for n in range(len(parts), 0, -1):
            i = exact.get("/".join(parts[-n:]))
            if i is not None:
                out[k] = i
                break
        else:
            hits = by_name.get(parts[-1], []) if parts else []
            if len(hits) == 1:
                out[k] = hits[0]
    return out


def _sources(ctx: EvalContext) -> list[str] | None:
    m = ctx.gen.manifest
    if m is None or "source" not in getattr(m, "columns", ()):
        return None
    col = m["source"]
    missing = col.isna() | (col.astype(str).str.strip() == "")
    if missing.all():
        return None
    if missing.any():
        raise DataError(
            f"samples manifest.csv: {int(missing.sum())} of {len(col)} rows have no `source` "
            f"(e.g. {ctx.gen.ids[int(np.flatnonzero(missing.to_numpy())[0])]}); give every sample its source "
            "image, or drop the column to score against the nearest reference image"
        )
    return [str(s).strip() for s in col]


def rrs_scores(g, r, match=None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(scores, matched reference row, mode)``: ``1 - cos`` of each generated row against reference row
    ``match[i]`` (paired) or, with ``match`` None, against its nearest reference row by cosine (nearest)."""
    if match is not None:
        scores, mode = 1.0 - paired_cosine(g, r[match]), "paired"
    else:
        sim, match = nearest_cosine(g, r)
        scores, mode = 1.0 - sim, "nearest"
    return np.clip(scores, 0.0, 2.0), match, mode  # rounding can leave -1e-16 for identical embeddings


# the functional entry (``functional.rrs``)


@one_thread
def rrs(*, real, fake, source=None, patient_ids=None, ci: bool = False, n_bootstrap: int | None = None,
        seed: int = MetricSettings.seed, alpha: float = MetricSettings.alpha) -> MetricValue:
    """Mean ``1 - cos`` of each ``fake`` row against ``real[source[i]]`` (paired: ``source`` an index array, the
    reference image each sample was reconstructed from) or against its nearest ``real`` row (``source`` None),
    in whatever embedding the rows are (the registered ``rrs_moco``: MoCo-CXR features). ``real_vs_real``: each
    ``real`` row against its nearest other row (another patient's, given ``patient_ids``). On request a
    percentile-bootstrap interval over the generated rows.
    """
    g, r = check_pair(fake, real, min_rows=1, what="rrs")
    match = None
    if source is not None:
        match = np.asarray(source)
        if match.shape != (len(g),) or not np.issubdtype(match.dtype, np.integer) or match.min() < 0 \
                or match.max() >= len(r):
            raise DataError(f"rrs: source must hold one index into real (0..{len(r) - 1}) per fake row "
                            f"({len(g)}), got shape {match.shape}")
    scores, _, mode = rrs_scores(g, r, match)
    value = float(scores.mean())
    iv = bootstrap_ci(lambda idx: float(scores[idx].mean()), len(scores), n_boot=replicates(n_bootstrap, ci),
                      seed=seed, alpha=alpha, value=value)
    return MetricValue(value, False, iv, len(g), len(r), leave_one_out_score(r, patient_ids), extra={"mode": mode},
                       ci_method="percentile bootstrap (samples)" if iv else None)


# the registered metric (``cxrbench evaluate``)


class RRS(Metric):
    name = "rrs_moco"
    version = "1"
    outputs = {"rrs_moco": False}
    requires_extractors = ("moco",)

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        g, r = ctx.gen.features["moco"], ctx.ref.features["moco"]
        sources = _sources(ctx)
        if sources is not None:
            match = match_sources(sources, ctx.ref.ids)
            if (match < 0).any():
                bad = [sources[i] for i in np.flatnonzero(match < 0)[:3]]
                raise DataError(
                    f"samples manifest.csv: {int((match < 0).sum())} `source` value(s) name no reference image "
                    f"(e.g. {bad}); write them as paths relative to the reference folder, like {ctx.ref.ids[0]!r}"
                )
        else:
            match = None
        scores, match, mode = rrs_scores(g, r, match)

        cfg = ctx.config
        seed = cfg.seed
        value = float(scores.mean())
        ci = bootstrap_ci(lambda idx: float(scores[idx].mean()), len(scores),
                          n_boot=cfg.n_bootstrap, seed=seed, value=value)
        rvr = leave_one_out_score(r, ctx.ref.patient_ids)
        a, b = real_vs_real_split(len(r), seed, ctx.ref.patient_ids)
        halves = None
        if min(len(a), len(b)) >= 1:
            halves = float(np.clip(1.0 - nearest_cosine(r[a], r[b])[0], 0.0, 2.0).mean())

        extra = {"mode": mode, "std": float(scores.std()), "median": float(np.median(scores)),
                 "real_vs_real_method": "leave-one-out: nearest other reference image"
                 + (" of another patient" if ctx.ref.patient_ids is not None else ""),
                 "real_vs_real_halves": halves, "real_vs_real_halves_n": [len(a), len(b)]}
        if len(scores) <= PER_IMAGE_MAX:
            extra["per_image"] = {
                "ids": list(ctx.gen.ids),
                "scores": [round(float(s), 6) for s in scores],
                "matched": [ctx.ref.ids[int(j)] for j in match],
            }
        else:
            counts, edges = np.histogram(scores, bins=HIST_BINS, range=(0.0, max(float(scores.max()), 1e-12)))
            extra["histogram"] = {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}
        return {
            "rrs_moco": MetricValue(value=value, higher_is_better=False, ci=ci, n_gen=len(scores),
                                    n_ref=len(r), real_vs_real=rvr, extra=extra)
        }
