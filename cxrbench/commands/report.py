"""``cxrbench report``: an HTML + Markdown report (tables and figures) of one result file."""

from __future__ import annotations

import sys

from ..publish.report import load_and_write

EPILOG = """examples:
  # report.html (self-contained, open it from disk) and report.md + PNGs in report/
  cxrbench report result.json --out report/
  # the same straight after an evaluation
  cxrbench evaluate --samples samples/ --reference real/ --out result.json --report report/
"""


def add_arguments(p) -> None:
    p.add_argument("result", help="a result JSON written by `cxrbench evaluate --out`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.html, report.md and figures")
    p.add_argument("--seed", type=int, default=0, help="which images the grids show")


def run(args) -> int:
    paths = load_and_write(args.result, args.out, seed=args.seed)
    print(f"wrote {paths['html']} and {paths['md']}", file=sys.stderr)
    print(paths["html"])
    return 0
