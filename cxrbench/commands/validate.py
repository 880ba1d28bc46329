"""``cxrbench validate``: does an extractor's FID order image sets the way a person would?"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..config import EvalConfig
from ..engine.validity import DEFAULT_N, NOISE_REPS, PROGRESS_DIR, ROOT, SuiteData, plot, run_suite, write_panel_grids
from ..errors import UsageError
from ..fileio import atomic_write_bytes
from ..protocols.validity_sets import PROTOCOL_DATA
from .options import add_config_flag

DESCRIPTION = """Measure FID against a protocol's reference, through one extractor, for sets built deterministically from
real held-out images: (a) real, (b) degraded but anatomical (blur, noise, JPEG, contrast, low resolution,
GAN artefacts; mild and moderate), (c) anatomy violated (random fields, blobs, patch shuffles, flips,
rotations, negatives, splices), (d) pediatric images (another population) and (e) the committed generator
sample sets (the cxr128 board's and the retired cxr64 board's) and training-progress ladders. Prints every
set's value, the expected pairwise orders per rule, the violations and Kendall's tau against the expected
order; writes validity-NAME.json and validity-NAME.png."""
EPILOG = """examples:
  cxrbench validate --extractor cxr64
  cxrbench validate --extractor random-conv --out validity/
  cxrbench validate --extractor inception --weights /path/to/weights/
  cxrbench validate --extractor pixels --data ../shared/data --n 100 --skip-missing
  cxrbench validate --panel-grids panel/     # blinded grids of the generator sets for an eye panel
"""


def default_data() -> str:
    return os.environ.get("CXRBENCH_SHARED_DATA", "../shared/data")


def add_arguments(p) -> None:
    p.add_argument("--extractor", help="a registered extractor (`cxrbench ls`); required unless --panel-grids")
    p.add_argument("--protocol", default="cxr128", choices=sorted(PROTOCOL_DATA),
                   help="whose held-out and reference splits build the sets (default cxr128: nih_extra_256px, 128 px)")
    p.add_argument("--data", default=None,
                   help="the shared data folder holding nih_extra_256px/ and kermany_pediatric_covid_skytells/ "
                        "(default $CXRBENCH_SHARED_DATA or ../shared/data)")
    add_config_flag(p, "weights")
    p.add_argument("--out", default="validity", help="folder for validity-NAME.json and .png (default validity/)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"images per set (default {DEFAULT_N}, the leaderboard's "
                   "sample count: every set at the same N)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets and the corruptions")
    p.add_argument("--root", default=str(ROOT),
                   help="the repository root the generator sample sets are read from (leaderboard/samples/cxr128/ "
                        "and leaderboard/validity/sets/cxr64-board/; default: the current folder)")
    p.add_argument("--progress-dir", default=str(PROGRESS_DIR),
                   help=f"training-progress ladders, GEN/ckpt<k>-*/ (default {PROGRESS_DIR})")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out the sets whose data folder is absent (named in the result) instead of failing")
    p.add_argument("--all-checks", action="store_true", help="print every pairwise check, not only the violations")
    p.add_argument("--noise-reps", type=int, default=NOISE_REPS,
                   help=f"bootstrap replicates telling whether each violation is beyond FID's sampling noise "
                        f"(default {NOISE_REPS}; 0 skips it)")
    add_config_flag(p, "device")
    add_config_flag(p, "batch_size")
    p.add_argument("--cache-dir")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--panel-grids", metavar="DIR",
                   help="instead of measuring, write the eye panel's blinded grids: DIR/grids/set_<letter>.png (36 "
                        "samples of each generator set under a shuffled letter) and DIR/grids/real_reference.png "
                        "(36 held-out real images), the letters' key in DIR/key.json; show a rater DIR/grids only")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def write_grids(args) -> int:
    data = SuiteData(Path(args.data or default_data()), protocol=PROTOCOL_DATA[args.protocol], n=args.n,
                     seed=args.seed, root=args.root, progress_dir=args.progress_dir, skip_missing=True)
    real, sets = data.panel_files()
    if not sets:
        raise UsageError(f"--panel-grids: no generator sample set found under --root {args.root}; run from the "
                         "repository root or pass --root")
    key = write_panel_grids(args.panel_grids, real_paths=real, sets=sets,
                            size=data.size, seed=args.seed)
    grids = Path(args.panel_grids) / "grids"
    print(f"wrote {len(key)} blinded grids and real_reference.png to {grids}/ and the key to "
          f"{Path(args.panel_grids) / 'key.json'}: show a rater {grids}/ only, ask for a tier per letter (1 = closest "
          "to the real set; sets they cannot order share a tier), then unblind with the key")
    return 0


def run(args) -> int:
    if args.panel_grids:
        return write_grids(args)
    if not args.extractor:
        raise UsageError("--extractor NAME is required (or --panel-grids DIR)")
    if args.noise_reps < 0:
        raise UsageError(f"--noise-reps {args.noise_reps}: a count of bootstrap replicates, 0 or more")
    if args.n < 10:
        raise UsageError(f"--n {args.n}: the suite needs at least 10 images per set")
    config = EvalConfig(weights=args.weights, device=args.device, batch_size=args.batch_size,
                        cache_dir=args.cache_dir, progress=not args.quiet)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    res = run_suite(args.extractor, data_root=Path(args.data or default_data()),
                    protocol=PROTOCOL_DATA[args.protocol],
                    config=config, n=args.n, seed=args.seed, root=args.root,
                    progress_dir=args.progress_dir, skip_missing=args.skip_missing, log=log,
                    noise_reps=args.noise_reps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"validity-{args.extractor}"

    atomic_write_bytes(out / f"{stem}.json", (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())
    fig = plot(res, out / f"{stem}.png")

    _report(res, args.all_checks)
    print(f"wrote {out / (stem + '.json')} and {fig}", file=sys.stderr)
    return 0


def _report(res: dict, all_checks: bool) -> None:
    """The printed table: every set's value, the rules, the violations, the agreement figures."""
    e = res["extractor"]
    print(f"validity of {e['name']}@{e['version']} (weights {str(e['weights'])[:16]}) under {res['protocol']}: "
          f"FID vs {res['n_reference']} reference images, {res['n_per_set']} images per set")
    print(f"{'set':<44}{'class':<12}{'FID':>12}{'x floor':>10}")
    floor = res["floor"] or 0.0
    for s in res["sets"]:
        ratio = f"{s['value'] / floor:10.2f}" if floor > 0 else f"{'':10}"
        print(f"{s['name']:<44}{s['cls']:<12}{s['value']:12.4g}{ratio}")
    print("expected orders (rule: pairs, violations):")
    for rule, r in res["rules"].items():
        print(f"  {rule:<34}{r['pairs']:5d} {r['violations']:5d}")
    shown = res["checks"] if all_checks else res["violations"]
    print(f"{'checks' if all_checks else 'violations'} ({len(res['violations'])} of {len(res['checks'])}):")
    for c in shown:
        mark = "ok " if c["ok"] else "BAD"
        noise = ""
        if "difference_interval" in c:
            lo, hi = c["difference_interval"]
            noise = f"  difference 95% [{lo:.3g}, {hi:.3g}]: {'beyond' if c['beyond_noise'] else 'within'} sampling noise"
        print(f"  {mark} {c['better']} ({c['value_better']:.4g}) < {c['worse']} ({c['value_worse']:.4g})  [{c['rule']}]{noise}")
    if "violations_beyond_noise" in res:
        print(f"violations beyond FID's sampling noise at n = {res['n_per_set']} (95% bootstrap interval of the "
              f"difference below zero): {res['violations_beyond_noise']} of {len(res['violations'])}")
    print(f"Kendall tau: expected pairwise order {_fmt(res['kendall_tau'])}; generator sets (real first, then the "
          f"panel's mean eye tier) {_fmt(res['kendall_tau_generators'])}; real/degraded/violated classes "
          f"{_fmt(res['kendall_tau_classes'])}")
    taus = {r: t for r, t in res.get("kendall_tau_raters", {}).items() if t is not None}
    if taus:
        inter = [t for t in res["eye_panel"]["inter_rater_tau_b"].values() if t is not None]
        print("generator sets, tau-b against each rater: " + ", ".join(f"{r} {t:+.3f}" for r, t in taus.items())
              + f" (mean {sum(taus.values()) / len(taus):+.3f})"
              + (f"; the raters against each other {min(inter):+.3f} to {max(inter):+.3f} (mean "
                 f"{sum(inter) / len(inter):+.3f})" if inter else ""))
    loo = res.get("eye_leave_one_out") or {}
    if loo:
        rows = list(loo.values())
        wrong = [r["rater_reversed"] for r in rows]
        metric = [r["metric_wrong"] for r in rows]
        print(f"eye panel, each rater left out in turn: of the others' consensus ({min(r['pairs'] for r in rows)}-"
              f"{max(r['pairs'] for r in rows)} pairs) the left-out rater reverses {min(wrong)}-{max(wrong)} (mean "
              f"{sum(wrong) / len(wrong):.2f}, and ties {sum(r['rater_tied'] for r in rows) / len(rows):.2f}); this "
              f"metric gets {min(metric)}-{max(metric)} wrong (mean {sum(metric) / len(metric):.2f})")
    for name, r in res["blob_ranks"].items():
        extra = f", {r['rank_generators']} of {r['of_generators']} among real + generator sets" if "rank_generators" in r else ""
        print(f"blob set {name}: rank {r['rank_all']} of {r['of_all']} sets (1 = closest to the reference){extra}")
    if "closest_violated" in res:
        c = res["closest_violated"]
        print(f"closest anatomy-violated set: {c['set']} at {c['x_floor']:.2f} x the real-vs-real floor")
    if "unseen_families" in res:
        u = res["unseen_families"]
        print(f"families unseen in training: {u['violations']} of {u['pairs']} pairs violated, tau {_fmt(u['kendall_tau'])}")
    d = res["dimensionality"]
    if d["top1"] is not None:
        print(f"reference features: {d['dims']}-d; top 1/3/10 principal components hold {d['top1']:.1%} / "
              f"{d['top3']:.1%} / {d['top10']:.1%} of the variance; participation ratio {d['participation_ratio']:.2f}")
    for s in res["skipped"]:
        print(f"skipped: {s}")
