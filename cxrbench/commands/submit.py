"""``cxrbench submit``: evaluate a samples folder and write a leaderboard entry (card + result + hashes)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import EvalConfig, config_default
from ..errors import UsageError
from ..fileio import check_writable, read_json_object
from ..publish.card import load_card
from .evaluate import format_table, resolve_protocol
from .options import add_config_flag, add_moved_flag, csv_list

EPILOG = """\
cxrbench computes every number itself; the entry records the model card, the result, the sha256 of every
sample file and of every extractor's weights, and the protocol name and version. The file is named after
the card's name and is never overwritten without --force.

model.toml fields: name, authors (list), training_data, resolution (int or [h, w]), conditioning
(unconditional | labels | text | image), license; optional url and paper (http(s) links).

examples:
  # under the default protocol cxr128 (no --reference: comparable offline, ranked on the cxr128 board)
  cxrbench submit --samples samples/ddpm/ --card samples/ddpm/model.toml --entries leaderboard/entries/
  cxrbench submit --samples samples/ddpm/ --card samples/ddpm/model.toml --reference nih-cxr14 \\
      --reference-split test --out leaderboard/entries/
  # offline smoke run (random weights: listed on the leaderboard but never ranked)
  cxrbench submit --samples samples/ --card model.toml --reference real/ --weights random \\
      --extractors random-conv --out /tmp/entries
"""


def add_local_arguments(p) -> None:
    """Flags that describe this machine, shared by submit, verify and check."""
    # None: the entry's value (check, verify) or EvalConfig's (submit)
    p.add_argument("--device", default=None,
                   help=f"auto | cpu | cuda | cuda:N | mps (default {config_default('device')})")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per forward pass (default {config_default('batch_size')})")
    p.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default min(4, CPUs))")
    p.add_argument("--cache-dir", help="feature cache (default $CXRBENCH_CACHE or ~/.cache/cxrbench)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def local_from_args(args) -> dict:
    """``EvalConfig`` overrides from this machine's flags; None keeps the entry's (or the default) value."""
    out = {
        "device": args.device, "batch_size": args.batch_size, "num_workers": args.num_workers,
        "cache_dir": args.cache_dir, "progress": not args.quiet, "weights": getattr(args, "weights", None),
    }
    if getattr(args, "no_cache", False):
        out["use_cache"] = False
    if getattr(args, "use_cache", False):
        out["use_cache"] = True
    return out


def add_arguments(p) -> None:
    p.add_argument("--samples", required=True, help="folder of generated images (the whole folder is the submission)")
    p.add_argument("--card", required=True, type=Path, help="model card, model.toml")
    p.add_argument("--reference", default=None, help="folder, .npz array, or a name: nih-cxr14, chexpert (default: "
                   "none, and the cxr128 protocol runs with its shipped reference)")
    p.add_argument("--reference-split", help="half0 | half1 | a labels.csv split | nih-cxr14: test, train_val | "
                   "chexpert: train, valid | hash-train, hash-valid, hash-test")
    p.add_argument("--train-reference", help="the generator's training images (for memorization and re-identification)")
    p.add_argument("--protocol", default=None, help="cxr128 (the default without --reference) | cxr64 (retired) | default (your own "
                   "--reference) | augmentation")
    add_config_flag(p, "weights", help="auto (published weights) | random (smoke run, never ranked) | a folder "
                    "holding the weights files")
    p.add_argument("--extractors", type=csv_list, default=None, help="default: the protocol's, or "
                   "inception,xrv,xrv-classifier,pixels with --reference")
    p.add_argument("--metrics", type=csv_list, default=None, help="default: every metric whose inputs exist")
    add_config_flag(p, "seed")
    add_config_flag(p, "n_bootstrap")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--entries", type=Path, default=Path("leaderboard/entries"), metavar="DIR",
                   help="entries folder; the entry is written as DIR/<card slug>.json (default leaderboard/entries)")
    # --out names the one file a command writes (evaluate, augment, stats); submit's folder is --entries
    add_moved_flag(p, "--out", "is not a submit flag: the entries folder is --entries DIR (the entry is written as "
                   "DIR/<card slug>.json); --out names the file a command writes, as in evaluate")
    p.add_argument("--force", action="store_true", help="replace an existing entry for this model")
    p.add_argument("--augment", metavar="TASK", default=None, help="add the downstream augmentation block "
                   "(aug_* metrics: linear probe on the protocol's network) for this 'A vs B' task; default: "
                   "'Edema vs No Finding' under cxr128 (with --augment-samples), 'Effusion vs No Finding' under "
                   "cxr64 (added for conditional samples when --augment-real is found)")
    p.add_argument("--augment-samples", metavar="DIR", default=None,
                   help="the block's own synthetic images, requested per class of the task (manifest.csv, e.g. "
                        "`cxrbench sample RUN --labels-csv requests.csv`); recorded in the entry by sha256 and "
                        "location; adds the block (default: the submitted samples)")
    p.add_argument("--augment-n-per-class", type=int, default=None, metavar="N",
                   help="real (and synthetic) images per class; capped by the real training split, which says so "
                        "(default under cxr128: the most it holds, 43 Edema of nih_extra_256px; cxr64: 25)")
    p.add_argument("--augment-real", default=None, help="the NIH folder the augmentation trains and tests on "
                   "(default ../shared/data/nih_extra_256px under cxr128, .../nih1000_64px otherwise; "
                   "$CXRBENCH_SHARED_DATA replaces ../shared/data)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation block")
    p.add_argument("--learning-curve", type=Path, default=None, metavar="FILE",
                   help="a JSON learning_curve block (the metric at training checkpoints, as `cxrbench reproduce` "
                        "writes it); the entry itself is appended as its last point")
    p.add_argument("--reconstructions", type=Path, default=None, metavar="DIR",
                   help="the model's reconstructions of the cxr128 held-out real images (cxrbench sample RUN "
                   "--reconstruct ../shared/data/nih_extra_256px --reconstruct-split cxr128-heldout --out DIR): "
                   "adds the reconstruction block (rrs_moco against those images, found under "
                   "$CXRBENCH_SHARED_DATA or ../shared/data)")
    add_local_arguments(p)


def config_from_args(args):
    local = {k: v for k, v in local_from_args(args).items() if v is not None}
    return EvalConfig(
        **({"extractors": args.extractors} if args.extractors is not None else {}),
        metrics=args.metrics, seed=args.seed, n_bootstrap=args.n_bootstrap,
        reference_split=args.reference_split, train_reference=args.train_reference, protocol=resolve_protocol(args),
        **local,
    )


def format_augmentation(block: dict) -> str:
    """The entry's augmentation block as the `augment` command's table."""
    m = block["metrics"]
    head = (f"augmentation ({block['task']}, {block['config']['classifier']} probe on {block['config']['extractor']}, "
            f"N = {block['config']['n_real'] // 2} real per class, {block['config']['seeds']} seeds, "
            f"{block['details']['n_test']} real test images, synthetic labels "
            f"from {block['details']['synthetic_label_source']}):")
    rows = [f"  {k:<26} {m[k]['value']:+.3f}" + (f"  [{m[k]['ci'][0]:+.3f}, {m[k]['ci'][1]:+.3f}]" if m[k]["ci"] else "")
            for k in sorted(m)]
    return "\n".join([head, *rows])


def format_reconstruction(block: dict) -> str:
    """The entry's reconstruction block as one line, its note below."""
    m = block["metrics"][block["metric"]]
    ci = f"  [{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]" if m.get("ci") else ""
    rvr = f"  real-vs-real {m['real_vs_real']:.4f}" if m.get("real_vs_real") is not None else ""
    return (f"reconstruction ({block['samples']['n']} of the {block['real']['n']} {block['real']['split']} images): "
            f"{block['metric']} {m['value']:.4f}{ci}{rvr}\n  {block['note']}")


def run(args) -> int:
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..publish.submission import submit

    if args.no_augment and (args.augment or args.augment_samples or args.augment_n_per_class is not None):
        raise UsageError("--augment / --augment-samples / --augment-n-per-class and --no-augment contradict each "
                         "other; drop one")
    card = load_card(args.card)  # a bad card fails before any work
    check_writable(args.entries / f"{card.slug}.json")
    if args.reconstructions is not None:  # refused before the evaluation, not after it
        from ..publish.reconstruction_block import preflight  # why: it loads the engine (see run's import above)

        preflight(args.reconstructions)
    curve = None
    if args.learning_curve is not None:
        curve = read_json_object(args.learning_curve)
    notes: list[str] = []
    path, entry = submit(args.samples, args.reference, card, args.entries, config=config_from_args(args), force=args.force,
                         augment_task=args.augment, augment_real=args.augment_real, augment=not args.no_augment,
                         augment_samples=args.augment_samples, augment_n_per_class=args.augment_n_per_class,
                         notes=notes, curve=curve, reconstructions=args.reconstructions)
    print(format_table(entry["result"]))
    if "reconstruction" in entry:
        print(format_reconstruction(entry["reconstruction"]))
    if "augmentation" in entry:
        print(format_augmentation(entry["augmentation"]))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {path}" + ("" if entry["comparable"] else " (comparable: false; listed, never ranked)"))
    print(f"entry {path}: {entry['samples']['n']} files, sample set sha256 {entry['samples']['sha256']}",
          file=sys.stderr)
    return 0
