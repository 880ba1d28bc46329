"""``cxrbench verify``: re-hash the samples and recompute every number of a leaderboard entry."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..publish.compare import ATOL, RTOL, format_table
from ..publish.entry import load_entry
from .submit import add_local_arguments, local_from_args

EPILOG = """\
Fails (exit 1, with a table of differences) when any sample file was added, removed or changed (named by
path), when the reference or any extractor's weights hash differs, or when any recomputed number (value,
CI, real-vs-real) differs from the entry by more than numerical noise: |a - b| <= rtol * max(|a|, |b|) +
atol (rtol 1e-6). The same code, weights and device reproduce numbers exactly; loosen --rtol (e.g. 1e-4)
when verifying on another kind of device. The feature cache is not used unless --use-cache.

examples:
  cxrbench verify leaderboard/entries/ddpm-64.json                  # the samples where the entry says
  cxrbench verify leaderboard/entries/ddpm-64.json --samples samples/ddpm/
  cxrbench verify leaderboard/entries/ddpm-64.json --samples samples/ddpm/ --reference /data/nih --rtol 1e-4
"""


def add_arguments(p) -> None:
    p.add_argument("entry", type=Path, help="entry file, leaderboard/entries/NAME.json")
    p.add_argument("--samples", help="the submitted samples folder (default: where the entry records it, relative "
                   "to the entry file)")
    p.add_argument("--reference", help="where the entry's reference is on this machine (default: as recorded)")
    p.add_argument("--weights", help="folder of weights files on this machine (default: as recorded)")
    p.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance (default {RTOL:g})")
    p.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance (default {ATOL:g})")
    p.add_argument("--use-cache", action="store_true", help="reuse cached features instead of recomputing")
    p.add_argument("--augment-real", help="the real images of the entry's augmentation block (default: as recorded, "
                   "else ../shared/data/nih_extra_256px under cxr128, .../nih1000_64px otherwise); absent: that "
                   "block is not rechecked")
    p.add_argument("--augment-samples", help="the augmentation block's own samples folder, when it has one "
                   "(default: where the block records it, relative to the entry file)")
    add_local_arguments(p)


def run(args) -> int:
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..publish.submission import recorded_samples, verify, verify_curve

    if not (args.rtol >= 0 and args.atol >= 0):
        raise UsageError("--rtol and --atol must be >= 0")
    entry = load_entry(args.entry)
    samples = args.samples or recorded_samples(entry, args.entry)
    notes: list[str] = []
    rows, result = verify(
        entry, samples, reference=args.reference, rtol=args.rtol, atol=args.atol,
        augment_real=args.augment_real, augment_samples=args.augment_samples, entry_path=args.entry, notes=notes,
        **local_from_args(args)
    )
    if result is not None:  # the reconstruction block: its own files and score (publish.reconstruction_block)
        from ..publish import reconstruction_block  # why: it loads the engine (see run's import above)

        rec_rows, rec_note = reconstruction_block.recheck(entry, args.entry, rtol=args.rtol, atol=args.atol,
                                                          **local_from_args(args))
        rows += rec_rows
        if rec_note:
            print(rec_note)
        elif "reconstruction" in entry and not rec_rows:
            print(f"reconstruction block: {entry['reconstruction']['samples']['n']} reconstructions match by sha256; "
                  "rrs_moco recomputed")
    curve_note = None
    if result is not None and not rows:  # the learning curve's checkpoints that record their samples
        curve_rows, n_curve = verify_curve(entry, args.entry, rtol=args.rtol, atol=args.atol, **local_from_args(args))
        rows += curve_rows
        total = len((entry.get("learning_curve") or {}).get("checkpoints", []))
        if total:
            curve_note = (f"learning curve: {n_curve} of {total} points rechecked (checkpoints recomputed from their "
                          "recorded samples, the final point against the entry)"
                          + ("" if n_curve == total else "; the others record no samples (the trainer's word)"))
    for note in notes + ([curve_note] if curve_note and not rows else []):
        print(note)
    if rows:
        print(format_table(["what", "entry", "recomputed", "note"], [list(r) for r in rows]))
        if result is None:
            print("metrics not recomputed: the sample files differ from the entry's")
        print(f"cxrbench verify: {args.entry}: FAILED, {len(rows)} difference(s)", file=sys.stderr)
        return 1
    n = len(entry["result"]["metrics"]) + (len(entry["augmentation"]["metrics"])
                                            if "augmentation" in entry and not notes else 0)
    conds = (entry["result"].get("per_condition") or {}).get("conditions") or {}
    n_cond = sum(len(c.get("metrics") or {}) for c in conds.values())
    n_with = sum("metrics" in c for c in conds.values())
    per_cond = f" and {n_cond} per-condition values ({n_with} conditions)" if n_cond else ""
    aug_files = ((entry.get("augmentation") or {}).get("samples") or {}).get("n")
    files = f"{entry['samples']['n']} sample files" + (
        f" (and the augmentation block's {aug_files})" if aug_files else "")
    print(f"{args.entry}: verified: {files} and weights match by sha256; "
          f"{n} metrics{per_cond} recomputed within rtol {args.rtol:g}")
    return 0
