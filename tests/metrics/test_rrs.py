"""Reconstructed-representation score (rrs_moco): identities, agreement with brute force, source matching,
the response to distortions, and the metric end to end through the harness."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from baselines.moco import Config, MoCoCXR
from cxrbench.cli import main
from cxrbench.config import EvalConfig
from cxrbench.data.splits import real_vs_real_split
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import DataError
from cxrbench.features.base import bn_recalibrate
from cxrbench.features.moco import MoCoExtractor
from cxrbench.metrics import rrs
from cxrbench.metrics.base import EvalContext, FeatureSet

from ..conftest import write_pngs


def tiny_extractor(size=32, seed=0) -> MoCoExtractor:
    """A randomly initialised, BatchNorm-recalibrated tiny MoCo backbone."""
    torch.manual_seed(seed)
    model = MoCoCXR(Config(image_size=size, width=8, feature_dim=16, queue_size=32, batch_size=16, bn_splits=2))
    bn_recalibrate(model.encoder_q.backbone, model.preprocess(synthetic_cxr(32, size, seed=123)))
    return MoCoExtractor(model=model)


def feature_set(name, feats, ids=None, manifest=None, patient_ids=None):
    ids = ids or [f"{name}_{i:03d}.png" for i in range(len(feats))]
    return FeatureSet(name=name, ids=ids, hashes=list(ids), features={"moco": np.asarray(feats, np.float32)},
                      manifest=manifest, patient_ids=patient_ids)


def compute(gen, ref, **cfg):
    ctx = EvalContext(gen=gen, ref=ref, train=None, extractors={"moco": {"kind": "embedding"}},
                      config=EvalConfig(**{"n_bootstrap": 50, **cfg}))
    return rrs.RRS().compute(ctx)["rrs_moco"]


def paired(gen_feats, ref, sources):
    return feature_set("gen", gen_feats, manifest=pd.DataFrame({"source": sources}))


def test_an_image_against_itself_scores_zero():
    x = synthetic_cxr(12, 32, seed=0)
    f = tiny_extractor().extract(x).numpy()
    ref = feature_set("ref", f)
    order = np.random.default_rng(0).permutation(12)  # samples listed in another order than the reference
    v = compute(paired(f[order], ref, [ref.ids[i] for i in order]), ref)
    assert v.extra["mode"] == "paired" and v.higher_is_better is False
    assert abs(v.value) < 1e-12 and max(v.extra["per_image"]["scores"]) < 1e-12
    assert v.extra["per_image"]["matched"] == [ref.ids[i] for i in order]
    assert v.ci[1] < 1e-12
    # unpaired: each image's nearest reference image is itself
    assert abs(compute(feature_set("gen", f), ref).value) < 1e-12


def test_mild_change_scores_below_a_different_image():
    ext = tiny_extractor()
    x = synthetic_cxr(24, 32, seed=10)
    g = torch.Generator().manual_seed(0)
    # photometric: a random backbone aliases under 1-px shifts at 32 px, so the mild change is intensity only
    mild = (x * 1.03 + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    fx, fm = ext.extract(x).numpy(), ext.extract(mild).numpy()
    ref = feature_set("ref", fx)
    own = compute(paired(fm, ref, ref.ids), ref)
    other = compute(paired(fm, ref, ref.ids[1:] + ref.ids[:1]), ref)  # each against another image
    assert own.value < 0.5 * other.value
    s_own, s_other = np.array(own.extra["per_image"]["scores"]), np.array(other.extra["per_image"]["scores"])
    assert (s_own < s_other).all()


def test_score_grows_with_the_distortion():
    ext = tiny_extractor()
    x = synthetic_cxr(16, 32, seed=3)
    ref = feature_set("ref", ext.extract(x).numpy())
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [compute(paired(ext.extract((x + s * noise).clamp(0, 1)).numpy(), ref, ref.ids), ref).value
              for s in (0.0, 0.01, 0.03, 0.1)]
    assert values[0] < 1e-12 and all(a < b for a, b in zip(values, values[1:])), values


def test_nearest_cosine_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 5)), rng.normal(size=(53, 5))
    b[7] = 0.0  # a zero vector has cosine 0 with everything
    sim, idx = rrs.nearest_cosine(a, b, block=8)  # several tiles in both directions
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    full = an @ bn.T
    np.testing.assert_allclose(sim, full.max(1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(idx, full.argmax(1))
    v = compute(feature_set("gen", a), feature_set("ref", b))
    assert v.extra["mode"] == "nearest"
    assert v.value == pytest.approx(float((1 - full.max(1)).mean()), abs=1e-9)
    assert v.extra["per_image"]["matched"] == [f"ref_{j:03d}.png" for j in full.argmax(1)]


def test_real_vs_real_is_leave_one_out_across_patients():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(40, 6)).astype(np.float32)  # as features are stored
    pids = [f"p{i // 2}" for i in range(40)]
    r[1] = r[0] * 3  # the same patient twice: must not count as each other's neighbour
    v = compute(feature_set("gen", rng.normal(size=(10, 6))), feature_set("ref", r, patient_ids=pids), seed=3)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = rn.astype(np.float64) @ rn.T.astype(np.float64)
    same = np.array(pids)[:, None] == np.array(pids)[None, :]
    expected = float((1 - np.where(same, -np.inf, sim).max(1)).mean())
    assert v.real_vs_real == pytest.approx(expected, abs=1e-6)
    # without patient ids only the image itself is left out: the copy at row 1 is row 0's neighbour
    v_img = compute(feature_set("gen", rng.normal(size=(10, 6))), feature_set("ref", r), seed=3)
    assert v_img.real_vs_real < v.real_vs_real
    a, b = real_vs_real_split(40, 3, pids)
    sim_ab, _ = rrs.nearest_cosine(r[a], r[b])
    assert v.extra["real_vs_real_halves"] == pytest.approx(float((1 - sim_ab).mean()), abs=1e-9)


def test_real_vs_real_matches_new_real_images_on_average():
    # held-out draws of the reference distribution score like the leave-one-out floor, halves score above it
    rng = np.random.default_rng(5)
    centre = rng.normal(size=16)
    draw = lambda n: centre + rng.normal(size=(n, 16))
    v = compute(feature_set("gen", draw(400)), feature_set("ref", draw(400)), n_bootstrap=200)
    assert v.ci[0] <= v.real_vs_real <= v.ci[1]
    assert v.extra["real_vs_real_halves"] > v.ci[1]


def test_sources_match_ids_paths_and_unique_file_names():
    ids = ["a/x.png", "b/x.png", "b/y.png", "z.png"]
    got = rrs.match_sources(["a/x.png", "./b/y.png", "/data/ref/b/x.png", "y.png", "x.png", "q.png",
                             "C:\\ref\\z.png"], ids)
    assert got.tolist() == [0, 2, 1, 2, -1, -1, 3]  # "x.png" is ambiguous


def test_bad_manifests_are_data_errors():
    f = np.eye(4)
    ref = feature_set("ref", f)
    with pytest.raises(DataError, match="name no reference image.*ref_000.png"):
        compute(paired(f, ref, ["ref_000.png", "nope.png", "ref_002.png", "ref_003.png"]), ref)
    with pytest.raises(DataError, match="1 of 4 rows have no `source`"):
        compute(paired(f, ref, ["ref_000.png", None, "ref_002.png", "ref_003.png"]), ref)
    # an all-empty column is no pairing at all: nearest mode
    assert compute(paired(f, ref, [None] * 4), ref).extra["mode"] == "nearest"


def test_large_sets_store_a_histogram_not_per_image_scores(monkeypatch):
    monkeypatch.setattr(rrs, "PER_IMAGE_MAX", 5)
    rng = np.random.default_rng(2)
    v = compute(feature_set("gen", rng.normal(size=(30, 4))), feature_set("ref", rng.normal(size=(20, 4))))
    assert "per_image" not in v.extra and sum(v.extra["histogram"]["counts"]) == 30
    assert len(v.extra["histogram"]["edges"]) == rrs.HIST_BINS + 1


def test_rrs_and_fid_in_moco_space_through_the_cli(tmp_path):
    torch.manual_seed(0)
    model = MoCoCXR(Config(image_size=32, width=8, feature_dim=16, queue_size=32, batch_size=16, bn_splits=2))
    bn_recalibrate(model.encoder_q.backbone, model.preprocess(synthetic_cxr(32, 32, seed=123)))
    model.eval().save_pretrained(tmp_path / "moco")
    ref_imgs = synthetic_cxr(12, 32, seed=0)
    ref = write_pngs(tmp_path / "ref", ref_imgs, prefix="r")
    recon = (ref_imgs[:8] + 0.02 * torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    samples = write_pngs(tmp_path / "samples", recon, prefix="s")
    pd.DataFrame({"path": [f"s_{i:04d}.png" for i in range(8)], "source": [f"r_{i:04d}.png" for i in range(8)]}
                 ).to_csv(samples / "manifest.csv", index=False)
    out = tmp_path / "result.json"
    rc = main(["evaluate", "--samples", str(samples), "--reference", str(ref), "--extractors", "moco",
               "--metrics", "rrs_moco,fid", "--moco-checkpoint", str(tmp_path / "moco"), "--n-bootstrap", "20",
               "--num-workers", "0",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    assert set(m) == {"rrs_moco", "fid_moco"}
    assert m["rrs_moco"]["mode"] == "paired" and m["rrs_moco"]["higher_is_better"] is False
    assert res["extractors"]["moco"]["weights"] == MoCoExtractor(weights=tmp_path / "moco").weights_id
    # the per-image scores follow the samples' order and name their sources
    per = m["rrs_moco"]["per_image"]
    assert [p.replace("s_", "r_") for p in per["ids"]] == per["matched"]
    assert m["rrs_moco"]["value"] < m["rrs_moco"]["real_vs_real"]


def test_functional_entry_is_the_registered_metric_and_pairs_by_index():
    rng = np.random.default_rng(3)
    g, r = rng.standard_normal((15, 8)), rng.standard_normal((40, 8))
    ref = feature_set("ref", r)
    reg = compute(feature_set("gen", g), ref)
    from cxrbench.metrics import functional as F
    f = F.rrs(real=r.astype(np.float32), fake=g.astype(np.float32), ci=True, n_bootstrap=50)
    assert f.value == pytest.approx(reg.value, abs=1e-6) and f.real_vs_real == pytest.approx(reg.real_vs_real, abs=1e-6)
    assert f.ci == pytest.approx(reg.ci, abs=1e-6)
    # paired: 1 - cos against the named row, computed here independently
    src = rng.integers(0, 40, 15)
    cos = (g * r[src]).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r[src], axis=1)
    assert F.rrs(real=r, fake=g, source=src).value == pytest.approx(float((1 - cos).mean()), abs=1e-12)
    with pytest.raises(DataError, match="source"):
        F.rrs(real=r, fake=g, source=src[:3])
    with pytest.raises(TypeError):
        F.rrs(r, g)  # keyword-only, like every functional entry
