"""``cxrbench resubmit``: re-make entries from what they record, under the current version of their protocol."""

from __future__ import annotations

import sys
from pathlib import Path

from .submit import add_local_arguments, local_from_args

EPILOG = """\
Each entry is evaluated again from its own recorded files (samples, learning-curve checkpoints' samples,
augmentation samples, reconstructions; all must be where the entry says, with the same sha256) and replaced.
Nothing is trained or sampled. For a protocol's new version: every board row re-made in minutes.

examples:
  cxrbench resubmit leaderboard/entries/*.json
  cxrbench leaderboard --out leaderboard/
"""


def add_arguments(p) -> None:
    p.add_argument("entries", nargs="+", type=Path, help="entry JSON files (replaced in place)")
    add_local_arguments(p)


def run(args) -> int:
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..publish.submission import resubmit

    for entry in args.entries:
        path, new = resubmit(entry, **{k: v for k, v in local_from_args(args).items() if v is not None})
        p = new["protocol"]
        print(f"{entry}: re-made under {p['name']} v{p['version']} -> {path}", file=sys.stderr)
    return 0
