"""``cxrbench check``: CI regression check of a samples folder against a stored entry or result file."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CxrbenchError
from ..publish.compare import Tolerance, format_table
from .options import csv_list
from .submit import add_local_arguments, local_from_args

EPILOG = """\
--against takes a leaderboard entry (cxrbench submit) or a result file (cxrbench evaluate --out FILE): a CI
baseline needs no model card. Evaluates --samples with its config (extractors, metrics, seeds, weights, reference) and compares
every metric, in its own direction (higher_is_better), with the entry. A metric regresses when it is worse
by more than the allowed amount: --tolerance auto (default) allows the two runs' noise, sqrt(h1^2 + h2^2)
with h the half-width of each bootstrap 95% CI; a number allows that absolute amount; X% allows X percent
of the entry's value. Exit 0: no regression; 1: a table of what regressed and by how much; 2: the check
could not run (bad flags, unreadable entry or samples, missing weights, or an entry that cannot be compared
here: different weights or reference).

examples:
  cxrbench check --samples samples/ --against leaderboard/entries/ddpm-64.json
  # a baseline from a plain evaluation, no card or submit needed
  cxrbench evaluate --samples baseline_samples/ --reference real/ --out baseline.json
  cxrbench check --samples samples/ --against baseline.json --metrics fid,precision_xrv --tolerance 5%
  # offline CI job, against an entry made with --weights random
  cxrbench check --samples ci_samples/ --against tests/ci_entry.json --tolerance auto --quiet
"""


def add_arguments(p) -> None:
    p.add_argument("--samples", required=True, help="folder (or .npy/.npz array) of new generated images")
    p.add_argument("--against", required=True, type=Path,
                   help="entry file (cxrbench submit) or result file (cxrbench evaluate --out) to compare with")
    p.add_argument("--metrics", type=csv_list, default=None,
                   help="metric keys or names to check, comma-separated (default: all in the entry)")
    p.add_argument("--tolerance", default="auto", help="auto | absolute amount | percentage like 5%% (default auto)")
    p.add_argument("--reference", help="where the entry's reference is on this machine (default: as recorded)")
    p.add_argument("--weights", help="folder of weights files on this machine (default: as recorded)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    add_local_arguments(p)


def run(args) -> int:
    try:
        return _run(args)
    except CxrbenchError as e:
        # In CI, exit 1 must mean "regressed" and nothing else: a comparison that could not run (missing
        # entry, unreadable samples, absent weights) is exit 2.
        e.exit_code = 2
        raise


def _run(args) -> int:
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..publish.submission import check, load_baseline

    tolerance = Tolerance.parse(args.tolerance)  # bad flags fail before any work
    entry = load_baseline(args.against)
    rows, _ = check(
        entry, args.samples, metrics=args.metrics, tolerance=tolerance, reference=args.reference,
        **local_from_args(args),
    )

    def g(v):
        return "-" if v is None else f"{v:.4g}"

    table = [
        [r.key, "higher" if r.higher_is_better else "lower", g(r.entry), g(r.new),
         "-" if r.worse_by is None else f"{r.worse_by:+.4g}", g(r.allowed),
         "REGRESSED" if r.regressed else "ok", r.note]
        for r in rows
    ]
    print(format_table(["metric", "better", "entry", "new", "worse by", "allowed", "status", "note"], table))
    bad = [r for r in rows if r.regressed]
    if bad:
        names = ", ".join(
            f"{r.key} ({'missing' if r.worse_by is None else f'worse by {r.worse_by:.4g}'})" for r in bad
        )
        print(f"cxrbench check: {len(bad)} metric(s) regressed against {args.against}: {names}", file=sys.stderr)
        return 1
    print(f"cxrbench check: no regression in {len(rows)} metric(s) against {args.against}", file=sys.stderr)
    return 0
