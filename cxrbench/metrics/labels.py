"""Label-distribution matching (Segal et al., "Synthesising Clinically Realistic Chest
X-rays using Generative Adversarial Networks", 2020; Malik & Humair, "Evaluating the Feasibility of Using
Generative Models to Generate Chest X-Ray Data", 2023): does a classifier see the same findings, as often?

A label classifier labels the reference and the samples: the XRV classifier (torchxrayvision DenseNet121,
18 pathology heads, ``xrv-classifier``) or, under the ``cxr128`` protocol, the ``cxr128-classifier`` head
(the labels it tells apart on held-out NIH images). Its features (dimension names = the labels) are
calibrated probabilities (xrv: ``op_threshs`` map each head's operating point to 0.5; cxr128: Platt scaling,
then the operating point to 0.5), so a label counts as present when its probability is above 0.5. Heads that
return NaN are left out. ``label_distances(real=, fake=)`` computes the three distances from two probability
arrays of one's own (``cxrbench.metrics.functional``).

- ``label_mae``: mean over pathologies of |prevalence(samples) - prevalence(reference)|; the per-pathology
  prevalence table is in ``extra["prevalence"]``.
- ``label_js``: Jensen-Shannon divergence (base 2, in [0, 1]) of the label-frequency vectors: the
  prevalences plus one "no positive label" bin (the fraction of images with none, so a set where the
  classifier finds nothing is still a distribution), each normalised to sum 1.
- ``label_cooccurrence``: Frobenius distance between the pairwise co-occurrence matrices
  ``C[a, b] = P(a and b present)``, over pairs a < b (the diagonal is the prevalence, counted by label_mae).
- ``label_adherence_auroc`` (conditional samples only): when the samples' manifest lists the labels each
  image was asked for, the AUROC of the classifier's probability for a label at separating images that
  requested it from those that did not, averaged over requested labels (per label in ``extra``). Its
  ``real_vs_real`` is the same AUROC on the reference against its own ``labels.csv``, where available: the
  classifier's ceiling.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from ..data.labels import LABEL_LIST_COLUMNS, canonical_label
from .base import EvalContext, FigureSpec, Metric, MetricValue
from .bootstrap import two_sample_bootstrap
from .common import (
    MetricSettings,
    bootstrap_interval,
    check_pair,
    classifier_of,
    dimension_names,
    features_of,
    matched_floor,
    missing_classifier,
    replicates,
    with_floor,
    with_interval,
)


def positives(probs: np.ndarray) -> np.ndarray:
    """Presence matrix from op_threshs-calibrated probabilities (> 0.5)."""
    return np.asarray(probs) > 0.5


def label_frequency(pos: np.ndarray) -> np.ndarray:
    """Prevalences plus a "no positive label" bin, normalised to a distribution."""
    f = np.append(pos.mean(0), (~pos.any(1)).mean())
    return f / f.sum()


def label_js(pos_a: np.ndarray, pos_b: np.ndarray) -> float:
    return float(jensenshannon(label_frequency(pos_a), label_frequency(pos_b), base=2) ** 2)


def label_mae(pos_a: np.ndarray, pos_b: np.ndarray) -> float:
    return float(np.abs(pos_a.mean(0) - pos_b.mean(0)).mean())


def cooccurrence(pos: np.ndarray) -> np.ndarray:
    p = pos.astype(np.float64)
    return p.T @ p / len(p)


def label_cooccurrence(pos_a: np.ndarray, pos_b: np.ndarray) -> float:
    iu = np.triu_indices(pos_a.shape[1], k=1)
    return float(np.sqrt(((cooccurrence(pos_a) - cooccurrence(pos_b))[iu] ** 2).sum()))


#: the three label distances and their estimators (each a function of two 0/1 "present" arrays)
DISTANCES = (("label_mae", label_mae), ("label_js", label_js), ("label_cooccurrence", label_cooccurrence))


def label_distances(*, real, fake, ci: bool = False, n_bootstrap: int | None = None,
                    seed: int = MetricSettings.seed, alpha: float = MetricSettings.alpha) -> dict[str, MetricValue]:
    """``label_mae``, ``label_js`` and ``label_cooccurrence`` between two ``(N, L)`` arrays of calibrated label
    probabilities (a label is present above 0.5), the reference ``real`` and the samples ``fake``; on request a
    basic-bootstrap interval over both sets with the bias-corrected estimate (the distances between prevalence
    tables are biased upward at finite N)."""
    gen, ref = check_pair(fake, real, min_rows=1, what="label_distances")
    pg, pr = positives(gen), positives(ref)
    n_boot = replicates(n_bootstrap, ci)
    out = {}
    for key, fn in DISTANCES:
        value = fn(pg, pr)
        iv = two_sample_bootstrap(lambda ig, ir, fn=fn: fn(pg[ig], pr[ir]), len(pg), len(pr), value,
                                  n_boot=n_boot, seed=seed, alpha=alpha, method="basic")
        out[key] = with_interval(MetricValue(value, False, None, len(pg), len(pr)), iv, bias_corrected=True, lower=0.0)
    return out


def _classifier_outputs(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, list[str]]:
    clf = classifier_of(ctx)
    gen, ref = features_of(ctx.gen, clf), features_of(ctx.ref, clf)
    names = dimension_names(ctx, clf, gen.shape[1])
    keep = ~(np.isnan(gen).any(0) | np.isnan(ref).any(0))
    return gen[:, keep], ref[:, keep], [n for n, k in zip(names, keep) if k]


class LabelDistribution(Metric):
    name = "labels"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"label_mae": False, "label_js": False, "label_cooccurrence": False}
    def skip_reason(self, ctx: EvalContext) -> str | None:
        return missing_classifier(ctx)

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        gen, ref, names = _classifier_outputs(ctx)
        pg, pr = positives(gen), positives(ref)
        prev_g, prev_r = pg.mean(0), pr.mean(0)
        worst = int(np.argmax(np.abs(prev_g - prev_r)))
        extras = {
            "label_mae": {
                "prevalence": {
                    n: {"samples": float(x), "reference": float(y)} for n, x, y in zip(names, prev_g, prev_r)
                },
                "worst": names[worst],
                "threshold": 0.5,
            },
            "label_js": {"base": 2, "frequency_bins": names + ["(none)"]},
            "label_cooccurrence": {},
        }
        if len(names) > 1:
            diff = np.abs(cooccurrence(pg) - cooccurrence(pr))
            i, j = np.unravel_index(np.argmax(np.triu(diff, 1)), diff.shape)
            extras["label_cooccurrence"]["worst_pair"] = [names[i], names[j]]
        out = label_distances(real=ref, fake=gen, n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha)
        for key, fn in DISTANCES:
            out[key].extra.update(extras[key])
            with_floor(out[key], *matched_floor(fn, pg, pr, st, ctx.ref.patient_ids))
        return out

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        if not (isinstance(value.get("prevalence"), dict) and value["prevalence"]):
            return []
        return [FigureSpec("prevalence", key, f"prevalence_{key}", f"{key}: label prevalence",
                           "fraction of images the classifier calls positive, per label", value["prevalence"])]


# --- adherence of conditional samples -------------------------------------------------------------------


def requested_labels(manifest) -> dict[str, np.ndarray]:
    """``{NIH label: 0/1 vector}`` of what each sample was asked for, from a samples manifest.

    Either one column per label (NIH spelling or a known alias, values 0/1) or one column from
    ``LABEL_LIST_COLUMNS`` holding ``"Effusion|Edema"`` strings. Empty when the manifest has neither.
    """
    if manifest is None or len(manifest) == 0:
        return {}
    out: dict[str, np.ndarray] = {}
    for col in manifest.columns:
        lab = canonical_label(str(col))
        if lab is not None:
            v = np.asarray(manifest[col], dtype=np.float64)
            out[lab] = np.nan_to_num(v, nan=0.0) > 0.5
    if out:
        return out
    for col in LABEL_LIST_COLUMNS:
        if col in manifest.columns:
            rows = [
                {canonical_label(t) for t in str(s).replace(",", "|").split("|") if t.strip()}
                if isinstance(s, str) else set()
                for s in manifest[col]
            ]
            for lab in sorted(set().union(*rows) - {None}):
                out[lab] = np.array([lab in r for r in rows])
            return out
    return {}


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def _auroc(y: np.ndarray, score: np.ndarray) -> float:
    ok = ~np.isnan(score)
    y, score = y[ok], score[ok]
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


class LabelAdherence(Metric):
    name = "label_adherence"
    version = "1"
    outputs: ClassVar[dict[str, bool]] = {"label_adherence_auroc": True}
    def _evaluable(self, ctx: EvalContext) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Requested labels the classifier predicts and that some but not all samples requested."""
        clf = classifier_of(ctx)
        names = dimension_names(ctx, clf, features_of(ctx.gen, clf).shape[1])
        req = requested_labels(ctx.gen.manifest)
        cols = {n: i for i, n in enumerate(names)}
        req = {lab: y for lab, y in req.items() if lab in cols and 0 < y.sum() < len(y)}
        return req, cols

    def skip_reason(self, ctx: EvalContext) -> str | None:
        missing = missing_classifier(ctx, sets=("gen",))
        if missing:
            return missing
        if not requested_labels(ctx.gen.manifest):
            return "the samples' manifest lists no requested labels (unconditional samples)"
        if not self._evaluable(ctx)[0]:
            return "no requested label that the classifier predicts is requested by some but not all samples"
        return None

    def compute(self, ctx: EvalContext) -> dict[str, MetricValue]:
        if self.skip_reason(ctx):
            return {}
        st = MetricSettings.from_config(ctx.config)
        req, cols = self._evaluable(ctx)
        probs = features_of(ctx.gen, classifier_of(ctx)).astype(np.float64)

        def mean_auroc(idx):
            return _nanmean([_auroc(y[idx], probs[idx, cols[lab]]) for lab, y in req.items()])

        per_label = {lab: _auroc(y, probs[:, cols[lab]]) for lab, y in req.items()}
        value = mean_auroc(np.arange(len(probs)))
        ci = bootstrap_interval(mean_auroc, len(probs), value, st, lower=0.0, upper=1.0)
        extra = {"per_label": per_label, "n_requested": {lab: int(y.sum()) for lab, y in req.items()}}
        ceiling = self._reference_ceiling(ctx, req, cols)
        if ceiling:
            extra["reference_per_label"] = ceiling
        rvr = _nanmean(list(ceiling.values())) if ceiling else None
        return {"label_adherence_auroc": MetricValue(
            value, True, ci, len(probs), len(ctx.ref), rvr, extra=extra)}

    def figures(self, key: str, value: dict) -> list[FigureSpec]:
        if not (isinstance(value.get("per_label"), dict) and value["per_label"]):
            return []
        return [FigureSpec("per_label", key, f"per_label_{key}", f"{key}: per label", "dashed line: chance (0.5)",
                           {"per_label": value["per_label"], "reference_per_label": value.get("reference_per_label")})]

    @staticmethod
    def _reference_ceiling(ctx: EvalContext, req, cols) -> dict[str, float]:
        """AUROC of the classifier on the reference against its ground-truth labels, per requested label."""
        labels = ctx.ref.labels
        clf = classifier_of(ctx)
        if labels is None or clf not in ctx.ref.features:
            return {}
        probs = features_of(ctx.ref, clf).astype(np.float64)
        out = {}
        for lab in req:
            if lab in labels.columns:
                y = np.asarray(labels[lab], dtype=np.float64)
                ok = ~np.isnan(y)
                v = _auroc(y[ok] > 0.5, probs[ok, cols[lab]])
                if not np.isnan(v):
                    out[lab] = v
        return out
