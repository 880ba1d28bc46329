"""MoCo-CXR (seed 002): augmentations, training, clustering term, checkpoints, save/load, the extractor."""

import csv
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from baselines.moco import Config, MoCoCXR, augment
from baselines.trainer import Batch
from cxrbench.data.io import sha256_file
from cxrbench.data.labels import LABELS
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.errors import UsageError, WeightsError
from cxrbench.features.moco import MoCoExtractor
from cxrbench.registry import EXTRACTORS, REPRESENTATIONS
from cxrbench.seeding import seed_everything, torch_generator
from cxrbench.training import TrainOptions

NAN = float("nan")


class TensorSet(torch.utils.data.Dataset):
    """(image, label vector) items like cxrbench.data.ImageFolder; labels None means unlabelled."""

    def __init__(self, images, labels=None):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        lab = torch.full((len(LABELS),), NAN) if self.labels is None else self.labels[i]
        return self.images[i], lab


def tiny(**kw) -> Config:
    base = dict(image_size=32, width=8, feature_dim=16, batch_size=16, bn_splits=2, queue_size=32, lr=0.05,
                momentum=0.9, num_clusters=2)
    return Config(**{**base, **kw})


def opts(steps, **kw) -> TrainOptions:
    return TrainOptions(steps=steps, log_every=1, progress=False, **kw)


def label_vectors(names):
    out = torch.zeros((len(names), len(LABELS)))
    for i, n in enumerate(names):
        if n is None:
            out[i] = NAN
        else:
            out[i, LABELS.index(n)] = 1.0
    return out


def history(out_dir):
    with open(out_dir / "losses.csv") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def smooth_textures(n, size, seed):
    """Distinct smooth random images: instance discrimination is learnable by a tiny net in 100 steps (synthetic
    CXRs differ too little from each other for that)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 1, 6, 6, generator=g), size=size, mode="bilinear", align_corners=False)


def test_registered_under_both_names():
    assert REPRESENTATIONS.get("moco") is MoCoCXR
    assert EXTRACTORS.get("moco") is MoCoExtractor


def test_identity_augmentation_returns_the_image():
    x = synthetic_cxr(4, 32, seed=0)
    cfg = tiny(crop_scale=(1.0, 1.0), rotation_deg=0.0, translate=0.0, brightness=0.0, contrast=0.0)
    # the aspect-ratio draw still happens: with area 1 both sides clamp to the full image
    y = augment(x, cfg, torch_generator(0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_augmentation_is_seeded_in_range_and_grows_with_strength():
    x = synthetic_cxr(8, 32, seed=0)
    a, b = augment(x, tiny(), torch_generator(3)), augment(x, tiny(), torch_generator(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    diffs = []
    for deg in (2.0, 10.0, 30.0):
        cfg = tiny(crop_scale=(1.0, 1.0), rotation_deg=deg, translate=0.0, brightness=0.0, contrast=0.0)
        diffs.append(float((augment(x, cfg, torch_generator(1)) - x).abs().mean()))
    assert diffs[0] < diffs[1] < diffs[2]


def test_instance_train_is_module_train_and_eval_works():
    model = MoCoCXR(tiny())
    model.train(True)
    assert model.training and model.encoder_q.backbone.training
    model.eval()
    assert not model.training and not model.encoder_q.backbone.training


def test_training_lowers_the_contrastive_loss(tmp_path):
    cfg = tiny(image_size=16, queue_size=64, lambda_kmeans=0.0, lr=0.1, crop_scale=(0.8, 1.0), translate=0.05,
               rotation_deg=5.0, schedule_steps=100)
    held_out = smooth_textures(32, 16, seed=1)
    seed_everything(0)  # the same init as train() builds with TrainOptions(seed=0)
    before = MoCoCXR(cfg).eval_contrastive_loss(held_out, seed=1)
    model = MoCoCXR.train(TensorSet(smooth_textures(64, 16, seed=0)), cfg, tmp_path, options=opts(100), device="cpu")
    after = model.eval_contrastive_loss(held_out, seed=1)
    # below log(32) as well: a collapsed encoder (every embedding equal) scores exactly log(32)
    assert after < before - 0.3 and after < math.log(32) - 0.2, (before, after)
    assert (tmp_path / "loss.png").stat().st_size > 0 and len(history(tmp_path)) == 100


def test_lambda_adds_the_clustering_term_and_changes_training(tmp_path):
    data = TensorSet(synthetic_cxr(32, 32, seed=0))
    runs = {}
    for lam in (0.0, 2.0):
        out = tmp_path / f"lam{lam}"
        model = MoCoCXR.train(data, tiny(lambda_kmeans=lam), out, options=opts(3), device="cpu")
        runs[lam] = (history(out), model.state_dict(), json.loads((out / "clusters.json").read_text()))
    (h0, s0, c0), (h2, s2, c2) = runs[0.0], runs[2.0]
    assert c0["mode"] == "off" and c2["mode"] == "kmeans"  # no labels: learned k-means
    # step 1: same init, same batch, same views -> same InfoNCE; the total adds lambda * L_kmeans
    assert h0[0]["loss_moco"] == pytest.approx(h2[0]["loss_moco"], rel=1e-6)
    assert h2[0]["loss_kmeans"] > 0
    assert h2[0]["loss"] == pytest.approx(h2[0]["loss_moco"] + 2.0 * h2[0]["loss_kmeans"], rel=1e-5)
    assert h0[0]["loss"] == pytest.approx(h0[0]["loss_moco"], rel=1e-6)
    w = "encoder_q.backbone.conv1.weight"
    assert not torch.allclose(s0[w], s2[w])


def test_label_groups_most_frequent_first_and_capped():
    names = ["No Finding"] * 5 + ["Pneumonia"] * 3 + ["Effusion"] + [None] * 2
    data = TensorSet(synthetic_cxr(len(names), 16, seed=0), label_vectors(names))
    model = MoCoCXR(tiny(image_size=16))
    model.on_train_start(data)
    assert model.clustering() == {"mode": "labels", "groups": ["No Finding", "Pneumonia"]}
    assert model.groups_of(data.labels).tolist() == [0] * 5 + [1] * 3 + [-1] + [-1] * 2
    unlabelled = MoCoCXR(tiny(image_size=16))
    unlabelled.on_train_start(TensorSet(data.images))
    assert unlabelled.clustering()["mode"] == "kmeans" and (unlabelled.groups_of(data.labels) == -1).all()
    off = MoCoCXR(tiny(image_size=16, use_labels=False))
    off.on_train_start(data)
    assert off.clustering()["mode"] == "kmeans"


def test_label_clustering_uses_the_label_groups(tmp_path):
    imgs = torch.cat([synthetic_cxr(16, 32, shift=0.0, seed=0), synthetic_cxr(16, 32, shift=1.0, seed=1)])
    data = TensorSet(imgs, label_vectors(["No Finding"] * 16 + ["Effusion"] * 16))
    # queue_fraction 1: the whole 32-key queue for the 32 images
    model = MoCoCXR.train(data, tiny(lambda_kmeans=1.0, queue_fraction=1.0), tmp_path, options=opts(2), device="cpu")
    info = json.loads((tmp_path / "clusters.json").read_text())
    assert info == {"mode": "labels", "groups": ["Effusion", "No Finding"]}
    # each centroid is the normalised mean of its group's keys: after 2 steps of 16 the queue (32) holds exactly
    # the keys the last centroid update saw (queued keys of step 1 + this batch's)
    q, grp = model.queue, model.queue_group
    assert int(model.queue_len) == 32 and sorted(set(grp.tolist())) == [0, 1]
    for j in range(2):
        mean = F.normalize(q[grp == j].mean(0), dim=0)
        torch.testing.assert_close(model.centroids[j], mean, atol=1e-5, rtol=0)


def test_save_load_round_trip_gives_identical_embeddings(tmp_path):
    data = TensorSet(synthetic_cxr(32, 32, seed=0))
    model = MoCoCXR.train(data, tiny(), tmp_path / "run", options=opts(2), device="cpu")
    x = synthetic_cxr(6, 40, seed=5)  # another size: the model's own preprocessing resizes
    loaded = MoCoCXR.from_pretrained(tmp_path / "run")
    assert torch.equal(model.embed(x), loaded.embed(x))
    ext = MoCoExtractor(weights=tmp_path / "run", device="cpu")
    assert torch.equal(ext.extract(x), model.embed(x))
    assert ext.weights_id == sha256_file(tmp_path / "run" / "model.pt")
    assert ext.num_features == model.num_features == 64 and ext.input_size == 32
    # identical weights saved again give the same file, hence the same weights_id
    model.save_pretrained(tmp_path / "again")
    assert MoCoExtractor(weights=tmp_path / "again" / "model.pt").weights_id == ext.weights_id


def test_encode_is_differentiable_in_the_images():
    model = MoCoCXR(tiny()).eval()
    x = synthetic_cxr(2, 32, seed=0).requires_grad_(True)
    model.encode(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(model.encode(x.detach()), model.embed(x.detach()))


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    data = TensorSet(synthetic_cxr(32, 32, seed=0), label_vectors(["No Finding", "Pneumonia"] * 16))
    cfg = tiny(lambda_kmeans=0.5, use_labels=False, schedule_steps=6)
    full = MoCoCXR.train(data, cfg, tmp_path / "full", options=opts(6), device="cpu")
    MoCoCXR.train(data, cfg, tmp_path / "split", options=opts(3), device="cpu")
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["step"] == 3
    resumed = MoCoCXR.train(data, cfg, tmp_path / "split", options=opts(6), device="cpu")
    def losses(run):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in history(tmp_path / run)]

    assert losses("full") == losses("split") and len(losses("full")) == 6
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tmp_path):
    data = TensorSet(synthetic_cxr(32, 32, seed=0))
    MoCoCXR.train(data, tiny(), tmp_path, options=opts(1), device="cpu")
    with pytest.raises(UsageError, match="different config"):
        MoCoCXR.train(data, tiny(lr=0.5), tmp_path, options=opts(2), device="cpu")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="bn_splits"):
        tiny(batch_size=10, bn_splits=4)
    with pytest.raises(ValueError, match="arch"):
        tiny(arch="vgg")
    with pytest.raises(ValueError, match="queue_size"):
        tiny(queue_size=8)


def test_extractor_without_a_checkpoint_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="--moco-checkpoint"):
        MoCoExtractor(weights=None)
    with pytest.raises(WeightsError, match="config.json and model.pt"):
        MoCoExtractor(weights=tmp_path)


def test_random_extractor_is_seeded_and_well_scaled():
    x = synthetic_cxr(4, 64, seed=3)
    ext = MoCoExtractor(weights="random", seed=0)
    a, b = ext.extract(x), MoCoExtractor(weights="random", seed=0).extract(x)
    assert torch.equal(a, b) and a.shape == (4, 512) and ext.weights_id == "random:0"
    # BatchNorm statistics from synthetic radiographs keep random-init features O(1)
    assert 0.05 < float(a.std()) < 20 and torch.isfinite(a).all()


def test_cxrbench_train_moco_from_a_folder(tmp_path):
    from cxrbench.cli import main
    from tests.conftest import write_pngs

    folder = write_pngs(tmp_path / "imgs", synthetic_cxr(16, 24, seed=0))
    (tmp_path / "moco.toml").write_text("width = 8\nbatch_size = 8\nbn_splits = 2\nqueue_size = 16\nfeature_dim = 8\n")
    rc = main(["train", "moco", "--data", str(folder), "--out", str(tmp_path / "run"), "--image-size", "16",
               "--device", "cpu", "--config", str(tmp_path / "moco.toml"), "--steps", "2", "--quiet"])
    assert rc == 0 and (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "loss.png").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["image_size"] == 16
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 2
    assert MoCoExtractor(weights=tmp_path / "run").num_features == 64


def test_queue_is_capped_at_a_fraction_of_a_small_training_set():
    data = TensorSet(synthetic_cxr(40, 32, seed=0))
    model = MoCoCXR(tiny(batch_size=4, queue_size=64, queue_fraction=0.25))
    with pytest.warns(UserWarning, match="queue of 10 keys"):
        model.on_train_start(data)
    assert int(model.queue_limit) == 10
    # the rows past the limit are never negatives (NaN there would make the loss NaN) nor written
    model.queue[10:] = NAN
    opt = model.configure_optimizers()
    for step in range(6):  # 24 keys through a 10-key queue
        batch = synthetic_cxr(4, 32, seed=step)
        logged = model.training_step(Batch(batch, torch.full((4, len(LABELS)), NAN)), opt, step)
        assert math.isfinite(logged["loss"])
    assert int(model.queue_len) == 10 and model.queue[10:].isnan().all() and not model.queue[:10].isnan().any()
    # a queue within the fraction is kept whole, without a warning
    whole = MoCoCXR(tiny(batch_size=4, queue_size=8, queue_fraction=0.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole.on_train_start(data)
    assert int(whole.queue_limit) == 8


def test_folder_saved_before_the_queue_limit_loads_with_the_whole_queue(tmp_path):
    model = MoCoCXR(tiny())
    model.save_pretrained(tmp_path)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    del state["queue_limit"]
    torch.save(state, tmp_path / "model.pt")
    loaded = MoCoCXR.from_pretrained(tmp_path)
    assert int(loaded.queue_limit) == 32
    x = synthetic_cxr(2, 32, seed=1)
    assert torch.equal(model.embed(x), loaded.embed(x))
