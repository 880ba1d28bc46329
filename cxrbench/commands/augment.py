"""``cxrbench augment``: the downstream augmentation-gain protocol (does adding synthetic images help?)."""

from __future__ import annotations

import dataclasses
import sys
import time

from ..engine.provenance import make_result
from ..features.base import is_random_weights
from ..fileio import check_writable
from ..protocols.augmentation.config import PROTOCOL_NAME, PROTOCOL_VERSION, AugmentConfig
from ..protocols.augmentation.protocol import figure
from ..protocols.augmentation.run import augment
from ..registry import CLASSIFIERS, EXTRACTORS
from .options import add_config_flag, add_moved_flag

EPILOG = """examples:
  # offline smoke run with seeded random xrv features and a linear probe (numbers not comparable)
  cxrbench augment --real ../shared/data/kermany_pediatric_covid_skytells --synthetic samples/ \\
      --task "Pneumonia vs No Finding" --n-real 400 --n-test 300 --weights random --out aug.json
  # Malik & Humair's setting on GPU, DenseNet121 fine-tuning, with a figure
  cxrbench augment --real nih/ --real-labels nih/labels.csv --synthetic samples/ \\
      --synthetic-labels samples/manifest.csv --task "Edema vs No Finding" --n-real 1000 --n-test 300 \\
      --seeds 3 --classifier densenet --device cuda --figure aug.png --out aug.json
"""


def _int_or_none(s: str):
    return None if s in ("", "none", "None") else int(s)


def add_arguments(p) -> None:
    d = AugmentConfig()  # the protocol's own knobs; those evaluate --protocol augmentation shares come from EvalConfig
    p.add_argument("--real", required=True, help="folder of real images with labels.csv (or --real-labels)")
    p.add_argument("--real-labels", help="labels CSV for --real (first column: path relative to the folder)")
    p.add_argument("--synthetic", required=True, help="folder (or .npy/.npz array) of generated images")
    p.add_argument("--synthetic-labels", help="manifest.csv with one column per label (default: the folder's "
                   "manifest.csv; absent: labels from the XRV classifier, noted in the result)")
    p.add_argument("--task", default=d.task, help=f"'A vs B' with label names (default {d.task!r})")
    add_config_flag(p, "augment.n_real", "--n-real", help="N real training images")
    add_config_flag(p, "augment.n_test", "--n-test", help="held-out real test images")
    p.add_argument("--n-synthetic", type=_int_or_none, default=None, help="K synthetic images added in "
                   "`augmented` (default N)")
    p.add_argument("--test-split", help="draw the test set only from these splits (comma-separated labels.csv "
                   "split values, cxr64-train / cxr64-reference / cxr64-heldout, or cxr128-train / cxr128-reference / "
                   "cxr128-heldout of nih_extra_256px); default with --extractor cxr64 "
                   "on NIH labels: cxr64-heldout,cxr64-reference")
    p.add_argument("--train-split", help="draw the real training images only from these splits (as --test-split); "
                   "default with --extractor cxr64 on NIH labels: cxr64-train")
    add_config_flag(p, "augment.seeds", "--seeds", help="training seeds (use >= 3)")
    add_config_flag(p, "seed", help="seed of the test draw and the bootstrap")
    p.add_argument("--classifier", choices=CLASSIFIERS.names(), default=d.classifier,
                   help="linear probe on frozen features (CPU default), small CNN (64 px), DenseNet121 fine-tuning")
    p.add_argument("--extractor", default=d.extractor, help=f"frozen features for the linear probe (default {d.extractor})")
    add_config_flag(p, "weights")
    add_config_flag(p, "device")
    add_config_flag(p, "batch_size")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="cnn / densenet epochs (default 15 / 5)")
    p.add_argument("--lr", type=float, default=None, help="cnn / densenet learning rate (default 1e-3 / 1e-4)")
    p.add_argument("--image-size", type=int, default=None, help="cnn / densenet input size (default 64 / 224)")
    add_config_flag(p, "n_bootstrap")
    p.add_argument("--cache-dir", help="feature cache (default $CXRBENCH_CACHE or ~/.cache/cxrbench)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", help="write the result JSON (cxrbench.result/1) here")
    p.add_argument("--figure", metavar="FILE.png", help="write a PNG figure of the per-mode scores here")
    # --report names an HTML report folder (evaluate --report DIR); the PNG here is --figure
    add_moved_flag(p, "--report", "is not an augment flag: the PNG figure is --figure FILE.png (--report names an "
                   "HTML report folder, as in evaluate)")
    p.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args):
    return AugmentConfig(
        task=args.task, n_real=args.n_real, n_test=args.n_test, n_synthetic=args.n_synthetic, seeds=args.seeds,
        seed=args.seed, test_split=args.test_split, train_split=args.train_split, classifier=args.classifier, extractor=args.extractor,
        weights=args.weights, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, n_bootstrap=args.n_bootstrap, epochs=args.epochs,
        lr=args.lr, image_size=args.image_size, progress=not args.quiet,
    )


def build_result(outcome, config, *, seconds: float):
    """A ``cxrbench.result/1`` with the harness's top-level keys; protocol ``augmentation``."""
    # each extractor class judges its recorded weights (published sha256 pins), as in `cxrbench evaluate`
    random_w = [why for k, s in outcome.extractors.items()
                if (why := EXTRACTORS.get(k).weights_problem(str(s.get("weights", ""))))]
    if CLASSIFIERS.get(config.classifier).uses_weights and is_random_weights(config.weights):
        random_w.append(f"{config.classifier}: random initialisation")
    return make_result(
        protocol={"name": PROTOCOL_NAME, "version": PROTOCOL_VERSION},
        samples={**outcome.synthetic.describe(), "n_used": sum(outcome.details["synthetic_usable"].values()),
                 "skipped_files": [], "ignored_files": outcome.synthetic.ignored[:100]},
        reference={**outcome.real.describe(), "n_used": outcome.details["n_test"] + outcome.details["real_pool"]["n"],
                   "skipped_files": []},
        train_reference=None,
        extractors=outcome.extractors,
        metrics={k: v.to_dict() for k, v in sorted(outcome.metrics.items())},
        metric_versions={PROTOCOL_NAME: PROTOCOL_VERSION},
        skipped_metrics={},
        config={**dataclasses.asdict(config), "device_resolved": outcome.device},
        timings={"total_s": round(seconds, 3)},
        cache=outcome.cache,
        device=outcome.device,
        seeds={"seed": config.seed, "training_seeds": outcome.details["training_seeds"],
               "weights_seed": config.weights_seed},
        not_comparable_because=random_w,
        warnings=list(outcome.notes),
        augmentation=outcome.details,
    )


def format_table(result) -> str:
    d = result["augmentation"]
    m = result["metrics"]
    rows = [("mode", "n real", "n syn", "AUROC", "95% CI", "seed std", "accuracy", "95% CI")]
    for mode in ("real", "mixed", "augmented", "synthetic"):
        a, c = m[f"aug_{mode}_auroc"], m[f"aug_{mode}_accuracy"]
        rows.append((mode, str(a["n_train_real"]), str(a["n_train_synthetic"]), f"{a['value']:.3f}", _ci(a),
                     "-" if a["std_over_seeds"] is None else f"{a['std_over_seeds']:.3f}", f"{c['value']:.3f}", _ci(c)))
    for key in ("gain", "mixed_delta"):
        a, c = m[f"aug_{key}_auroc"], m[f"aug_{key}_accuracy"]
        rows.append((key, "", "", f"{a['value']:+.3f}", _ci(a, "+"),
                     "-" if a["std_over_seeds"] is None else f"{a['std_over_seeds']:.3f}", f"{c['value']:+.3f}",
                     _ci(c, "+")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = d["task"]
    head = (f"{t['positive']} vs {t['negative']}: {d['classifier']} classifier, {len(d['training_seeds'])} seeds, "
            f"{d['n_test']} real test images ({result['reference']['path']}), synthetic {result['samples']['path']} "
            f"(labels from {d['synthetic_label_source']}), device {result['device']}")
    tail = []
    if not result["comparable"]:
        tail.append("NOT COMPARABLE: " + "; ".join(result["not_comparable_because"]))
    tail += [f"note: {w}" for w in result["warnings"]]
    return "\n".join([head, *lines, *tail])


def _ci(m, sign="") -> str:
    ci = m.get("ci")
    return "-" if not ci else f"[{ci[0]:{sign}.3f}, {ci[1]:{sign}.3f}]"


def run(args) -> int:
    cfg = config_from_args(args)
    if args.out:
        check_writable(args.out)  # before the work, not after it
    t0 = time.perf_counter()
    outcome = augment(args.real, args.synthetic, config=cfg, real_labels=args.real_labels,
                      synthetic_labels=args.synthetic_labels)
    result = build_result(outcome, cfg, seconds=time.perf_counter() - t0)
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.figure:
        figure(outcome, args.figure)
        print(f"wrote {args.figure}", file=sys.stderr)
    print(result.to_json() if args.json else format_table(result))
    return 0
