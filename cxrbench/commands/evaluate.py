"""``cxrbench evaluate``: every metric of a samples set against a reference, one pass over the images."""

from __future__ import annotations

import sys

from ..config import DEFAULT_PROTOCOL, OWN_REFERENCE, EvalConfig
from ..engine.evaluate import evaluate
from ..errors import UsageError
from ..fileio import check_writable
from ..metrics.common import MetricSettings
from ..publish.report import condition_caption, condition_rows, write_report
from ..results import ci_text, floor_text

HELP = "evaluate generated images against a reference set"
EPILOG = """examples:
  # the default protocol cxr128: comparable numbers offline (network, reference and metrics ship with cxrbench)
  cxrbench evaluate --samples samples/
  # two halves of one real folder (a noise-floor check), offline with seeded random weights
  cxrbench evaluate --samples ../shared/data/nih1000_64px --samples-split half0 \\
      --reference ../shared/data/nih1000_64px --reference-split half1 --weights random
  # generated PNGs against NIH ChestX-ray14 (images under $CXRBENCH_DATA/nih-cxr14), JSON result + table
  cxrbench evaluate --samples samples/ --reference nih-cxr14 --reference-split test --out result.json
  # only FID with the XRV extractor, on GPU
  cxrbench evaluate --samples samples.npz --reference real/ --extractors xrv --metrics fid --device cuda
  # CheXGenBench's RadDino FID, KID and PRDC (torchmetrics, k = 5) beside cxrbench's, against MIMIC-CXR test images
  cxrbench evaluate --samples synthetic/ --reference mimic-test/ --protocol chexgenbench --weights rad-dino/
  # shard extraction over 4 GPUs (rank 0 gathers the features, computes the metrics and prints)
  torchrun --nproc_per_node 4 -m cxrbench evaluate --samples samples/ --reference nih-cxr14 --out result.json
"""


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def add_resize_arguments(p) -> None:
    """The peers' resize conventions (named in each extractor's spec, so they key the cache)."""
    d = EvalConfig()
    p.add_argument("--xrv-resize", choices=["xrv", "torch-antialias"], default=d.xrv_resize,
                   help="xrv extractors' resize: torchxrayvision's XRayResizer (default) or torch bilinear-antialias")
    p.add_argument("--inception-resize", choices=["tf1", "clean"], default=d.inception_resize,
                   help="inception's resize: tf1 (torch-fidelity, default) or clean (clean-fid's PIL bicubic)")
    p.add_argument("--raddino-resize", choices=["processor", "chexgenbench"], default=d.raddino_resize,
                   help="raddino's preprocessing: its image processor (default) or chexgenbench (CheXGenBench's "
                        "8-bit PIL squash to 299 px first; set by --protocol chexgenbench)")


def add_arguments(p) -> None:
    d = EvalConfig()
    p.add_argument("--samples", required=True, help="folder of images, or a .npy/.npz array of images")
    p.add_argument("--reference", default=None, help="folder, .npz array, statistics .npz, or a name: nih-cxr14, "
                   "chexpert (default: none, and the cxr128 protocol runs with its shipped reference)")
    p.add_argument("--samples-split", help="half0 | half1 | a value of labels.csv's split column")
    p.add_argument("--reference-split", help="half0 | half1 | a labels.csv split | nih-cxr14: test, train_val | "
                   "chexpert: train, valid | hash-train, hash-valid, hash-test")
    p.add_argument("--train-reference", help="the generator's training images (for memorization and re-identification)")
    p.add_argument("--extractors", type=_csv, default=None, help=f"default {','.join(d.extractors)} (a protocol "
                   "fixes its own)")
    p.add_argument("--metrics", type=_csv, default=None, help="default: every metric whose inputs exist")
    p.add_argument("--weights", default=d.weights, help="auto (published weights) | random (offline smoke "
                   "test, not comparable) | a folder holding the weights files")
    p.add_argument("--moco-checkpoint", help="folder saved by `cxrbench train moco` (extractor moco)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per forward pass")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default=d.precision,
                   help="extractor forward precision; anything but fp32 marks the result not comparable")
    p.add_argument("--plain-kernels", dest="fast_kernels", action="store_false",
                   help="run the networks as published (no BatchNorm folding, no channels_last): ~1.5x slower on "
                        "CPU, features differ from the default by ~1e-6 relative")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every network (features within ~1e-6 relative; recorded in the spec). "
                        "For GPUs: on CPU it compiles for minutes and was not faster")
    add_resize_arguments(p)
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help="images per cached feature chunk: an interrupted run redoes at most one chunk per set")
    p.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default min(4, CPUs))")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for bootstrap, splits and subsets")
    p.add_argument("--n-bootstrap", type=int, default=d.n_bootstrap, help="bootstrap replicates for CIs")
    p.add_argument("--cache-dir", help="feature cache (default $CXRBENCH_CACHE or ~/.cache/cxrbench)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--skip-bad", action="store_true", help="evaluate without unreadable images (listed in result)")
    p.add_argument("--protocol", default=None, help="cxr128 (embedded, comparable offline; the default without "
                   "--reference) | cxr64 (retired: its network ranks blobs above chests) | augmentation (downstream classifier gain) | chexgenbench (CheXGenBench's "
                   "RadDino FID/KID/PRDC, torchmetrics, against your --reference) | default (your own --reference)")
    p.add_argument("--augment-task", help='protocol augmentation: "A vs B", e.g. "Pneumonia vs No Finding"')
    p.add_argument("--augment-n-real", type=int, default=d.augment_n_real,
                   help="protocol augmentation: N real training images")
    p.add_argument("--augment-n-test", type=int, default=d.augment_n_test,
                   help="protocol augmentation: held-out real test images")
    p.add_argument("--augment-seeds", type=int, default=d.augment_seeds,
                   help="protocol augmentation: training seeds (use >= 3)")
    p.add_argument("--metric-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="override a metric setting, e.g. prdc_k=3 or kid_subset_size=500 (repeatable; "
                        "cxrbench.metrics.common.MetricSettings lists them)")
    p.add_argument("--out", help="write the result JSON here (atomically)")
    p.add_argument("--report", metavar="DIR", help="also write report.html / report.md with figures here")
    p.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def resolve_protocol(args) -> str:
    """``--protocol``, or the default: cxr128 without ``--reference``, your own reference otherwise."""
    protocol = args.protocol or (OWN_REFERENCE if args.reference is not None else DEFAULT_PROTOCOL)
    if protocol in ("cxr128", "cxr64") and args.extractors is not None:
        raise UsageError(f"--protocol {protocol} fixes its extractors ({protocol}, {protocol}-classifier); drop --extractors, "
                         "or pass --reference to evaluate with extractors of your choice")
    if protocol == "chexgenbench" and args.extractors is not None:
        raise UsageError("--protocol chexgenbench fixes its extractor (raddino, with CheXGenBench's preprocessing); "
                         "drop --extractors")
    return protocol


def parse_metric_settings(items: list[str]) -> dict:
    """``["prdc_k=3", "alpha=0.1"]`` -> typed overrides (checked against MetricSettings)."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(MetricSettings)}
    raw = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--metric-setting {item!r}: write KEY=VALUE, e.g. prdc_k=3")
        raw[key.strip()] = value.strip()
    typed = {}
    for key, value in raw.items():  # from text: numbers parsed by the field's type
        default = defaults.get(key)
        try:
            typed[key] = int(value) if type(default) is int else float(value) if type(default) is float else value
        except ValueError:
            typed[key] = value  # check_overrides names the expected type
    return MetricSettings.check_overrides(typed)


def config_from_args(args):
    return EvalConfig(
        **({"extractors": args.extractors} if args.extractors is not None else {}), metrics=args.metrics, weights=args.weights, device=args.device,
        batch_size=args.batch_size, chunk_size=args.chunk_size, num_workers=args.num_workers, seed=args.seed,
        n_bootstrap=args.n_bootstrap,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, samples_split=args.samples_split,
        reference_split=args.reference_split, train_reference=args.train_reference,
        moco_checkpoint=args.moco_checkpoint, skip_bad=args.skip_bad, progress=not args.quiet,
        protocol=resolve_protocol(args), augment_task=args.augment_task, augment_n_real=args.augment_n_real,
        augment_n_test=args.augment_n_test, augment_seeds=args.augment_seeds, precision=args.precision,
        fast_kernels=args.fast_kernels, compile=args.compile, xrv_resize=args.xrv_resize, inception_resize=args.inception_resize,
        raddino_resize=args.raddino_resize, metric_settings=parse_metric_settings(getattr(args, "metric_setting", [])),
    )


def format_table(result) -> str:
    # a biased distance's interval is for the population value, not for the value at these N: the table shows
    # the estimate the interval belongs to beside it, so that no value sits next to an interval it is not in
    rows = [("metric", "value @N", "estimate [95% CI]", "real-vs-real @N (samples @N)", "better", "n gen/ref")]
    flagged, corrected = [], False
    for key, m in result["metrics"].items():
        v, bc = m["value"], m.get("value_bias_corrected")
        if m.get("reason"):
            flagged.append(f"{key}: {m['reason']}")
        ci = ci_text(m)
        if ci.startswith("["):
            est = v if bc is None else bc
            corrected |= bc is not None
            ci = f"{'-' if est is None else f'{est:.4g}'}{'*' if bc is not None else ''} {ci}"
        rows.append((
            key, "-" if v is None else f"{v:.4g}", ci, floor_text(m),
            "higher" if m["higher_is_better"] else "lower",
            f"{m['n_gen']}/{m['n_ref']}",
        ))
    lines = _aligned(rows)
    if corrected:
        lines.append("* bias-corrected (value minus the bootstrap's bias estimate): the estimate of the population "
                     "value the interval is for; the value @N is biased upward")
    lines += _condition_table(result)
    s = result["samples"]
    proto = result.get("protocol") or {}
    head = f"samples {s['path']} ({s['n_used']} images) vs reference {result['reference']['path']} " \
           f"({result['reference']['n_used']} images), device {result['device']}"
    if proto.get("name") not in (None, OWN_REFERENCE):
        head = f"protocol {proto['name']} v{proto.get('version')}: {head}"
    tail = []
    if not result["comparable"]:
        tail.append("NOT COMPARABLE: " + "; ".join(result.get("not_comparable_because", [])))
    for name, why in result.get("skipped_metrics", {}).items():
        tail.append(f"skipped {name}: {why}")
    tail += [f"not valid {f}" for f in flagged]
    for w in result.get("warnings", []):
        tail.append(f"warning: {w}")
    return "\n".join([head, *lines, *tail])


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Fixed-width lines: the header, a rule, then the rows."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _condition_table(result) -> list[str]:
    """The per-condition table (conditional samples only; nothing otherwise)."""
    rows, skipped = condition_rows(result)
    if not rows and not skipped:
        return []
    out = ["", f"per condition: {condition_caption(result)}"]
    if rows:
        out += _aligned([("condition", "n gen/ref", "metric", "value", "95% CI", "real-vs-real @N (samples @N)",
                          "better")] + [(r["condition"], r["counts"], r["key"], r["value"], r["ci"], r["floor"],
                                         r["better"]) for r in rows])
    out += [f"condition {line}" for line in skipped]
    return out + [""]


def run(args) -> int:
    config = config_from_args(args)
    for path in ([args.out] if args.out else []) + ([f"{args.report}/report.html"] if args.report else []):
        check_writable(path)  # before the work, not after it
    if args.protocol is None and args.reference is None and not args.quiet:
        print(f"no --reference: evaluating under the default protocol {config.protocol} (shipped network, reference "
              "and metrics; comparable offline)", file=sys.stderr)
    result = evaluate(args.samples, args.reference, config=config)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.report:
        paths = write_report(result, args.report)
        print(f"wrote {paths['html']} and {paths['md']}", file=sys.stderr)
    print(result.to_json() if args.json else format_table(result))
    return 0
