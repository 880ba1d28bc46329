"""What the board says about the source papers' claims: one row per testable claim, from the entries alone.

Each row names the claim, its paper, the board's evidence (the numbers with their 95% CIs, as the entries
hold them) and a verdict that only says what the intervals allow:

- ``supported`` / ``contradicted``: the intervals separate, in the claim's direction or against it;
- ``not separated``: they overlap (the board cannot tell at its sample sizes);
- ``no evidence``: the board has no entry that speaks to it (e.g. no DiffuseVAE row yet).

Models are recognised by their entry slug (``lsgan-64-60-cpu-min`` is an LSGAN), as the recipes name them.
The claims were made for models trained to convergence on GPUs; a row on a 60-CPU-minute board tests the
direction of a claim at that budget, not the claim itself, and the rendered section says so.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

#: the protocol whose ranked entries the claims are read from (the default protocol's board)
PROTOCOL = "cxr128"

FAMILIES = (("fs-gmvae", "GMVAE"), ("gmvae", "GMVAE"), ("vae", "VAE"), ("lsgan", "GAN"), ("pggan", "GAN"),
            ("ddpm", "DDPM"), ("diffusevae", "DiffuseVAE"), ("latent-diffusion", "LDM"), ("ldm", "LDM"))

KUMAR = "Kumar & Triana, Generative models for chest X-ray synthesis (report)"
MALIK = "Malik & Humair, Stable Diffusion for chest X-ray augmentation, Table I"
SEGAL = "Segal et al., Evaluating the clinical realism of synthetic chest X-rays generated using progressively growing GANs, 2021"
WHITE = "Selvadeepa et al., Synthetic Chest X-ray Image Generator (Mphasis white paper), 2023"

#: the white paper's per-condition FIDs (lower is better): healthy lungs 251.12, pleural effusion 315.16,
#: pneumonia 418.71
WHITE_ORDER = ("No Finding", "Effusion", "Pneumonia")
WHITE_RRS = (0.03, 0.045)


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    evidence: str
    verdict: str


def family(entry: dict) -> str | None:
    slug = entry["slug"]
    for prefix, fam in FAMILIES:
        if re.match(rf"{re.escape(prefix)}(-|$)", slug):
            return fam
    return None


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _with_ci(m: dict) -> str:
    """The value, then its interval; a biased metric's interval is for its bias-corrected estimate, which is
    printed with it (``20.3, estimate 11.0* [8.42, 13.1]``) so that the brackets never seem to miss the value."""
    ci = m.get("ci")
    if not ci:
        return _fmt(m["value"])
    bc = m.get("value_bias_corrected")
    est = "" if bc is None else f", estimate {_fmt(bc)}*"
    return f"{_fmt(m['value'])}{est} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def compare(a: dict, b: dict, higher_is_better: bool) -> str:
    """``supported`` when ``a`` is better than ``b`` with separated intervals, ``contradicted`` when worse,
    else ``not separated`` (an interval missing counts as overlapping)."""
    ca, cb = a.get("ci"), b.get("ci")
    if not ca or not cb:
        return "not separated"
    if higher_is_better:
        ca, cb = [-ca[1], -ca[0]], [-cb[1], -cb[0]]
    if ca[1] < cb[0]:
        return "supported"
    if cb[1] < ca[0]:
        return "contradicted"
    return "not separated"


def _combine(verdicts: list[str]) -> str:
    if not verdicts:
        return "no evidence"
    if all(v == "supported" for v in verdicts):
        return "supported"
    if all(v == "contradicted" for v in verdicts):
        return "contradicted"
    if "contradicted" in verdicts and "supported" in verdicts:
        return "mixed"
    return "contradicted in part" if "contradicted" in verdicts else (
        "supported in part" if "supported" in verdicts else "not separated")


def gans_beat_vaes(entries: list[dict], key: str) -> Claim:
    gans = [e for e in entries if family(e) == "GAN" and key in e["result"]["metrics"]]
    vaes = [e for e in entries if family(e) in ("VAE", "GMVAE") and key in e["result"]["metrics"]]
    pairs = []
    for g in gans:
        for v in vaes:
            mg, mv = g["result"]["metrics"][key], v["result"]["metrics"][key]
            pairs.append((g, v, compare(mg, mv, mg["higher_is_better"])))
    evidence = "; ".join(f"{g['name']} {_with_ci(g['result']['metrics'][key])} vs {v['name']} "
                         f"{_with_ci(v['result']['metrics'][key])}: {verdict}" for g, v, verdict in pairs)
    return Claim("GANs (LSGAN, PGGAN) give more realistic images than VAE and GMVAE", KUMAR,
                 f"{key}: {evidence}" if pairs else "needs a GAN and a VAE or GMVAE entry",
                 _combine([p[2] for p in pairs]))


def gans_fewer_parameters(entries: list[dict]) -> Claim:
    def params(fams):
        return [(e["name"], e["card"].get("training", {}).get("parameters")) for e in entries if family(e) in fams]

    gans = [(n, p) for n, p in params(("GAN",)) if p]
    vaes = [(n, p) for n, p in params(("VAE", "GMVAE")) if p]
    if not gans or not vaes:
        return Claim("GANs use fewer parameters than VAE and GMVAE", KUMAR,
                     "needs parameter counts of a GAN and a VAE or GMVAE entry", "no evidence")
    evidence = ", ".join(f"{n} {p / 1e6:.2f}M" for n, p in gans + vaes)
    verdict = ("supported" if max(p for _, p in gans) < min(p for _, p in vaes)
               else "contradicted" if min(p for _, p in gans) > max(p for _, p in vaes) else "mixed")
    return Claim("GANs use fewer parameters than VAE and GMVAE", KUMAR, f"trainable parameters: {evidence}",
                 verdict)


def mixed_vs_real(entries: list[dict]) -> Claim:
    rows, verdicts = [], []
    for e in entries:
        block = e.get("augmentation")
        if not block or "aug_mixed_delta_accuracy" not in block["metrics"]:
            continue
        m = block["metrics"]
        d = m["aug_mixed_delta_accuracy"]
        # the claim: mixing synthetic in (half the real images replaced) lowers accuracy, delta < 0
        ci = d.get("ci")
        verdicts.append("not separated" if not ci or ci[0] <= 0 <= ci[1] else
                        "supported" if ci[1] < 0 else "contradicted")
        rows.append(f"{e['name']} ({block['task']}): real only {_with_ci(m['aug_real_accuracy'])}, mixed "
                    f"{_with_ci(m['aug_mixed_accuracy'])}, difference {_with_ci(d)}")
    return Claim("Replacing half of the real training images with synthetic ones lowers accuracy (1,000 real "
                 "0.81 vs 500 real + 500 synthetic 0.73, Edema vs No Finding)", MALIK,
                 "; ".join(rows) if rows else "needs an entry with an augmentation block",
                 _combine(verdicts))


def pggan_labels_match(entries: list[dict]) -> Claim:
    rows, verdicts = [], []
    for e in entries:
        m = e["result"]["metrics"].get("label_js")
        if family(e) != "GAN" or not e["slug"].startswith("pggan") or m is None:
            continue
        floor = m.get("real_vs_real")
        ci = m.get("ci")
        if floor is None or not ci:
            verdicts.append("not separated")
        else:
            verdicts.append("supported" if ci[0] <= floor else "contradicted")
        rows.append(f"{e['name']}: label_js {_with_ci(m)}" + (f", real vs real {_fmt(floor)}" if floor is not None else ""))
    return Claim("The label distribution of PGGAN samples (by a classifier) matches the training images'", SEGAL,
                 "; ".join(rows) if rows else "needs a PGGAN entry",
                 _combine(verdicts).replace("supported", "supported (interval reaches the real-vs-real level)"))


def white_paper_conditions(entries: list[dict], key: str) -> Claim:
    rows, verdicts = [], []
    for e in entries:
        conds = ((e["result"].get("per_condition") or {}).get("conditions") or {})
        if family(e) != "DiffuseVAE":
            continue
        ms = [(c, conds.get(c, {}).get("metrics", {}).get(key)) for c in WHITE_ORDER]
        if any(m is None for _, m in ms):
            rows.append(f"{e['name']}: no per-condition {key} for every one of {', '.join(WHITE_ORDER)}")
            continue
        hib = ms[0][1]["higher_is_better"]
        verdicts += [compare(a, b, hib) for (_, a), (_, b) in itertools.pairwise(ms)]
        rows.append(f"{e['name']}: " + ", ".join(f"{c} {_with_ci(m)}" for c, m in ms))
    return Claim("Per-condition quality order: healthy lungs best, then pleural effusion, pneumonia worst "
                 "(FID 251, 315, 419)", WHITE, "; ".join(rows) if rows else "needs a DiffuseVAE entry with "
                 "per-condition metrics", _combine(verdicts))


def white_paper_rrs(entries: list[dict]) -> Claim:
    rows, verdicts = [], []
    lo, hi = WHITE_RRS
    for e in entries:
        block = e.get("reconstruction")  # rrs_moco on held-out real images (publish.reconstruction_block)
        m = e["result"]["metrics"].get("rrs_moco") or (block or {}).get("metrics", {}).get("rrs_moco")
        if m is None or family(e) not in ("DiffuseVAE", "VAE", "GMVAE"):
            continue
        if block is not None and m is block["metrics"]["rrs_moco"] and not block["comparable"]:
            rvr = f", real vs real {m['real_vs_real']:.3g}" if m.get("real_vs_real") is not None else ""
            rows.append(f"{e['name']}: rrs_moco {_with_ci(m)}{rvr}, with random MoCo weights (no verdict: not on "
                        "the paper's scale)")
            continue
        ci = m.get("ci") or [m["value"], m["value"]]
        verdicts.append("supported" if lo <= ci[1] and ci[0] <= hi else "contradicted")
        rows.append(f"{e['name']}: rrs_moco {_with_ci(m)}")
    return Claim(f"The reconstructed-representation score lies in {lo}-{hi}", WHITE,
                 "; ".join(rows) + (" (cxrbench's MoCo model, not the paper's: the scale may differ)" if verdicts
                                    else "") if rows else "needs an entry with rrs_moco", _combine(verdicts).replace("supported", "supported (overlaps)"))


def claims(entries: list[dict], key: str) -> list[Claim]:
    """The claims rows from the ranked entries of one protocol group, ranked by ``key``."""
    return [gans_beat_vaes(entries, key), gans_fewer_parameters(entries), mixed_vs_real(entries),
            pggan_labels_match(entries), white_paper_conditions(entries, key), white_paper_rrs(entries)]
