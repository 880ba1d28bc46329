"""``cxrbench leaderboard``: render leaderboard/README.md and index.html from the entries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError
from ..publish.entry import load_entries
from ..publish.leaderboard import render
from ..publish.ranking import group_entries

EPILOG = """\
Entries are grouped by protocol name and version and by extractor weights (two versions, or two sets of
weights, never share a table); within a group only entries computed with the published weights
(comparable: true) are ranked, by each metric's own direction. Output is byte-stable: the same entries
always give the same files.

examples:
  cxrbench leaderboard --out leaderboard/
  cxrbench leaderboard --entries my_entries/ --out /tmp/board --rank-by fid_xrv
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entries", type=Path, default=None, help="entries folder (default: OUT/entries)")
    parser.add_argument("--out", type=Path, default=Path("leaderboard"), help="output folder (default: leaderboard)")
    parser.add_argument(
        "--rank-by",
        default=None,
        metavar="KEY",
        help="metric key that orders the ranked tables (default: the first fid_* key in each protocol)",
    )


def run(args: argparse.Namespace) -> int:
    entries_dir = args.entries if args.entries is not None else args.out / "entries"
    entries = load_entries(entries_dir)
    if args.rank_by is not None:
        known = {k for g in group_entries(entries) for k in g.directions}
        if entries and args.rank_by not in known:
            raise UsageError(f"--rank-by {args.rank_by!r}: no entry has that metric; known: {', '.join(sorted(known))}")
    written = render(entries, args.out, entries_dir=entries_dir, rank_by=args.rank_by)
    print(f"rendered {len(entries)} entries from {entries_dir}", file=sys.stderr)
    for p in written:
        print(p)
    return 0
