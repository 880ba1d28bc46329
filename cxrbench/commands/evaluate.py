"""``cxrbench evaluate``: every metric of a samples set against a reference, one pass over the images."""

from __future__ import annotations

import dataclasses
import sys

from ..config import DEFAULT_PROTOCOL, OWN_REFERENCE, EvalConfig, MetricSettings
from ..errors import UsageError
from ..fileio import check_writable
from ..publish.report import condition_caption, condition_rows, write_report
from ..results import ci_text, floor_text
from .options import add_config_flags, config_values

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


def add_resize_arguments(p) -> None:
    """The peers' resize conventions (named in each extractor's spec, so they key the cache)."""
    add_config_flags(p, only=("xrv_resize", "inception_resize", "raddino_resize"))


def add_arguments(p) -> None:
    p.add_argument("--samples", required=True, help="folder of images, or a .npy/.npz array of images")
    p.add_argument("--reference", default=None, help="folder, .npz array, statistics .npz, or a name: nih-cxr14, "
                   "chexpert (default: none, and the cxr128 protocol runs with its shipped reference)")
    add_config_flags(p)  # every EvalConfig field with a help text in its metadata
    p.add_argument("--metric-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="override a metric setting, e.g. prdc_k=3 or kid_subset_size=500 (repeatable; "
                        "cxrbench.config.MetricSettings lists them)")
    p.add_argument("--out", help="write the result JSON here (atomically)")
    p.add_argument("--report", metavar="DIR", help="also write report.html / report.md with figures here")
    p.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")


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
    # --protocol is a field flag too: the resolved protocol (its default depends on --reference) replaces it
    return EvalConfig(**{**config_values(args), "protocol": resolve_protocol(args)},
                      metric_settings=parse_metric_settings(getattr(args, "metric_setting", [])))


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
        lines.append("* bias-corrected (value minus its bias estimate: FID's from half subsets, the others' from the "
                     "bootstrap): the estimate of the population value the interval is for; the value @N is biased upward")
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
    # why: the engine (scipy.stats, sklearn: about 2 s of CPU) loads when the command runs, not for --help
    from ..engine.evaluate import evaluate

    config = config_from_args(args)
    for path in ([args.out] if args.out else []) + ([f"{args.report}/report.html"] if args.report else []):
        check_writable(path)  # before the work, not after it
    if args.protocol is None and args.reference is None and args.progress:
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
