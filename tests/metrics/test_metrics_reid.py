"""The re-identification score: its definition (per-sample maxima over every training image), its skips and
weights, and on real NIH images the three properties that set it beside memorization: held-out patients score at
the real level, near-copies of training images are re-identified, and other films of training patients are caught
by re-identification while pixel/feature memorization misses them."""

import numpy as np
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.features.reid import random_reidnet
from cxrbench.metrics.memorization import Memorization
from cxrbench.metrics.reid import ReID

from ..metric_helpers import context, feature_set, shared_data


@pytest.fixture(scope="module")
def toy():
    imgs = synthetic_cxr(22, 64, seed=3)
    return {"train": imgs[:10], "gen": imgs[10:16], "ref": imgs[16:]}


def _ctx(toy, **settings):
    f = lambda x: {"thumb": x.flatten(1)[:, :4].numpy()}
    return context(feature_set("samples", f(toy["gen"]), images=toy["gen"]),
                   feature_set("reference", f(toy["ref"]), images=toy["ref"]),
                   feature_set("train", f(toy["train"]), images=toy["train"]), **settings)


def test_value_is_the_share_of_per_sample_maxima_above_the_threshold(toy):
    net = random_reidnet(0)
    with torch.no_grad():  # brute force: the published forward on every sample-training pair
        p = torch.stack([torch.sigmoid(net(net.preprocess(g[None]).expand(10, -1, -1, -1),
                                           net.preprocess(toy["train"]))[:, 0]) for g in toy["gen"]]).numpy()
    best = p.max(1)
    thr = float(np.median(best))  # a threshold that splits this random network's maxima
    out = ReID().compute(_ctx(toy, reid_weights="random", reid_threshold=thr))
    assert out["reid"].value == pytest.approx(float((best > thr).mean()))
    assert out["reid_mean"].value == pytest.approx(float(best.mean()), abs=1e-6)
    assert out["reid"].extra["closest_pairs"][0]["probability"] == pytest.approx(float(best.max()), abs=1e-6)
    assert out["reid"].extra["weights"] == "random:0" and out["reid"].higher_is_better is False
    lo, hi = out["reid_mean"].ci
    assert lo <= out["reid_mean"].value <= hi
    assert ReID().compute(_ctx(toy, reid_weights="random", reid_threshold=0.0))["reid"].value == 1.0
    assert ReID().compute(_ctx(toy, reid_weights="random", reid_threshold=1.0))["reid"].value == 0.0


def test_skipped_without_training_images(toy):
    ctx = _ctx(toy)
    assert ReID().skip_reason(ctx) is None
    ctx.train = None
    assert "--train-reference" in ReID().skip_reason(ctx) and ReID().compute(ctx) == {}
    ctx = _ctx(toy)
    ctx.train.load_images = None  # a protocol's training split shipped as features only
    assert "train: images are not available" in ReID().skip_reason(ctx)


def test_a_state_dict_file_is_used_and_named(toy, tmp_path):
    net = random_reidnet(5)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    a = ReID().compute(_ctx(toy, reid_weights=str(tmp_path / "net.pt")))
    b = ReID().compute(_ctx(toy, reid_weights="random", seed=5))
    assert len(a["reid"].extra["weights"]) == 64  # the file's sha256
    assert a["reid_mean"].value == pytest.approx(b["reid_mean"].value, abs=1e-6)


# --------------------------------------------------------------------------------------------------------
# real radiographs, the shipped verification network (patients it never saw: tests/reid_sets.py)


@pytest.fixture(scope="module")
def real():
    data = shared_data()
    if data is None or not (data / "nih_extra_256px").is_dir():
        pytest.skip("needs ../shared/data/nih_extra_256px")
    from cxrbench.features.cxr128 import CXR128Extractor

    from ..reid_sets import build_sets, near_copies
    from ..reid_sets import feature_set as fset

    sets = build_sets(data, n_train_single=40, n_other=80)
    ext = CXR128Extractor()
    train = fset("train", sets["train"]["images"], ext, patients=sets["train"]["patients"])
    ref = fset("reference", sets["reference"]["images"], ext, patients=sets["reference"]["patients"])
    n_multi = sets["n_train_patients_with_more_images"]
    gens = {"heldout": (sets["heldout"]["images"], sets["heldout"]["patients"]),
            "same_patient": (sets["same_patient"]["images"], sets["same_patient"]["patients"]),
            "near_copies": (near_copies(sets["train"]["images"][:n_multi], "mixed"), sets["train"]["patients"][:n_multi])}
    out = {"sets": {"train": train, "reference": ref}}
    for k, (imgs, patients) in gens.items():
        gen = fset("samples", imgs, ext, patients=patients)
        ctx = context(gen, ref, train)
        out[k] = {"gen": gen, "reid": ReID().compute(ctx), "mem": Memorization().compute(ctx)["memorization_cxr128"]}
    return out


def test_heldout_patients_score_at_the_real_level(real):
    r = real["heldout"]["reid"]["reid"]
    assert r.value <= 0.1 and abs(r.value - r.real_vs_real) <= 0.1
    assert r.extra["reference_shares_patients"] == 0.0  # the reference holds other patients only
    m = real["heldout"]["reid"]["reid_mean"]
    assert abs(m.value - m.real_vs_real) <= 0.02


def test_near_copies_of_training_images_are_reidentified(real):
    r, held = real["near_copies"]["reid"], real["heldout"]["reid"]
    # flipped, shifted, noised or re-exposed training images: well above unseen patients, intervals apart
    assert r["reid"].ci[0] > max(r["reid"].real_vs_real, held["reid"].ci[1])
    assert r["reid_mean"].ci[0] > held["reid_mean"].ci[1]
    # the pairs named are the planted ones: a near-copy's best match is its own source image
    top = r["reid"].extra["closest_pairs"][0]
    assert top["sample"].replace("samples", "train") == top["train"]


@pytest.mark.xfail(strict=True, reason="the shipped 128 px verification network (held-out pair AUROC 0.84) does not "
                   "re-identify other films of a training patient above the calibrated 5% real level; measured: "
                   "reid 0.02 on them against 0.0-0.05 on other patients (tests/benchmarks/reid_vs_memorization.py)")
def test_shipped_network_catches_other_films_of_training_patients(real):
    same, held = real["same_patient"]["reid"]["reid"], real["heldout"]["reid"]["reid"]
    assert same.ci[0] > held.ci[1] and same.value >= held.value + 0.3


class _OracleVerifier(torch.nn.Module):
    """A verifier that knows each image's patient (looked up by its pixels): the metric's aggregation isolated
    from any network's skill. Branch features are one-hot patient codes; the published head on ``|a - b|``."""

    def __init__(self, images: dict):
        super().__init__()
        self.codes = {k: i for i, k in enumerate(sorted(set(images.values())))}
        self.patient_of = images
        self.fc_end = torch.nn.Linear(len(self.codes), 1)
        with torch.no_grad():
            self.fc_end.weight.fill_(-10.0)
            self.fc_end.bias.fill_(5.0)

    def preprocess(self, x):
        return x

    def forward_once(self, x):
        out = torch.zeros(len(x), len(self.codes))
        for i, im in enumerate(x):
            out[i, self.codes[self.patient_of[im.numpy().tobytes()]]] = 1.0
        return out

    def pair_logits(self, ea, eb):
        return (ea[:, None, :] - eb[None, :, :]).abs() @ self.fc_end.weight[0] + self.fc_end.bias[0]

    def describe(self):
        return "oracle"


def test_other_films_of_training_patients_caught_by_reid_missed_by_memorization(real, monkeypatch):
    import cxrbench.metrics.reid as reid_module

    table = {}
    for fs in (*real["sets"].values(), real["same_patient"]["gen"], real["heldout"]["gen"]):
        for i, p in enumerate(fs.patient_ids):
            table[fs.load_images([i])[0].numpy().tobytes()] = str(p)
    monkeypatch.setattr(reid_module, "load_reid_network", lambda *a, **k: (_OracleVerifier(table), "oracle"))
    ctx = lambda k: context(real[k]["gen"], real["sets"]["reference"], real["sets"]["train"])
    same, held = ReID().compute(ctx("same_patient"))["reid"], ReID().compute(ctx("heldout"))["reid"]
    # every other film of a training patient is linked to that patient; no image of another patient is
    assert same.value == 1.0 and held.value == 0.0 and same.real_vs_real == 0.0
    # the nearest-neighbour memorization score in the cxr128 embedding flags few of them (0.17 here, 0.03 with the
    # benchmark's larger training set): another film is not a near-copy
    mem = real["same_patient"]["mem"]
    assert mem.ci[1] < 0.35


def test_functional_entry_takes_image_arrays_and_is_the_registered_metric(toy):
    from cxrbench.metrics import functional as F

    reg = ReID().compute(_ctx(toy, reid_weights="random", n_bootstrap=30))
    f = F.reid(real=toy["ref"], fake=toy["gen"][:, 0].numpy(), train=toy["train"], weights="random", ci=True,
               n_bootstrap=30)
    for key in ("reid", "reid_mean"):
        assert f[key].value == pytest.approx(reg[key].value, abs=1e-6)
        assert f[key].real_vs_real == pytest.approx(reg[key].real_vs_real, abs=1e-6)
        assert f[key].ci == pytest.approx(reg[key].ci, abs=1e-6)
    from cxrbench.errors import DataError

    with pytest.raises(DataError, match="train: no images"):
        F.reid(real=toy["ref"], fake=toy["gen"], train=toy["train"][:0], weights="random")
