"""The claims section: verdicts follow the intervals, and the rendered board carries the entries' numbers."""

from __future__ import annotations

import pytest

from cxrbench.publish import claims
from cxrbench.publish.leaderboard import build

from ..leaderboard_helpers import fake_entry


def m(value, lo, hi, hib=False, **extra):
    return {"value": value, "ci": [lo, hi], "higher_is_better": hib, **extra}


@pytest.mark.parametrize("a,b,hib,want", [
    (m(10, 8, 12), m(20, 15, 25), False, "supported"),      # lower is better, intervals apart
    (m(20, 15, 25), m(10, 8, 12), False, "contradicted"),
    (m(10, 8, 16), m(20, 15, 25), False, "not separated"),  # overlapping
    (m(0.9, 0.85, 0.95, True), m(0.5, 0.4, 0.6, True), True, "supported"),  # higher is better
    (m(0.5, 0.4, 0.6, True), m(0.9, 0.85, 0.95, True), True, "contradicted"),
])
def test_compare_follows_the_intervals_and_the_direction(a, b, hib, want):
    assert claims.compare(a, b, hib) == want


def entry(slug_name, metrics, params=None, **extra):
    e = {"slug": slug_name.lower().replace(" ", "-"), "name": slug_name,
         "card": {"training": {"parameters": params}} if params else {},
         "result": {"metrics": metrics}}
    e.update(extra)
    return e


def test_gans_against_vaes_needs_every_pair_separated():
    gan, vae, gmvae = (entry("LSGAN-64", {"fid": m(20, 18, 22)}, 3.6e6), entry("VAE-128", {"fid": m(100, 90, 110)}, 32.7e6),
                       entry("GMVAE-64", {"fid": m(60, 50, 70)}, 40e6))
    assert claims.family(gan) == "GAN" and claims.family(gmvae) == "GMVAE" and claims.family(vae) == "VAE"
    assert claims.family(entry("FS-GMVAE-64", {})) == "GMVAE"  # not read as a VAE or a GMVAE prefix clash
    c = claims.gans_beat_vaes([gan, vae, gmvae], "fid")
    assert c.verdict == "supported" and "LSGAN-64 20 [18, 22] vs VAE-128 100 [90, 110]" in c.evidence
    close = entry("GMVAE-64", {"fid": m(25, 21, 30)})
    assert claims.gans_beat_vaes([gan, vae, close], "fid").verdict == "supported in part"
    worse = entry("PGGAN-128", {"fid": m(150, 140, 160)})
    assert claims.gans_beat_vaes([worse, vae], "fid").verdict == "contradicted"
    assert claims.gans_fewer_parameters([gan, vae, gmvae]).verdict == "supported"
    assert claims.gans_fewer_parameters([entry("PGGAN-128", {}, 50e6), vae]).verdict == "contradicted"
    assert claims.gans_beat_vaes([vae], "fid").verdict == "no evidence"


def test_mixed_training_claim_reads_the_augmentation_difference():
    def with_delta(lo, hi):
        block = {"task": "Edema vs No Finding", "metrics": {
            "aug_real_accuracy": m(0.8, 0.75, 0.85, True), "aug_mixed_accuracy": m(0.7, 0.65, 0.75, True),
            "aug_mixed_delta_accuracy": m((lo + hi) / 2, lo, hi, True)}}
        return entry("LDM-64", {}, augmentation=block)

    assert claims.mixed_vs_real([with_delta(-0.15, -0.05)]).verdict == "supported"
    assert claims.mixed_vs_real([with_delta(-0.05, 0.05)]).verdict == "not separated"
    assert claims.mixed_vs_real([with_delta(0.02, 0.1)]).verdict == "contradicted"


def test_white_paper_condition_order_and_rrs_range():
    def dvae(fids, rrs):
        conds = {c: {"metrics": {"fid": m(v, v - 5, v + 5)}} for c, v in zip(claims.WHITE_ORDER, fids)}
        return entry("DiffuseVAE-64", {"rrs_moco": m(rrs, rrs - 0.005, rrs + 0.005)},
                     result={"metrics": {"rrs_moco": m(rrs, rrs - 0.005, rrs + 0.005)},
                                   "per_condition": {"conditions": conds}})

    assert claims.white_paper_conditions([dvae((100, 120, 140), 0.04)], "fid").verdict == "supported"
    assert claims.white_paper_conditions([dvae((140, 120, 100), 0.04)], "fid").verdict == "contradicted"
    assert claims.white_paper_rrs([dvae((1, 2, 3), 0.04)]).verdict.startswith("supported")
    assert claims.white_paper_rrs([dvae((1, 2, 3), 0.2)]).verdict == "contradicted"
    # random MoCo weights (no MoCo-CXR weights offline): the value is shown with its real-vs-real level, no verdict
    rand = m(0.13, 0.128, 0.134)
    rand["real_vs_real"] = 0.017
    block = {"metrics": {"rrs_moco": rand}, "comparable": False}
    c = claims.white_paper_rrs([entry("VAE-128", {}, reconstruction=block)])
    assert c.verdict == "no evidence" and "real vs real 0.017" in c.evidence and "random MoCo weights" in c.evidence
    assert "scale may differ" not in c.evidence


def test_the_board_renders_claims_only_for_the_claims_protocol(tmp_path):
    rows = [fake_entry("LSGAN-64", {"fid_x": (20.0, False)}, protocol=(claims.PROTOCOL, 1),
                       card_extra={"training": {"parameters": 3_600_000, "cpu_minutes": 60.0}}),
            fake_entry("VAE-128", {"fid_x": (100.0, False)}, protocol=(claims.PROTOCOL, 1),
                       card_extra={"training": {"parameters": 32_674_945, "cpu_minutes": 60.0}})]
    files = build(rows, out_dir=tmp_path, entries_dir=tmp_path)
    md, html = files["README.md"].decode(), files["index.html"].decode()
    assert "## What the board says about the papers" in md and 'id="claims"' in html
    # fake entries carry +/-5% intervals: 20 [19, 21] against 100 [95, 105] (the Markdown escapes brackets)
    assert "LSGAN-64 20 [19, 21] vs VAE-128 100 [95, 105]: supported" in html
    assert r"LSGAN-64 20 \[19, 21\] vs VAE-128 100 \[95, 105\]: supported" in md
    assert "LSGAN-64 3.60M, VAE-128 32.67M" in md
    other = [fake_entry(e["name"], {"fid_x": (1.0, False)}, protocol=("cxr64", 1)) for e in rows]
    assert "What the board says" not in build(other, out_dir=tmp_path, entries_dir=tmp_path)["README.md"].decode()


def test_a_biased_metrics_evidence_names_the_estimate_its_interval_is_for():
    gan = entry("LSGAN-64", {"fid": {**m(20.3, 8.42, 13.1), "value_bias_corrected": 10.97}}, 1.8e6)
    vae = entry("VAE-128", {"fid": {**m(76.7, 67.9, 74.4), "value_bias_corrected": 71.2}}, 32.7e6)
    c = claims.gans_beat_vaes([gan, vae], "fid")
    assert "20.3, estimate 11* [8.42, 13.1]" in c.evidence and c.verdict == "supported"
