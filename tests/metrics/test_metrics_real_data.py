"""Real radiographs (../shared/data): real-vs-real is closer than two different populations.

NIH ChestX-ray14 thumbnails split patient-wise in halves against the same NIH half versus the Kermany
pediatric set. Embeddings are flattened 16x16 thumbnails (no weights needed); the label metrics read each
folder's labels.csv as 0/1 "classifier probabilities" in the XRV pathology order.
"""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxrbench.data.splits import real_vs_real_split
from cxrbench.engine.metric_runner import run_metric
from cxrbench.features.pixels import PixelStatsExtractor
from cxrbench.registry import METRICS

from ..metric_helpers import context, feature_set, shared_data

pytestmark = pytest.mark.slow

XRV_ORDER = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
             "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia",
             "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]


def load_folder(folder, n=None, seed=0):
    table = pd.read_csv(folder / "labels.csv")
    if n is not None and n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))]
    imgs = []
    for p in table["path"]:
        with Image.open(folder / p) as im:
            im = im.convert("L").resize((64, 64), Image.BILINEAR)
            imgs.append(np.asarray(im, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(imgs))[:, None]
    labels = np.stack([table[c].to_numpy(float) if c in table else np.zeros(len(table)) for c in XRV_ORDER], 1)
    patients = table["patient_id"].astype(str).tolist() if "patient_id" in table else None
    return x, labels, patients


def make_set(name, x, labels):
    feats = {"thumb16": F.adaptive_avg_pool2d(x, 16).flatten(1).numpy(),
             "pixels": PixelStatsExtractor().extract(x).numpy(),
             "xrv-classifier": labels}
    return feature_set(name, feats)


@pytest.fixture(scope="module")
def populations():
    root = shared_data()
    if root is None or not (root / "nih1000_64px").is_dir() or not (root / "kermany_pediatric_covid_skytells").is_dir():
        pytest.skip("shared/data with nih1000_64px and kermany_pediatric_covid_skytells is not available")
    nih, nih_labels, patients = load_folder(root / "nih1000_64px")
    a, b = real_vs_real_split(len(nih), 0, patients)
    kermany, kermany_labels, _ = load_folder(root / "kermany_pediatric_covid_skytells", n=len(b), seed=1)
    ref = make_set("reference", nih[a], nih_labels[a])
    return ref, make_set("samples", nih[b], nih_labels[b]), make_set("samples", kermany, kermany_labels)


@pytest.mark.parametrize("metric,key", [
    ("kid", "kid_thumb16"), ("fd_inf", "fd_inf_thumb16"), ("ks_features", "ks_features_thumb16"),
    ("ks_pixels", "ks_pixels"), ("ks_labels", "ks_labels"), ("labels", "label_mae"), ("labels", "label_js"),
    ("labels", "label_cooccurrence"), ("prdc", "precision_thumb16"), ("prdc", "coverage_thumb16"),
])
def test_real_vs_real_is_closer_than_another_population(populations, metric, key):
    ref, same, other = populations
    m = METRICS.get(metric)()
    v_same = run_metric(m, context(same, ref, n_bootstrap=0))[key]
    v_other = run_metric(m, context(other, ref, n_bootstrap=0))[key]
    if v_same.higher_is_better:
        assert v_same.value > v_other.value, (key, v_same.value, v_other.value)
    else:
        assert v_same.value < v_other.value, (key, v_same.value, v_other.value)
