"""``cxrbench stats``: save a reference's feature statistics once; `evaluate --reference FILE.npz` reuses them."""

from __future__ import annotations

import sys

from ..config import EvalConfig, config_default
from ..engine.reference_stats import write_reference_stats
from ..errors import UsageError
from ..features.base import FeatureKind
from ..fileio import check_writable
from ..registry import EXTRACTORS
from .evaluate import add_resize_arguments
from .options import add_config_flag, csv_list

EPILOG = """examples:
  cxrbench stats --reference nih-cxr14 --reference-split test --out nih-test.npz
  cxrbench evaluate --samples samples/ --reference nih-test.npz
  # offline: the cxr64 protocol's network ships with cxrbench (evaluate takes the file's extractors)
  cxrbench stats --reference real/ --extractors cxr128 --out real-cxr128.npz
  cxrbench evaluate --samples samples/ --reference real-cxr64.npz
"""


def add_arguments(p) -> None:
    p.add_argument("--reference", required=True, help="folder, .npy/.npz array of images, or a named reference")
    p.add_argument("--reference-split", help="half0 | half1 | nih-cxr14: test, train_val | chexpert: "
                   "train, valid | hash-train, hash-valid, hash-test")
    p.add_argument("--out", required=True, help="the .npz file to write (atomically)")
    p.add_argument("--extractors", type=csv_list, default=None,
                   help="default: the embedding extractors of evaluate's default --extractors (what FID against "
                        "the file needs)")
    add_config_flag(p, "weights")
    p.add_argument("--moco-checkpoint")
    add_config_flag(p, "device")
    add_config_flag(p, "batch_size")
    add_config_flag(p, "seed", help="seed of the real-vs-real halves")
    add_resize_arguments(p)
    p.add_argument("--cache-dir")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--quiet", action="store_true")


def default_extractors() -> tuple[str, ...]:
    """``EvalConfig``'s default extractors that statistics are made of (embeddings computed from images)."""
    return tuple(e for e in config_default("extractors")
                 if EXTRACTORS.get(e).kind == FeatureKind.EMBEDDING and getattr(EXTRACTORS.get(e), "derived_from", None) is None)


def config_from_args(args):
    return EvalConfig(extractors=args.extractors or default_extractors(), weights=args.weights,
                      moco_checkpoint=args.moco_checkpoint, device=args.device, batch_size=args.batch_size,
                      seed=args.seed, cache_dir=args.cache_dir, reference_split=args.reference_split,
                      skip_bad=args.skip_bad, progress=not args.quiet, xrv_resize=args.xrv_resize,
                      inception_resize=args.inception_resize, raddino_resize=args.raddino_resize)


def run(args) -> int:
    if not args.out.endswith(".npz"):
        raise UsageError(f"--out {args.out}: reference statistics are saved as a .npz file")
    check_writable(args.out)
    path = write_reference_stats(args.reference, args.out, config=config_from_args(args))
    print(f"wrote {path}", file=sys.stderr)
    return 0
