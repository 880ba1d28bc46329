"""``cxrbench stats``: save a reference's feature statistics once; `evaluate --reference FILE.npz` reuses them."""

from __future__ import annotations

import sys

HELP = "save a reference set's per-extractor mean/covariance (for FID against it without its images)"
EPILOG = """examples:
  cxrbench stats --reference nih-cxr14 --reference-split test --out nih-test.npz
  cxrbench evaluate --samples samples/ --reference nih-test.npz
"""


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def add_arguments(p) -> None:
    from .evaluate import add_resize_arguments

    p.add_argument("--reference", required=True, help="folder, .npy/.npz array of images, or a named reference")
    p.add_argument("--reference-split", help="half0 | half1 | nih-cxr14: test, train_val | chexpert: "
                   "train, valid | hash-train, hash-valid, hash-test")
    p.add_argument("--out", required=True, help="the .npz file to write (atomically)")
    p.add_argument("--extractors", type=_csv, default=("inception", "xrv"))
    p.add_argument("--weights", default="auto", help="auto | random | a folder holding the weights files")
    p.add_argument("--moco-checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the real-vs-real halves")
    add_resize_arguments(p)
    p.add_argument("--cache-dir")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from ..errors import UsageError
    from ..harness import EvalConfig
    from ..reference_stats import write_reference_stats

    if not args.out.endswith(".npz"):
        raise UsageError(f"--out {args.out}: reference statistics are saved as a .npz file")
    cfg = EvalConfig(extractors=args.extractors, weights=args.weights, moco_checkpoint=args.moco_checkpoint,
                     device=args.device, batch_size=args.batch_size, seed=args.seed, cache_dir=args.cache_dir,
                     reference_split=args.reference_split, skip_bad=args.skip_bad, progress=not args.quiet,
                     xrv_resize=args.xrv_resize, inception_resize=args.inception_resize)
    path = write_reference_stats(args.reference, args.out, config=cfg)
    print(f"wrote {path}", file=sys.stderr)
    return 0
