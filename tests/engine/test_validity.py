"""The validity suite: corruptions do what they say, the order checks find inversions, `cxrbench validate` runs."""

import itertools
import json

import numpy as np
import pytest
import torch

from cxrbench.cli import main
from cxrbench.data import corruptions as C
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.validity import (
    BLOB_GENERATORS,
    DEFAULT_N,
    EYE_RATERS,
    GENERATOR_SETS,
    ValiditySet,
    board_ladders,
    effective_dimensionality,
    expected_pairs,
    eye_consensus,
    eye_panel,
    leave_one_out,
    pairwise_tau,
    summarize,
    write_panel_grids,
)

from ..conftest import REPO, shared_folder, write_pngs


@pytest.fixture(scope="module")
def images():
    return synthetic_cxr(6, 64, seed=3)


def _hf_energy(x: torch.Tensor) -> float:
    """Energy of the discrete Laplacian: what blur removes first."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_every_corruption_keeps_the_contract_and_is_deterministic(images, name):
    for strength in C.CORRUPTIONS[name].strengths:
        a = C.apply(name, images, strength, seed=5)
        b = C.apply(name, images, strength, seed=5)
        assert a.shape == images.shape and a.dtype == torch.float32
        assert float(a.min()) >= 0 and float(a.max()) <= 1 and torch.isfinite(a).all()
        assert torch.equal(a, b), f"{name}:{strength} is not deterministic in its seed"
        assert not torch.equal(a, images), f"{name}:{strength} left the images unchanged"
    assert C.CORRUPTIONS[name].doc, f"{name} has no docstring saying what a radiologist sees"


def test_classes_and_strengths_as_the_suite_needs():
    kinds = {c.kind for c in C.CORRUPTIONS.values()}
    assert kinds == {"degraded", "violated"}
    assert all({"mild", "moderate"} <= set(c.strengths) for c in C.CORRUPTIONS.values() if c.kind == "degraded")
    assert sum(c.kind == "violated" for c in C.CORRUPTIONS.values()) >= 6


@pytest.mark.parametrize("name", ["noise", "random-field", "blobs", "patch-shuffle", "splice"])
def test_random_corruptions_follow_the_seed(images, name):
    assert not torch.equal(C.apply(name, images, seed=0), C.apply(name, images, seed=1))


def test_flip_and_negative_are_involutions_and_four_rotations_the_identity(images):
    assert torch.equal(C.vertical_flip(C.vertical_flip(images)), images)
    assert torch.equal(C.vertical_flip(images)[..., 0, :], images[..., -1, :])
    assert torch.allclose(C.negative(C.negative(images)), images, atol=1e-7)
    r = images
    for _ in range(4):
        r = C.rotate90(r)
    assert torch.equal(r, images)
    assert not torch.equal(C.rotate90(images), images)


def test_blur_lowers_high_frequency_energy_monotonically(images):
    energies = [_hf_energy(images)] + [_hf_energy(C.gaussian_blur(images, s)) for s in (0.5, 1, 2, 4)]
    assert all(a > b for a, b in itertools.pairwise(energies)), energies
    # the suite's own mild/moderate strengths order the same way, as do low resolution's
    assert _hf_energy(C.apply("blur", images, "mild")) > _hf_energy(C.apply("blur", images, "moderate"))
    assert _hf_energy(C.apply("lowres", images, "mild")) > _hf_energy(C.apply("lowres", images, "moderate"))


def test_blur_strength_is_in_128px_units(images):
    # 64 px images: the suite's mild blur (sigma 1 px at 128 px) is sigma 0.5 px
    assert torch.equal(C.apply("blur", images, "mild"), C.gaussian_blur(images, 0.5))


def test_random_field_has_the_source_histogram_and_spectrum_but_not_its_image(images):
    f = C.random_field(images, seed=2)
    for a, b in zip(f, images):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)  # identical grey levels
        corr = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
        assert abs(corr) < 0.5, corr  # the image itself is gone
    # the radially averaged spectrum (before the rank remap) is the source's: compare the coarse/fine balance
    low = lambda x: float((C._radial_amplitude(x)[..., :4, :4] ** 2).sum() / (C._radial_amplitude(x) ** 2).sum())
    assert abs(low(f) - low(images)) < 0.15


def test_noise_contrast_and_jpeg_strengths(images):
    grey = torch.full((4, 1, 64, 64), 0.5)
    d = C.gaussian_noise(grey, 0.08, seed=0) - grey
    assert abs(float(d.std()) - 0.08) < 0.005
    c = C.contrast(images, 0.4)
    assert torch.allclose(c.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-3)
    assert torch.allclose(c.std(dim=(2, 3)), 0.4 * images.std(dim=(2, 3)), rtol=0.02)
    err = {s: float((C.apply("jpeg", images, s) - images).abs().mean()) for s in ("mild", "moderate")}
    assert 0 < err["mild"] < err["moderate"]


def test_gan_artefacts_put_energy_at_the_checkerboard_frequency(images):
    def nyquist(x):
        return float(torch.fft.fft2(x)[..., 16, 16].abs().mean())  # period 4 px (2 px cells) in 64 px images

    assert nyquist(images) < nyquist(C.apply("gan-artefacts", images, "mild")) < nyquist(
        C.apply("gan-artefacts", images, "moderate"))


def test_patch_shuffle_and_splice_rearrange_real_pixels(images):
    s = C.patch_shuffle(images, 4, seed=0)
    for a, b in zip(s, images):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    sp = C.splice(images, seed=0)
    w = images.shape[-1]
    assert torch.equal(sp[..., : w // 2], images[..., : w // 2])
    for i in range(len(images)):  # the right half comes from another image, never the same one
        match = [j for j in range(len(images)) if torch.equal(sp[i, ..., w // 2:], images[j, ..., w // 2:])]
        assert match and i not in match


def test_blobs_are_dark_blobs_on_a_bright_background(images):
    b = C.blobs(torch.zeros(8, 1, 128, 128), seed=0)
    dark = float((b < 0.3).float().mean())
    assert 0.03 < dark < 0.4 and float(b.median()) > 0.7


# --- order checks ------------------------------------------------------------------------------------------

def _sets():
    return [
        ValiditySet("real", "real", "real"),
        ValiditySet("blur:mild", "degraded", "blur", "mild"),
        ValiditySet("blur:moderate", "degraded", "blur", "moderate"),
        ValiditySet("vflip:moderate", "violated", "vflip", "moderate"),
        ValiditySet("blobs:moderate", "violated", "blobs", "moderate"),
        ValiditySet("gen:pggan", "generator", "pggan", tier=1),
        ValiditySet("gen:vae", "generator", "vae", tier=2),
        ValiditySet("gen:ldm", "generator", BLOB_GENERATORS[0], tier=6),
        ValiditySet("progress:vae:ckpt1", "progress", "vae", tier=1),
        ValiditySet("progress:vae:ckpt2", "progress", "vae", tier=2),
    ]


def test_a_known_inversion_is_reported_and_costs_tau():
    good = {"real": 1, "blur:mild": 2, "blur:moderate": 3, "vflip:moderate": 10, "blobs:moderate": 20,
            "gen:pggan": 4, "gen:vae": 5, "gen:ldm": 30, "progress:vae:ckpt1": 9, "progress:vae:ckpt2": 6}
    s = summarize(_sets(), good)
    assert s["violations"] == [] and s["kendall_tau"] == 1.0 and s["kendall_tau_generators"] == 1.0
    n_pairs = len(s["checks"])

    bad = dict(good, **{"vflip:moderate": 2.5, "gen:ldm": 3.5, "progress:vae:ckpt2": 9.5})
    s = summarize(_sets(), bad)
    got = {(c["better"], c["worse"]) for c in s["violations"]}
    assert ("blur:moderate", "vflip:moderate") in got  # a flip closer than a moderate blur
    assert ("real", "vflip:moderate") not in got  # 2.5 > 1 still holds
    assert ("gen:pggan", "gen:ldm") in got and ("gen:vae", "gen:ldm") in got  # blobs ahead of chests
    assert ("progress:vae:ckpt2", "progress:vae:ckpt1") in got  # progress went backwards
    assert s["kendall_tau"] == pytest.approx((n_pairs - 2 * len(got)) / n_pairs)
    assert s["kendall_tau_generators"] < 1.0
    assert s["blob_ranks"]["gen:ldm"]["rank_generators"] == 2  # only real is closer
    assert s["closest_violated"] == {"set": "vflip:moderate", "value": 2.5, "x_floor": 2.5}

    # identical features give FIDs equal up to round-off: a tie, and a tie is not the expected order
    tie = dict(good, **{"vflip:moderate": good["real"] * (1 + 1e-15)})
    assert ("real", "vflip:moderate") in {(c["better"], c["worse"]) for c in summarize(_sets(), tie)["violations"]}


def test_expected_pairs_follow_tiers_and_strengths():
    pairs = {(a, b): r for a, b, r in expected_pairs(_sets())}
    assert pairs[("blur:mild", "blur:moderate")] == "mild < moderate"
    assert ("blur:mild", "vflip:moderate") not in pairs  # only moderate strengths are compared across classes
    assert ("gen:pggan", "gen:vae") in pairs and ("gen:vae", "gen:pggan") not in pairs
    assert ("gen:vae", "blobs:moderate") in pairs  # every chest-showing set ahead of the blobs
    assert ("progress:vae:ckpt2", "progress:vae:ckpt1") in pairs
    # checkpoints in one eye tier (a person cannot tell them apart): no order expected either way
    tied = _sets() + [ValiditySet("progress:vae:ckpt3", "progress", "vae", tier=2)]
    tied_pairs = {(a, b) for a, b, _ in expected_pairs(tied)}
    assert ("progress:vae:ckpt3", "progress:vae:ckpt1") in tied_pairs
    assert not {("progress:vae:ckpt3", "progress:vae:ckpt2"), ("progress:vae:ckpt2", "progress:vae:ckpt3")} & tied_pairs
    assert len(pairs) == len(expected_pairs(_sets()))  # no pair twice
    assert pairwise_tau([]) is None


def test_board_ladders_run_from_the_kept_checkpoints_to_the_boards_own_set(tmp_path):
    curves = tmp_path / "leaderboard" / "samples" / "cxr128" / "curves"  # as reproduce writes them
    for m in ("30", "5", "15", "7.5"):
        (curves / "lsgan" / f"cpu-{m}min").mkdir(parents=True)
    (curves / "lsgan" / "notes").mkdir()  # not a checkpoint
    (curves.parent / "lsgan").mkdir()
    (curves / "vae" / "cpu-5min").mkdir(parents=True)  # one rung and no final set: no ladder
    for m in ("9", "24"):  # a staged recipe: checkpoints under the stage's run, the board's set under the recipe's
        (curves / "fs-gmvae-base" / f"cpu-{m}min").mkdir(parents=True)
    (curves.parent / "fs-gmvae").mkdir()
    ladders = board_ladders(tmp_path)
    assert list(ladders) == ["fs-gmvae-board", "lsgan-board"]
    assert [p.name for p in ladders["fs-gmvae-board"]] == ["cpu-9min", "cpu-24min", "fs-gmvae"]
    assert [p.name for p in ladders["lsgan-board"]] == ["cpu-5min", "cpu-7.5min", "cpu-15min", "cpu-30min", "lsgan"]
    assert board_ladders(tmp_path / "nowhere") == {}


def test_every_generator_set_is_committed_and_the_blob_set_is_last():
    for name, (folder, tiers) in GENERATOR_SETS.items():  # folders relative to the repository root
        assert len(list((REPO / folder).glob("*.png"))) >= DEFAULT_N, name  # every set compared at the same N
    # the retired cxr64 board's eight sets are kept as the suite's evidence, apart from the board's samples
    retired = {n: f for n, (f, _) in GENERATOR_SETS.items() if n.endswith("-15min")}
    assert len(retired) == 8
    assert all(f.startswith("leaderboard/validity/sets/cxr64-board/") for f in retired.values())
    assert (REPO / "leaderboard" / "validity" / "sets" / "README.md").is_file()
    for i, rater in enumerate(EYE_RATERS):  # every rater puts the blob set last
        assert all(GENERATOR_SETS[b][1][i] == max(t[i] for _, t in GENERATOR_SETS.values()) for b in BLOB_GENERATORS), rater


def test_eye_consensus_keeps_only_the_orders_the_raters_agree_on():
    tiers = {"a": (1, 1, 1, 2), "b": (2, 2, 2, 2), "c": (1, 3, 3, 2), "d": (4, 4, 4, 4), "e": (4, 1, 4, 4)}
    got = eye_consensus(tiers)
    pairs, contested = set(got["pairs"]), set(got["contested"])
    assert ("a", "b") in pairs  # three ahead, one tie, none behind
    assert ("b", "d") in pairs and ("a", "d") in pairs
    assert ("a", "c") not in pairs and ("c", "a") not in pairs  # two ahead, two ties: no majority, no order
    assert ("a", "c") not in contested
    assert ("b", "c") in contested and ("c", "e") in contested  # raters order them both ways
    assert not {("d", "e"), ("e", "d")} & pairs  # one rater ahead, three ties
    for a, b in pairs:  # no rater puts an expected pair the other way round
        assert all(x <= y for x, y in zip(tiers[a], tiers[b]))
    assert not pairs & {(b, a) for a, b in pairs} and not pairs & contested
    # one rater: exactly their strict orders
    one = {k: v[:1] for k, v in tiers.items()}
    assert set(eye_consensus(one)["pairs"]) == {(x, y) for x in one for y in one if one[x] < one[y]}
    with pytest.raises(ValueError):
        eye_consensus({"a": (1, 2), "b": (1,)})


def test_leave_one_out_counts_what_a_held_out_rater_and_a_metric_get_wrong():
    tiers = {"a": (1, 1, 2), "b": (2, 2, 1), "c": (3, 3, 3)}
    values = {"a": 1.0, "b": 1.0, "c": 0.0}  # a tie and two inversions
    got = leave_one_out(tiers, values, raters=("x", "y", "z"))
    # without z, a < b < c by both others; z puts b ahead of a
    assert got["z"] == {"pairs": 3, "rater_reversed": 1, "rater_tied": 0, "metric_wrong": 3}
    # without x, a and b are contested (y: a first, z: b first): only a < c and b < c remain
    assert got["x"] == {"pairs": 2, "rater_reversed": 0, "rater_tied": 0, "metric_wrong": 2}
    assert leave_one_out({"a": (1,), "b": (2,)}) == {}
    right = leave_one_out(tiers, {"a": 0.0, "b": 0.5, "c": 9.0}, raters=("x", "y", "z"))
    assert [r["metric_wrong"] for r in right.values()] == [0, 0, 0]


def test_the_shipped_panel_agrees_with_itself_and_ranks_the_blobs_last_by_consensus():
    panel = eye_panel()
    assert panel["raters"] == list(EYE_RATERS) and len(panel["inter_rater_tau_b"]) == 6
    assert all(-1 <= t <= 1 for t in panel["inter_rater_tau_b"].values())
    tiers = {n: t for n, (_, t) in GENERATOR_SETS.items()}
    pairs = set(eye_consensus(tiers)["pairs"])
    assert {(n, b) for n in tiers for b in BLOB_GENERATORS if n not in BLOB_GENERATORS} <= pairs
    assert panel["consensus_pairs"] == len(pairs) and panel["consensus_pairs"] + panel["contested_pairs"] < 16 * 15 // 2
    # the rule in the suite: generator sets with every rater's tiers expect exactly the consensus pairs
    sets = [ValiditySet(f"gen:{n}", "generator", n, tier=float(np.mean(t)), tiers=t) for n, t in tiers.items()]
    eye = {(a, b) for a, b, r in expected_pairs(sets) if r == "eye (panel consensus)"}
    assert eye == {(f"gen:{a}", f"gen:{b}") for a, b in pairs}
    values = {s.name: float(s.tier) for s in sets}  # a metric that reproduces the mean tier
    s = summarize(sets, values)
    assert set(s["kendall_tau_raters"]) == set(EYE_RATERS) and s["kendall_tau_generators"] == pytest.approx(1.0)
    # a consensus order never contradicts the mean tier: a metric equal to it violates none of them
    assert [c for c in s["violations"] if c["rule"] == "eye (panel consensus)"] == []


def test_panel_grids_are_blinded_and_show_each_sets_own_images(tmp_path):
    from PIL import Image

    from cxrbench.engine.validity import load_square

    sets = {}
    for k, name in enumerate(("alpha", "beta", "gamma")):
        sets[name] = sorted(write_pngs(tmp_path / name, synthetic_cxr(6, 32, seed=k)).glob("*.png"))
    real = sorted(write_pngs(tmp_path / "real", synthetic_cxr(5, 32, seed=9)).glob("*.png"))
    key = write_panel_grids(tmp_path / "panel", real_paths=real + real[:1], sets=sets, size=16, k=4, seed=1)
    assert sorted(key.values()) == sorted(sets) and set(key) <= set("ABCDEFGHJKLMNPQRSTUVWXYZ")
    assert json.loads((tmp_path / "panel" / "key.json").read_text()) == key
    shown = sorted(p.name for p in (tmp_path / "panel" / "grids").iterdir())
    assert shown == ["real_reference.png"] + [f"set_{k}.png" for k in sorted(key)]  # no name, no key
    for letter, name in key.items():  # each grid's tiles are images of the set its letter names
        grid = np.asarray(Image.open(tmp_path / "panel" / "grids" / f"set_{letter}.png"), dtype=np.float64) / 255
        tiles = [grid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] for r in range(2) for c in range(2)]
        own = (load_square(sets[name], 16)[:, 0].numpy())
        for t in tiles:
            errs = {n: np.abs(load_square(sets[n], 16)[:, 0].numpy() - t).max(axis=(1, 2)).min() for n in sets}
            assert errs[name] < 1 / 255 + 1e-6 and min(v for n, v in errs.items() if n != name) > 0.01
        assert own.shape[0] == 6
    with pytest.raises(Exception, match="images"):
        write_panel_grids(tmp_path / "p2", real_paths=real[:2], sets=sets, size=16, k=4)


def test_effective_dimensionality_of_known_spectra():
    rng = np.random.default_rng(0)
    iso = effective_dimensionality(rng.standard_normal((4000, 10)))
    assert iso["participation_ratio"] > 9 and iso["top1"] < 0.15
    one = effective_dimensionality(rng.standard_normal((4000, 1)) * np.ones((1, 10)) + 1e-3 * rng.standard_normal((4000, 10)))
    assert one["top1"] > 0.99 and one["participation_ratio"] < 1.05


# --- the command -----------------------------------------------------------------------------------------

def test_validate_end_to_end_on_real_images(tmp_path, capsys, monkeypatch):
    data = shared_folder("nih_extra_256px").parent
    shared_folder("kermany_pediatric_covid_skytells")
    progress = tmp_path / "progress"
    for k, shift in ((1, 2.0), (2, 0.0)):  # a made-up ladder: a worse set first
        write_pngs(progress / "toy" / f"ckpt{k}-x", synthetic_cxr(10, 64, shift=shift, seed=k))
    out = tmp_path / "out"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["validate", "--extractor", "pixels", "--data", str(data), "--n", "10", "--out", str(out),
               "--root", str(REPO), "--progress-dir", str(progress),
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    res = json.loads((out / "validity-pixels.json").read_text())
    assert (out / "validity-pixels.png").stat().st_size > 1000
    classes = {s["cls"] for s in res["sets"]}
    assert classes == {"real", "degraded", "violated", "population", "generator", "progress"}
    assert all(s["n"] == 10 for s in res["sets"])
    assert res["floor"] == next(s["value"] for s in res["sets"] if s["name"] == "real")
    assert {c["rule"] for c in res["checks"]} >= {"real < degraded", "eye (panel consensus)", "progress monotone",
                                                  "chest-showing < blobs"}
    assert len(res["violations"]) == sum(not c["ok"] for c in res["checks"])
    assert -1 <= res["kendall_tau"] <= 1 and res["dimensionality"]["dims"] == 10
    assert "Kendall tau" in text and "gen:ldm" in text and "participation ratio" in text
    assert set(res["kendall_tau_raters"]) == set(EYE_RATERS) and "tau-b against each rater" in text
    assert res["suite_version"] == "3" and res["eye_panel"]["raters"] == list(EYE_RATERS)
    assert set(res["eye_leave_one_out"]) == set(EYE_RATERS) and "each rater left out in turn" in text
    assert all(len(v["difference_interval"]) == 2 for v in res["violations"])
    assert res["violations_beyond_noise"] == sum(v["beyond_noise"] for v in res["violations"])


def test_validate_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["validate", "--extractor", "pixels", "--data", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert "nih_extra_256px" in err and "--data" in err
    # weights that are not there: the message says where to put which file
    rc = main(["validate", "--extractor", "xrv", "--weights", str(empty), "--data", str(empty),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and str(empty) in err and ".pt" in err


def test_validate_names_a_missing_set_folder(tmp_path, capsys):
    data = shared_folder("nih_extra_256px").parent
    rc = main(["validate", "--extractor", "pixels", "--data", str(data), "--out", str(tmp_path / "o"),
               "--root", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "nowhere") in err and "--skip-missing" in err and "--root" in err


def test_the_shipped_ratings_unblinded_by_their_key_are_the_suites_tiers():
    folder = REPO / "leaderboard" / "validity" / "eye-panel"
    key = json.loads((folder / "key.json").read_text())
    for i, rater in enumerate(EYE_RATERS):
        if rater == "author":
            continue
        rated = json.loads((folder / f"{rater}.json").read_text())
        assert set(rated["tiers"]) == set(key) and set(rated["notes"]) == set(key)
        assert {key[letter]: t for letter, t in rated["tiers"].items()} == {n: t[i] for n, (_, t) in GENERATOR_SETS.items()}


def test_panel_grids_command_reproduces_the_raters_grids_key(tmp_path, capsys):
    data = shared_folder("nih_extra_256px").parent
    out = tmp_path / "panel"
    assert main(["validate", "--panel-grids", str(out), "--data", str(data), "--root", str(REPO)]) == 0
    assert json.loads((out / "key.json").read_text()) == json.loads(
        (REPO / "leaderboard" / "validity" / "eye-panel" / "key.json").read_text())
    assert len(list((out / "grids").glob("set_*.png"))) == len(GENERATOR_SETS)
    assert "show a rater" in capsys.readouterr().out
    assert main(["validate", "--data", str(data)]) != 0  # neither --extractor nor --panel-grids
    err = capsys.readouterr().err
    assert "--extractor" in err and len(err.strip().splitlines()) == 1


def test_violation_noise_flags_real_inversions_and_not_sampling_ones():
    from cxrbench.engine.validity import violation_noise
    from cxrbench.metrics.functional import fid

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 6))
    same = [rng.standard_normal((120, 6)) for _ in range(2)]  # one population: any order between them is noise
    far = rng.standard_normal((120, 6)) + 1.5  # truly farther from the reference
    feats = {"a": same[0], "b": same[1], "far": far}
    values = {k: fid(real=ref, fake=f).value for k, f in feats.items()}
    better, worse = sorted(("a", "b"), key=values.get, reverse=True)  # orient the pair as a violation
    violations = [
        {"better": better, "worse": worse, "value_better": values[better], "value_worse": values[worse]},
        {"better": "far", "worse": "a", "value_better": values["far"], "value_worse": values["a"]},
    ]
    assert violation_noise(ref, feats, violations, reps=60, seed=1) == 1
    noise, real = violations
    assert not noise["beyond_noise"] and noise["difference_interval"][0] < 0 < noise["difference_interval"][1]
    assert real["beyond_noise"] and real["difference_interval"][1] < 0
    for v in violations:  # the interval holds the point difference
        lo, hi = v["difference_interval"]
        assert lo <= v["value_worse"] - v["value_better"] <= hi
