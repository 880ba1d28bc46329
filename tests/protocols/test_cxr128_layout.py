"""cxr128's layout network (shipped since version 4): trained on degraded views so that quality says nothing
about the layout class, and what it adds to the features: its logits after the embedding, whitened on their own
and weighted by the gain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrbench.errors import WeightsError
from cxrbench.features import cxr128 as feat


def _chests(n: int = 6) -> torch.Tensor:
    from cxrbench.data.synthetic import synthetic_cxr

    return feat.to_cxr128(synthetic_cxr(n, 128, seed=3))


def test_layout_classes_are_the_pretext_classes_in_order():
    from baselines.cxr128layout import LAYOUT_EXTRA, Config, CXR128LayoutTrainer
    from baselines.cxr128net import ORIENTATIONS

    assert feat.LAYOUT_CLASSES == (*ORIENTATIONS, *LAYOUT_EXTRA)
    assert CXR128LayoutTrainer(Config()).net.head.out_features == len(feat.LAYOUT_CLASSES)
    with pytest.raises(ValueError, match="classes_extra"):
        Config(classes_extra=("hflip", "kaleidoscope"))


def test_degradation_is_drawn_apart_from_the_class():
    """The views are degraded after their class is applied, with draws that do not depend on it: with the
    position-bound families off (noise, low resolution), degrading a mirrored chest gives the mirror image of the
    same chest degraded under the same draws, so no quality cue can tell the classes apart; every family on
    changes the image and keeps it in [0, 1]."""
    from baselines.cxr128layout import Config, degrade

    x = _chests()
    c = Config(lowres_prob=0.0, noise_prob=0.0, blur_prob=1.0, fade_prob=1.0, gamma_prob=1.0)
    torch.manual_seed(0)
    upright = degrade(x, c)
    torch.manual_seed(0)
    mirrored = degrade(x.flip(-1), c)
    assert torch.allclose(mirrored, upright.flip(-1), atol=1e-5)
    assert not torch.allclose(upright, x, atol=1e-2)
    off = Config(lowres_prob=0.0, noise_prob=0.0, blur_prob=0.0, fade_prob=0.0, gamma_prob=0.0)
    assert torch.allclose(degrade(x, off), x.clamp_min(1e-4), atol=1e-6)
    strong = degrade(x, Config(lowres_prob=1.0, noise_prob=1.0, blur_prob=1.0, fade_prob=1.0, gamma_prob=1.0))
    assert strong.shape == x.shape and strong.min() >= 0 and strong.max() <= 1


def test_layout_training_step_runs_the_classes_and_lowers_the_loss():
    """A few steps on one batch of synthetic chests fit their classes: the loss falls (the head and the degraded
    views are wired to the right targets)."""
    from baselines.cxr128layout import Config, CXR128LayoutTrainer

    torch.manual_seed(0)
    model = CXR128LayoutTrainer(Config(lowres_prob=0.0, noise_prob=0.0, blur_prob=0.0, fade_prob=0.0,
                                       gamma_prob=0.0, crop_scale=(1.0, 1.0), rotation_deg=0.0, translate=0.0))
    opt = model.configure_optimizers()["adamw"]
    x = _chests(32)
    first = []
    for step in range(40):
        torch.manual_seed(step % 2)  # two fixed batches of classes: the loss can only fall by learning them
        out = model.losses(x)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first.append(float(out["loss"].detach()))
    assert np.mean(first[-4:]) < 0.5 * np.mean(first[:4]), first


def _candidate(folder, *, layout: bool = True):
    """A candidate folder: the shipped embedding network and a seeded random layout network beside it."""
    import shutil

    from cxrbench.features.cxr128 import CXR128Net

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(feat.shipped_path(feat.WEIGHTS_FILE), folder / feat.WEIGHTS_FILE)
    if layout:
        torch.manual_seed(0)
        torch.save(CXR128Net(num_labels=len(feat.LAYOUT_CLASSES)).state_dict(), folder / feat.LAYOUT_FILE)
    return folder


def test_a_candidate_with_a_layout_network_appends_its_logits_after_the_embedding(tmp_path):
    """The first 128 features are the embedding network's, bit for bit; the 8 after them are the layout network's
    logits of the 64 px thumbnail; the spec names the layout file. A folder without a layout network gives the
    embedding alone, as version 3 did."""
    from cxrbench.data.io import sha256_file

    ext = feat.CXR128Extractor(weights=str(_candidate(tmp_path / "with")), whiten=False)
    alone = feat.CXR128Extractor(weights=str(_candidate(tmp_path / "without", layout=False)), whiten=False)
    x = ext.preprocess(_chests(4))
    with torch.no_grad():
        f = ext(x)
        assert f.shape == (4, feat.EMBED_DIM + len(feat.LAYOUT_CLASSES))
        assert torch.equal(f[:, :feat.EMBED_DIM], alone(x))
        assert torch.allclose(f[:, feat.EMBED_DIM:], ext.layout(feat.layout_thumbnail(x)))
    assert ext.spec()["layout"] == sha256_file(tmp_path / "with" / feat.LAYOUT_FILE) and "layout" not in alone.spec()
    assert alone.num_features == feat.EMBED_DIM
    # version 4 ships one: the shipped extractor, and its random-weights twin, are 136 wide
    shipped = feat.CXR128Extractor()
    assert feat.CXR128Extractor.num_features == shipped.num_features == feat.EMBED_DIM + len(feat.LAYOUT_CLASSES)
    assert feat.CXR128Extractor(weights="random").num_features == shipped.num_features
    assert shipped.spec()["layout"] == feat.LAYOUT_SHA256 and shipped.unpublished_weights() is None


def test_a_folder_with_a_layout_network_but_no_embedding_network_is_refused(tmp_path):
    """Without ``cxr128-net.pt`` a folder means the shipped files; one that holds a layout network or a whitening
    would have them silently replaced by the shipped ones, so it is refused, naming the missing file."""
    folder = _candidate(tmp_path / "c")
    (folder / feat.WEIGHTS_FILE).unlink()
    with pytest.raises(WeightsError, match=r"holds cxr128-layout\.pt but no cxr128-net\.pt"):
        feat.CXR128Extractor(weights=str(folder))
    (folder / feat.LAYOUT_FILE).unlink()  # nothing of cxr128's: the shipped files, as before
    assert feat.CXR128Extractor(weights=str(folder)).unpublished_weights() is None


def test_only_the_three_pinned_files_together_make_a_comparable_result(tmp_path):
    """The shipped embedding network beside another layout network, without one, or with another whitening gives
    other numbers: such a result is not comparable, and the reason names the file that differs."""
    import shutil

    with_other_layout = feat.CXR128Extractor(weights=str(_candidate(tmp_path / "a")))
    assert "layout network" in with_other_layout.unpublished_weights()
    without = feat.CXR128Extractor(weights=str(_candidate(tmp_path / "b", layout=False)))
    assert "layout network" in without.unpublished_weights()
    folder = _candidate(tmp_path / "c", layout=False)
    shutil.copy(feat.shipped_path(feat.LAYOUT_FILE), folder / feat.LAYOUT_FILE)
    assert "whitening" in feat.CXR128Extractor(weights=str(folder)).unpublished_weights()  # identity, not the pin
    shutil.copy(feat.shipped_path(feat.WHITEN_FILE), folder / feat.WHITEN_FILE)
    assert feat.CXR128Extractor(weights=str(folder)).unpublished_weights() is None  # the shipped three, copied


def test_a_whitening_of_another_width_is_refused_naming_the_fix(tmp_path):
    _candidate(tmp_path)
    np.savez(tmp_path / feat.WHITEN_FILE, mean=np.zeros(feat.EMBED_DIM), whiten=np.eye(feat.EMBED_DIM))
    with pytest.raises(WeightsError, match=r"fitted on 128 features, but the network gives 136.*refit"):
        feat.CXR128Extractor(weights=str(tmp_path))
    (tmp_path / feat.LAYOUT_FILE).unlink()  # without a layout network: the embedding alone, which that fits
    assert feat.CXR128Extractor(weights=str(tmp_path)).num_features == feat.EMBED_DIM
    (tmp_path / feat.LAYOUT_FILE).write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match=r"cxr128-layout\.pt: not a cxr128 layout state dict"):
        feat.CXR128Extractor(weights=str(tmp_path))


def test_whitening_of_layout_logits_is_a_separate_block_weighted_by_the_gain(tmp_path):
    """``write_whitening`` on 136-d rows: the embedding block is exactly the embedding's own whitening (what the
    embedding alone gets), the layout block the logits' own times the gain, nothing mixes the two, and the sets'
    features are the rows through it."""
    import io

    from baselines.cxr128net import fit_whitening, write_whitening

    rng = np.random.default_rng(0)
    e, k = feat.EMBED_DIM, feat.EMBED_DIM + len(feat.LAYOUT_CLASSES)
    mix = rng.standard_normal((k, k))
    rows = {w: rng.standard_normal((n, k)) @ mix for w, n in (("reference", 60), ("train", 300), ("heldout", 40))}
    for which, x in rows.items():
        buf = io.BytesIO()
        np.savez(buf, features=x.astype(np.float32), meta=np.array(json.dumps({"spec": {}})))
        (tmp_path / f"cxr128-{which}.npz").write_bytes(buf.getvalue())
    write_whitening(tmp_path, layout_gain=3.0)
    z = np.load(tmp_path / feat.WHITEN_FILE)
    w, mean, meta = z["whiten"], z["mean"], json.loads(str(z["meta"]))
    train = rows["train"].astype(np.float32)
    emb, lay = fit_whitening(train[:, :e]), fit_whitening(train[:, e:])
    assert np.array_equal(w[:e, e:], np.zeros((e, k - e))) and np.array_equal(w[e:, :e], np.zeros((k - e, e)))
    assert np.allclose(w[:e, :e], emb["whiten"]) and np.allclose(w[e:, e:], 3.0 * lay["whiten"])
    assert np.allclose(mean, np.concatenate([emb["mean"], lay["mean"]])) and meta["layout_gain"] == 3.0
    got = np.load(tmp_path / "cxr128-heldout.npz")
    assert np.allclose(got["features"], (rows["heldout"] - mean) @ w, rtol=1e-4, atol=1e-3)
    # the layout block of the training rows has covariance gain^2 (Ledoit-Wolf shrinks a little below it)
    cov = np.cov((train[:, e:] - mean[e:]) @ w[e:, e:], rowvar=False)
    assert 0.8 * 9 < np.linalg.eigvalsh(cov).mean() < 1.05 * 9


def test_build_and_whiten_name_a_mistyped_folder_in_one_line(tmp_path, capsys, monkeypatch):
    import baselines.cxr128net as build

    monkeypatch.setattr(build, "portable_cpu_kernels", lambda: None)  # leave this process's kernels alone
    build_main = build.main

    for argv, flag in ((["build", "--run", str(tmp_path / "nope"), "--out", str(tmp_path)], "--run"),
                       (["build", "--run", str(tmp_path), "--layout-run", str(tmp_path / "nope"), "--out", str(tmp_path)],
                        "--run"),
                       (["whiten", "--out", str(tmp_path / "nope")], "--out")):
        with pytest.raises(SystemExit) as e:
            build_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"error: {flag} " in err and "Traceback" not in err, err
    (tmp_path / "model.pt").write_bytes(b"")  # --run passes; the layout run is the mistyped one
    with pytest.raises(SystemExit):
        build_main(["build", "--run", str(tmp_path), "--layout-run", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert "error: --layout-run " in capsys.readouterr().err
