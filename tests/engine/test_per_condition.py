"""Per-condition feature metrics (``engine/per_condition.py``): each condition's FID is FID on its rows, a
condition below the minimum is listed with its reason, a shift of one condition moves only that condition,
and ``cxrbench verify`` compares the per-condition numbers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg

from cxrbench.cli import main
from cxrbench.data.labels import LABELS
from cxrbench.engine.per_condition import MIN_REFERENCE, MIN_SAMPLES, per_condition
from cxrbench.errors import DataError
from cxrbench.metrics.fid import FID
from cxrbench.metrics.kid import KID
from cxrbench.metrics.prdc import PRDC
from cxrbench.publish.report import condition_rows, render_markdown
from cxrbench.results import validate

from ..conftest import write_pngs
from ..metric_helpers import context, feature_set

D = 4


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out with scipy (the textbook formula), independent of cxrbench's eigen-decomposition."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def one_hot(names: list[str]) -> pd.DataFrame:
    """A manifest/labels table: one 0/1 column per LABELS name, row i has only label names[i]."""
    return pd.DataFrame({lab: [int(n == lab) for n in names] for lab in LABELS})


def conditional_sets(shift: float = 0.0, *, n_rare: int = 5, seed: int = 0):
    """Samples: 60 No Finding, 50 Effusion, ``n_rare`` Edema; reference: 80 / 60 / 40. Effusion samples are
    moved by ``shift`` along every feature dimension."""
    rng = np.random.default_rng(seed)
    gen_names = ["No Finding"] * 60 + ["Effusion"] * 50 + ["Edema"] * n_rare
    ref_names = ["No Finding"] * 80 + ["Effusion"] * 60 + ["Edema"] * 40
    centre = {"No Finding": 0.0, "Effusion": 2.0, "Edema": -2.0}
    gen = np.stack([rng.normal(centre[n], 1.0, D) for n in gen_names])
    ref = np.stack([rng.normal(centre[n], 1.0, D) for n in ref_names])
    gen[np.array(gen_names) == "Effusion"] += shift
    g = feature_set("samples", {"emb": gen}, manifest=one_hot(gen_names))
    r = feature_set("reference", {"emb": ref}, labels=one_hot(ref_names))
    return context(g, r), np.array(gen_names), np.array(ref_names)


def run(ctx, metrics=None):
    metrics = metrics or [FID()]
    return per_condition(list(metrics), ctx, {m.name for m in metrics})


def test_condition_fid_is_fid_of_its_rows():
    ctx, gn, rn = conditional_sets()
    block = run(ctx)
    validate({"schema": "cxrbench.result/1", "cxrbench_version": "0", "protocol": {}, "samples": {},
              "reference": {}, "extractors": {}, "metrics": {}, "config": {}, "comparable": False,
              "per_condition": block})
    gen, ref = ctx.gen.features["emb"], ctx.ref.features["emb"]
    for lab in ("No Finding", "Effusion"):
        c = block["conditions"][lab]
        assert (c["n_samples"], c["n_reference"]) == ((gn == lab).sum(), (rn == lab).sum())
        m = c["metrics"]["fid_emb"]
        assert m["value"] == pytest.approx(scipy_fid(gen[gn == lab], ref[rn == lab]), rel=1e-6)
        assert m["n_gen"] == c["n_samples"] and m["n_ref"] == c["n_reference"]
        # its own interval and floor: the floor compares two halves of this condition's reference images; the
        # interval is for the population FD, around the bias-corrected estimate (FID @N sits above it)
        assert m["ci"][0] <= m["value_bias_corrected"] <= m["ci"][1] and m["value_bias_corrected"] < m["value"]
        assert m["real_vs_real"] is not None and sum(m["real_vs_real_n"]) <= c["n_reference"]
    # the whole-set FID mixes the conditions and is neither condition's number
    whole = scipy_fid(gen, ref)
    assert all(abs(block["conditions"][lab]["metrics"]["fid_emb"]["value"] - whole) > 1e-3
               for lab in ("No Finding", "Effusion"))


def test_a_condition_below_the_minimum_is_listed_with_its_reason():
    ctx, _, _ = conditional_sets(n_rare=MIN_SAMPLES - 1)
    block = run(ctx)
    edema = block["conditions"]["Edema"]
    assert "metrics" not in edema and edema["n_samples"] == MIN_SAMPLES - 1
    assert f"{MIN_SAMPLES - 1} sample(s) requested it" in edema["skipped"]
    assert (block["min_samples"], block["min_reference"]) == (MIN_SAMPLES, MIN_REFERENCE)
    # at the minimum it qualifies
    assert "metrics" in run(conditional_sets(n_rare=MIN_SAMPLES)[0])["conditions"]["Edema"]
    # a reference without the label column, and one without labels at all, are reasons too
    ctx.ref.labels = ctx.ref.labels.drop(columns=["Edema"])
    assert "no 'Edema' column" in run(ctx)["conditions"]["Edema"]["skipped"]
    ctx.ref.labels = None
    assert all("no labels" in c["skipped"] for c in run(ctx)["conditions"].values())
    # the report lists skipped conditions, with counts, beside the table
    rows, skipped = condition_rows({"per_condition": block})
    assert {r["condition"] for r in rows} == {"No Finding", "Effusion"}
    assert any(s.startswith(f"Edema ({MIN_SAMPLES - 1}/40)") for s in skipped)


def test_unconditional_samples_get_no_block():
    ctx, _, _ = conditional_sets()
    ctx.gen.manifest = ctx.gen.manifest.drop(columns=LABELS).assign(seed=0)
    assert run(ctx) is None


def test_shifting_one_condition_raises_only_its_numbers():
    blocks = [run(conditional_sets(s)[0], (FID(), KID(), PRDC())) for s in (0.0, 0.5, 1.0, 2.0)]
    fids = [b["conditions"]["Effusion"]["metrics"]["fid_emb"]["value"] for b in blocks]
    kids = [b["conditions"]["Effusion"]["metrics"]["kid_emb"]["value"] for b in blocks]
    assert all(a < b for a, b in itertools.pairwise(fids)), fids
    assert all(a < b for a, b in itertools.pairwise(kids)), kids
    assert fids[-1] > 8.0 + fids[0]  # the mean term alone adds ||shift||^2 = 4 * 2^2 = 16 in expectation
    for other in ("No Finding", "Edema"):  # untouched rows: identical numbers, interval and floor included
        assert all(b["conditions"][other] == blocks[0]["conditions"][other] for b in blocks[1:])


def test_validate_refuses_a_malformed_block():
    ctx, _, _ = conditional_sets()
    block = run(ctx)
    base = {"schema": "cxrbench.result/1", "cxrbench_version": "0", "protocol": {}, "samples": {}, "reference": {},
            "extractors": {}, "metrics": {}, "config": {}, "comparable": False}
    del block["conditions"]["Effusion"]["metrics"]["fid_emb"]["ci"]
    with pytest.raises(DataError, match="per_condition 'Effusion'.*lacks"):
        validate({**base, "per_condition": block})
    block["conditions"]["Effusion"] = {"n_samples": 50, "n_reference": 60}
    with pytest.raises(DataError, match="either 'metrics' or 'skipped'"):
        validate({**base, "per_condition": block})


# --- end to end: the harness, the report and `cxrbench verify` on a conditional samples folder --------------

def _folder(root, names, seed, table):
    from cxrbench.data.synthetic import synthetic_cxr

    imgs = synthetic_cxr(len(names), 32, 0.0, seed=seed)
    imgs[np.array(names) == "Effusion"] = torch.flip(imgs[np.array(names) == "Effusion"], dims=[-1])
    write_pngs(root, imgs)
    df = one_hot(names)
    df.insert(0, "path", [f"img_{i:04d}.png" for i in range(len(names))])
    df.to_csv(root / table, index=False)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_condition")
    samples = _folder(root / "samples", ["No Finding"] * 24 + ["Effusion"] * 22 + ["Edema"] * 3, 2, "manifest.csv")
    ref = _folder(root / "ref", ["No Finding"] * 26 + ["Effusion"] * 24, 1, "labels.csv")
    (root / "model.toml").write_text('name = "Cond GAN"\nauthors = ["A"]\nurl = "https://example.org/c"\n'
                                     'training_data = "synthetic"\nresolution = 32\nconditioning = "labels"\n'
                                     'license = "MIT"\n')
    assert main(["submit", "--samples", str(samples), "--card", str(root / "model.toml"), "--reference", str(ref),
                 "--weights", "random", "--extractors", "random-conv", "--metrics", "fid", "--n-bootstrap", "20",
                 "--num-workers", "0", "--cache-dir", str(root / "cache"), "--quiet", "--entries",
                 str(root / "entries")]) == 0
    return {"root": root, "samples": samples, "entry": root / "entries" / "cond-gan.json"}


def test_harness_writes_the_block_and_the_report_shows_it(world):
    result = json.loads(world["entry"].read_text())["result"]
    conds = result["per_condition"]["conditions"]
    assert set(conds) == {"No Finding", "Effusion", "Edema"}
    assert "3 sample(s)" in conds["Edema"]["skipped"]
    fid = conds["Effusion"]["metrics"]["fid_random-conv"]
    assert (fid["n_gen"], fid["n_ref"]) == (22, 24)
    md = render_markdown(result, type("R", (), {"figures": [], "notes": [], "pairs": []})(), {})
    assert "## Per condition" in md and "| Effusion | 22/24 | fid_random-conv |" in md
    assert "condition Edema (3/0)" in md


def test_verify_catches_an_altered_per_condition_value(world, tmp_path, capsys):
    args = ["--samples", str(world["samples"]), "--num-workers", "0", "--quiet"]
    assert main(["verify", str(world["entry"]), *args]) == 0
    e = json.loads(world["entry"].read_text())
    e["result"]["per_condition"]["conditions"]["No Finding"]["metrics"]["fid_random-conv"]["value"] *= 1 + 1e-4
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(e))
    capsys.readouterr()
    assert main(["verify", str(edited), *args]) == 1
    out = capsys.readouterr().out
    assert "per_condition[No Finding].fid_random-conv.value" in out and "rel diff 1.00e-04" in out
    assert "per_condition[Effusion]" not in out  # only the altered number is named
