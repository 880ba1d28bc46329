"""Downstream augmentation-gain protocol: planted checks on a learnable synthetic task.

Task: synthetic_cxr with ``shift`` as the class signal (class 1 = shifted, class 0 = shift 0), features from
the seeded ``random-conv`` extractor, linear probe. The shift is 0.3 rather than 1.0: at 1.0 every mode
(even half noise) reaches AUROC 1.0, so a harmful training set could not show.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.evaluate import images_source
from cxrbench.errors import DataError, UsageError
from cxrbench.protocols.augmentation.config import OUTPUTS, AugmentConfig
from cxrbench.protocols.augmentation.labels import _classifier_labels, parse_task
from cxrbench.protocols.augmentation.run import augment
from cxrbench.protocols.augmentation.splits import _test_split
from cxrbench.protocols.augmentation.stats import auroc

from ..conftest import write_pngs

SHIFT = 0.3


def _labeled(imgs: torch.Tensor, y: np.ndarray, name: str, **cols):
    """An in-memory source whose labels table follows the source's canonical (hash) order."""
    src = images_source(imgs, name)
    order = [int(i.split("[")[1][:-1]) for i in src.ids]
    table = {"Pneumonia": y[order], "No Finding": 1 - y[order]}
    table.update({k: np.asarray(v)[order] for k, v in cols.items()})
    src.labels = pd.DataFrame(table)
    return src


def _task_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    x0 = synthetic_cxr(n // 2, 32, 0.0, seed=seed)
    x1 = synthetic_cxr(n - n // 2, 32, SHIFT, seed=seed + 1000)
    return torch.cat([x0, x1]), np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int64)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("augcache"))


def _cfg(cache_dir, **over):
    base = dict(task="Pneumonia vs No Finding", n_real=40, n_test=100, seeds=3, extractor="random-conv",
                weights="random", cache_dir=cache_dir, progress=False, n_bootstrap=100, num_workers=0)
    base.update(over)
    return AugmentConfig(**base)


def test_parse_task_and_errors():
    assert parse_task("edema vs no finding") == ("Edema", "No Finding")
    assert parse_task("Pleural Thickening vs Normal") == ("Pleural_Thickening", "No Finding")
    with pytest.raises(UsageError, match="known labels: .*Edema"):
        parse_task("Edemaa vs No Finding")
    with pytest.raises(UsageError, match="A vs B"):
        parse_task("Edema")
    with pytest.raises(UsageError, match="must differ"):
        parse_task("Edema vs edema")


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 60)
        s = np.round(rng.random(60) + 0.3 * y, 1)  # rounding makes ties
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.ones(5), np.arange(5.0)))


def test_linear_probe_reaches_the_penalised_optimum_found_independently():
    """The probe's scores are the unique minimiser's (found here by scipy's trust-region Newton on sklearn's
    objective, C * log-loss + ||w||^2 / 2, intercept free), not wherever a solver stopped: lbfgs at its default
    tolerance stopped 4e-3 away, so the BLAS kernels of a CPU decided which near-tied test pairs flipped."""
    from scipy.optimize import minimize
    from scipy.special import expit
    from sklearn.preprocessing import StandardScaler

    from cxrbench.protocols.augmentation.classifiers import LinearProbe

    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(100, 64)), rng.normal(size=(160, 64))
    y = (x[:, 0] + rng.normal(size=100) > 0).astype(np.int64)
    cfg = AugmentConfig(c=1.0)
    got = LinearProbe().fit(x, y, xt, seed=1, cfg=cfg, device="cpu")
    scaler = StandardScaler().fit(x)
    a, at = (np.c_[scaler.transform(v), np.ones(len(v))] for v in (x, xt))

    def f(w):
        z = a @ w
        return cfg.c * np.sum(np.logaddexp(0, z) - y * z) + 0.5 * w[:-1] @ w[:-1]

    def grad(w):
        r = cfg.c * a.T @ (expit(a @ w) - y)
        r[:-1] += w[:-1]
        return r

    def hess(w):
        p = expit(a @ w)
        h = cfg.c * (a.T * (p * (1 - p))) @ a
        h[:-1, :-1] += np.eye(a.shape[1] - 1)
        return h

    w = minimize(f, np.zeros(a.shape[1]), jac=grad, hess=hess, method="trust-exact", options={"gtol": 1e-12}).x
    assert np.abs(got - expit(at @ w)).max() < 1e-6  # lbfgs at its default tol: 4e-3


def test_classifier_labels_no_finding_means_nothing_present():
    names = ["Atelectasis", "Effusion", "Pneumonia"]
    p = np.array([[0.1, 0.2, 0.9], [0.1, 0.2, 0.3], [0.6, 0.2, 0.9], [0.6, 0.1, 0.2]])
    assert _classifier_labels(p, names, "Pneumonia", "No Finding").tolist() == [1, 0, 1, -1]
    assert _classifier_labels(p, names, "Pneumonia", "Atelectasis").tolist() == [1, -1, -1, 0]


def test_test_split_is_balanced_patient_disjoint_and_excludes_copies():
    imgs, y = _task_images(60, seed=3)
    imgs = torch.cat([imgs, imgs[:6]])  # six exact copies, filed under other patients
    y = np.r_[y, y[:6]]
    patients = [f"p{i // 3}" for i in range(60)] + [f"copy{i}" for i in range(6)]
    src = _labeled(imgs, y, "real", patient_id=patients)
    src.patient_ids = [str(p) for p in src.labels["patient_id"]]
    yy = src.labels["Pneumonia"].to_numpy().astype(np.int64)
    test, pool = _test_split(src, yy, AugmentConfig(n_test=12, seed=1), ("Pneumonia", "No Finding"))
    assert (yy[test] == 1).sum() == 6 and (yy[test] == 0).sum() == 6
    assert not set(test) & set(pool)
    assert not {src.patient_ids[i] for i in test} & {src.patient_ids[i] for i in pool}
    assert not {src.hashes[i] for i in test} & {src.hashes[i] for i in pool}


def test_same_seeds_same_numbers_and_seeds_redraw(cache_dir):
    imgs, y = _task_images(200, seed=10)
    real = _labeled(imgs, y, "real")
    syn_imgs, ys = _task_images(80, seed=20)
    syn = _labeled(syn_imgs, ys, "synthetic")
    a = augment(real, syn, config=_cfg(cache_dir))
    b = augment(real, syn, config=_cfg(cache_dir))
    assert {k: v.to_dict() for k, v in a.metrics.items()} == {k: v.to_dict() for k, v in b.metrics.items()}
    assert set(a.metrics) == set(OUTPUTS)
    # pool (100) > N (40): each seed draws other training images, so per-seed results differ
    assert len(set(a.metrics["aug_real_auroc"].extra["per_seed"])) > 1
    c = augment(real, syn, config=_cfg(cache_dir, seed=7))
    assert c.details["test_ids"] != a.details["test_ids"]
    # features handed in by a caller (the harness path) give the same numbers as extracting them here
    from cxrbench.config import EvalConfig
    from cxrbench.engine.extraction import build_extractors, extract_features
    from cxrbench.features.cache import FeatureCache

    ecfg = EvalConfig(extractors=("random-conv",), weights="random", progress=False, num_workers=0)
    ex = build_extractors(["random-conv"], ecfg, "cpu")
    fr = extract_features(real, ex, ecfg, FeatureCache(cache_dir), "cpu", "r")[0]["random-conv"]
    fs = extract_features(syn, ex, ecfg, FeatureCache(cache_dir), "cpu", "s")[0]["random-conv"]
    d = augment(real, syn, config=_cfg(cache_dir), real_features=fr, synthetic_features=fs)
    assert {k: v.to_dict() for k, v in d.metrics.items()} == {k: v.to_dict() for k, v in a.metrics.items()}


def _train_test_real(n_train: int, n_test: int, seed: int):
    imgs, y = _task_images(n_train + n_test, seed=seed)
    rng = np.random.default_rng(seed)
    split = np.array(["train"] * (n_train + n_test), dtype=object)
    for c in (0, 1):  # a balanced test split
        split[rng.permutation(np.flatnonzero(y == c))[: n_test // 2]] = "test"
    return imgs, y, split


def test_exact_copies_of_training_images_give_no_gain(cache_dir):
    imgs, y, split = _train_test_real(40, 100, seed=30)
    real = _labeled(imgs, y, "real", split=split)
    tr = np.flatnonzero(split == "train")
    copies = _labeled(imgs[tr], y[tr], "copies")
    out = augment(real, copies, config=_cfg(cache_dir, test_split="test"))
    gain = out.metrics["aug_gain_auroc"]
    assert gain.ci[0] <= 0 <= gain.ci[1], gain
    assert out.metrics["aug_real_auroc"].value > 0.9  # the task is learnable: the planted checks are meaningful
    assert out.metrics["aug_augmented_auroc"].n_gen == 40


def test_noise_with_random_labels_makes_mixed_worse(cache_dir):
    imgs, y, split = _train_test_real(40, 100, seed=40)
    real = _labeled(imgs, y, "real", split=split)
    noise = torch.rand(80, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    syn = _labeled(noise, np.random.default_rng(1).integers(0, 2, 80), "noise")
    out = augment(real, syn, config=_cfg(cache_dir, test_split="test"))
    delta = out.metrics["aug_mixed_delta_auroc"]
    assert delta.ci[1] < -0.05, delta
    assert out.metrics["aug_mixed_auroc"].ci[1] < out.metrics["aug_real_auroc"].ci[0]
    # the noise-only classifier is at chance on real images
    assert abs(out.metrics["aug_synthetic_auroc"].value - 0.5) < 0.2


def test_too_few_images_and_missing_labels_are_clear_errors(cache_dir):
    imgs, y = _task_images(60, seed=50)
    real = _labeled(imgs, y, "real")
    with pytest.raises(DataError, match=r"needs 50 images of class 0 but has \d+ .*lower --n-real"):
        augment(real, real, config=_cfg(cache_dir, n_real=100, n_test=20))
    with pytest.raises(DataError, match="cannot draw 80 balanced test images.*30 Pneumonia and 30 No Finding"):
        augment(real, real, config=_cfg(cache_dir, n_test=80))
    bare = images_source(imgs, "bare")
    with pytest.raises(DataError, match="need labels for 'Pneumonia' and 'No Finding'"):
        augment(bare, real, config=_cfg(cache_dir))
    with pytest.raises(UsageError, match="--classifier"):
        augment(real, real, config=_cfg(cache_dir, classifier="svm"))


def test_small_cnn_learns_and_is_reproducible():
    from cxrbench.protocols.augmentation.classifiers import _fit_torch

    imgs, y = _task_images(80, seed=60)
    tr, te = np.r_[0:20, 40:60], np.r_[20:40, 60:80]
    cfg = AugmentConfig(classifier="cnn", epochs=8, batch_size=16)
    a = _fit_torch(imgs[tr], y[tr], imgs[te], seed=1, cfg=cfg, device="cpu")
    b = _fit_torch(imgs[tr], y[tr], imgs[te], seed=1, cfg=cfg, device="cpu")
    assert np.array_equal(a, b)
    assert auroc(y[te], a) > 0.8


@pytest.mark.slow
def test_cnn_through_the_protocol_is_reproducible(cache_dir):
    imgs, y, split = _train_test_real(20, 20, seed=62)
    real = _labeled(imgs, y, "real", split=split)
    cfg = _cfg(cache_dir, classifier="cnn", test_split="test", n_real=20, n_test=20, seeds=1, epochs=2,
               image_size=32, batch_size=16, n_bootstrap=20)
    a = augment(real, real, config=cfg)
    b = augment(real, real, config=cfg)
    assert {k: v.to_dict() for k, v in a.metrics.items()} == {k: v.to_dict() for k, v in b.metrics.items()}
    assert a.metrics["aug_augmented_auroc"].n_gen == 20


@pytest.mark.slow
def test_densenet_fine_tuning_smoke(cache_dir):
    imgs, y, split = _train_test_real(16, 16, seed=70)
    real = _labeled(imgs, y, "real", split=split)
    cfg = _cfg(cache_dir, classifier="densenet", test_split="test", n_real=16, n_test=16, seeds=1, epochs=1,
               image_size=32, batch_size=8)
    out = augment(real, real, config=cfg)
    assert all(np.isfinite(v.value) for v in out.metrics.values())


@pytest.mark.slow
def test_synthetic_labels_from_xrv_classifier_are_noted(cache_dir):
    imgs, y, split = _train_test_real(20, 20, seed=80)
    real = _labeled(imgs, y, "real", split=split)
    syn = images_source(torch.cat([imgs] * 4), "unlabeled")
    try:
        out = augment(real, syn, config=_cfg(cache_dir, test_split="test", n_real=8, n_test=20, seeds=1,
                                            n_synthetic=2))
    except DataError as e:  # random-weight labels may not give both classes: the error must say so
        assert "labels from xrv-classifier" in str(e)
        return
    assert out.details["synthetic_label_source"] == "xrv-classifier"
    assert any("XRV classifier" in n for n in out.notes)


def test_registered_protocol_and_cli_result(tmp_path, cache_dir, capsys):
    from cxrbench.cli import main
    from cxrbench.registry import PROTOCOLS
    from cxrbench.results import load

    proto = PROTOCOLS.get("augmentation")()
    assert proto.outputs == OUTPUTS

    real_dir, syn_dir = tmp_path / "real", tmp_path / "syn"
    imgs, y, split = _train_test_real(40, 40, seed=90)
    write_pngs(real_dir, imgs)
    pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(len(y))], "Pneumonia": y, "No Finding": 1 - y,
                  "split": split}).to_csv(real_dir / "labels.csv", index=False)
    syn_imgs, ys = _task_images(40, seed=91)
    write_pngs(syn_dir, syn_imgs)
    pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(len(ys))], "pneumonia": ys,
                  "no finding": 1 - ys}).to_csv(syn_dir / "manifest.csv", index=False)
    out, fig = tmp_path / "aug.json", tmp_path / "aug.png"
    argv = ["augment", "--real", str(real_dir), "--synthetic", str(syn_dir), "--task", "Pneumonia vs No Finding",
            "--n-real", "40", "--n-test", "40", "--test-split", "test", "--extractor", "random-conv",
            "--weights", "random", "--cache-dir", cache_dir, "--n-bootstrap", "50", "--quiet",
            "--out", str(out), "--figure", str(fig)]
    assert main(argv) == 0
    res = load(out)
    assert res["protocol"]["name"] == "augmentation" and res["comparable"] is False
    assert set(res["metrics"]) == set(OUTPUTS)
    assert res["augmentation"]["synthetic_label_source"] == "manifest"
    # the same call through the registered protocol gives the same numbers
    vals = proto.run(str(real_dir), str(syn_dir), task="Pneumonia vs No Finding",
                     config=_cfg(cache_dir, test_split="test", n_test=40, n_bootstrap=50))
    assert {k: v.to_dict() for k, v in vals.items()} == json.loads(json.dumps(res["metrics"]))
    assert fig.stat().st_size > 1000
    assert "aug" not in capsys.readouterr().err.split("wrote")[0]  # progress is off with --quiet
    # bad input: one line, exit code of a CxrbenchError, no traceback, nothing written
    bad = tmp_path / "bad.json"
    rc = main(argv[:-4] + ["--task", "Foo vs No Finding", "--out", str(bad)])
    err = capsys.readouterr().err
    assert rc != 0 and "unknown label 'Foo'" in err and "Traceback" not in err and not bad.exists()


def _task_folders(tmp_path, seed: int):
    """real/ (labels.csv) and syn/ (manifest.csv) PNG folders of the planted task, 80 and 40 images."""
    real_dir, syn_dir = tmp_path / "real", tmp_path / "syn"
    imgs, y, _ = _train_test_real(40, 40, seed=seed)
    write_pngs(real_dir, imgs)
    pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(len(y))], "Pneumonia": y,
                  "No Finding": 1 - y}).to_csv(real_dir / "labels.csv", index=False)
    syn_imgs, ys = _task_images(40, seed=seed + 1)
    write_pngs(syn_dir, syn_imgs)
    pd.DataFrame({"path": [f"img_{i:04d}.png" for i in range(len(ys))], "Pneumonia": ys,
                  "No Finding": 1 - ys}).to_csv(syn_dir / "manifest.csv", index=False)
    return real_dir, syn_dir


def test_evaluate_protocol_augmentation_equals_the_augment_command(tmp_path, cache_dir):
    """`evaluate --protocol augmentation` reuses the harness's features and gives the protocol's own numbers."""
    from cxrbench.config import EvalConfig
    from cxrbench.engine.evaluate import evaluate
    from cxrbench.registry import PROTOCOLS

    real_dir, syn_dir = _task_folders(tmp_path, seed=80)
    cfg = EvalConfig(extractors=("random-conv",), metrics=("fid",), weights="random", n_bootstrap=50,
                     cache_dir=cache_dir, progress=False, num_workers=0, protocol="augmentation",
                     augment={"task": "Pneumonia vs No Finding", "n_real": 40, "n_test": 30, "seeds": 3})
    res = evaluate(syn_dir, real_dir, config=cfg)
    assert res["protocol"]["name"] == "augmentation" and "fid_random-conv" in res["metrics"]
    direct = PROTOCOLS.get("augmentation")().run(
        str(real_dir), str(syn_dir), task="Pneumonia vs No Finding",
        config=_cfg(cache_dir, n_real=40, n_test=30, n_bootstrap=50))
    for key, v in direct.items():
        assert res["metrics"][key] == json.loads(json.dumps(v.to_dict())), key


def test_augment_and_evaluate_results_carry_the_same_provenance(tmp_path, cache_dir):
    """Both commands build their result through ``provenance.make_result``: same top-level keys, versions,
    commit, and comparability derived from the reasons."""
    from cxrbench.cli import main
    from cxrbench.config import EvalConfig
    from cxrbench.engine.evaluate import evaluate
    from cxrbench.results import load

    real_dir, syn_dir = _task_folders(tmp_path, seed=70)
    out = tmp_path / "aug.json"
    assert main(["augment", "--real", str(real_dir), "--synthetic", str(syn_dir), "--task", "Pneumonia vs No Finding",
                 "--n-real", "40", "--n-test", "30", "--extractor", "random-conv", "--weights", "random",
                 "--cache-dir", cache_dir, "--n-bootstrap", "20", "--quiet", "--out", str(out)]) == 0
    aug = load(out)
    ev = json.loads(evaluate(syn_dir, real_dir, config=EvalConfig(
        extractors=("random-conv",), metrics=("fid",), weights="random", n_bootstrap=20, cache_dir=cache_dir,
        progress=False, num_workers=0)).to_json())
    # the optional sections: augmentation's own block; per_condition for samples with requested labels
    assert set(aug) - {"augmentation"} == set(ev) - {"per_condition"}
    for key in ("schema", "cxrbench_version", "git_hash", "versions"):
        assert aug[key] == ev[key], key
    for res in (aug, ev):
        assert {"seed", "weights_seed"} <= set(res["seeds"]) and "device_resolved" in res["config"]
        assert res["comparable"] is False and res["comparable"] == (not res["not_comparable_because"])
        assert any("random" in why for why in res["not_comparable_because"])


def test_a_registered_classifier_is_used_by_the_protocol(monkeypatch, cache_dir):
    """Classifiers are plug-ins: one registered under a new name runs every mode. Flipping the linear probe's
    scores turns each AUROC a into 1 - a exactly (Mann-Whitney with ties at 1/2)."""
    from cxrbench.protocols.augmentation import classifiers
    from cxrbench.protocols.augmentation.config import MODES
    from cxrbench.registry import CLASSIFIERS, Registry

    class Flipped(classifiers.LinearProbe):
        def fit(self, x_tr, y_tr, x_te, **kw):
            return 1.0 - super().fit(x_tr, y_tr, x_te, **kw)

    fresh = Registry("augmentation classifier", "test.group", base=CLASSIFIERS.base,
                     builtins={n: CLASSIFIERS.get(n) for n in CLASSIFIERS.names()})
    fresh.add("flipped", Flipped)
    monkeypatch.setattr(classifiers, "CLASSIFIERS", fresh)
    imgs, y = _task_images(120, seed=30)
    real = _labeled(imgs, y, "real")
    syn_imgs, ys = _task_images(60, seed=31)
    syn = _labeled(syn_imgs, ys, "synthetic")
    a = augment(real, syn, config=_cfg(cache_dir, n_real=20, n_test=40, seeds=1, n_bootstrap=10))
    b = augment(real, syn, config=_cfg(cache_dir, n_real=20, n_test=40, seeds=1, n_bootstrap=10, classifier="flipped"))
    for mode in MODES:
        assert b.metrics[f"aug_{mode}_auroc"].value == pytest.approx(1 - a.metrics[f"aug_{mode}_auroc"].value, abs=1e-12)
    with pytest.raises(UsageError, match="expected one of cnn, densenet, flipped, linear"):
        augment(real, syn, config=_cfg(cache_dir, classifier="nope"))


def test_augment_config_takes_its_shared_defaults_from_eval_config():
    """One source of defaults: every AugmentConfig knob that EvalConfig also holds (augment_* or the same name)
    reads EvalConfig's default instead of repeating a literal that could drift."""
    import ast
    import dataclasses
    import inspect

    from cxrbench.config import EvalConfig
    from cxrbench.protocols.augmentation import config as aug_config

    eval_defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
    tree = ast.parse(inspect.getsource(aug_config.AugmentConfig))
    defaults = {n.target.id: n.value for n in tree.body[0].body if isinstance(n, ast.AnnAssign) and n.value}
    shared = 0
    for f in dataclasses.fields(aug_config.AugmentConfig):
        name = f"augment_{f.name}" if f"augment_{f.name}" in eval_defaults else f.name
        if name not in eval_defaults or f.name == "task":  # task: EvalConfig's None means "no augmentation block"
            continue
        shared += 1
        assert f.default == eval_defaults[name], f.name
        node = defaults[f.name]
        assert isinstance(node, ast.Call) and node.func.id == "_shared", f"{f.name} repeats a literal default"
    assert shared >= 10
