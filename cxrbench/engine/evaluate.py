"""``evaluate(samples, reference)``: one pass of feature extraction, then every metric.

Each image set is processed in chunks (canonical order). For every chunk whose features are not all in the
cache, the images are decoded once (DataLoader workers) and fed to every extractor still missing for that
chunk in the same loop; derived extractors (the XRV classifier head) are computed from their base
extractor's features. Finished chunks are cached as they complete, so an interrupted run resumes where it
stopped. Metrics are then pure functions of the cached features.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import (
    DEFAULT_EXTRACTORS,
    DEFAULT_PROTOCOL,
    NESTED_FLAGS,
    PRECISIONS,
    EvalConfig,
    resolve_device,
)
from ..data.imageset import ImageSource, array_source, set_sha256
from ..data.io import array_to_images
from ..data.precomputed import PrecomputedSet
from ..data.sources import open_source
from ..errors import DataError, UsageError
from ..features.base import FeatureKind, is_random_weights
from ..features.cache import FeatureCache
from ..generator import sample_images
from ..metrics import coverage_table
from ..metrics.base import EvalContext, FeatureSet, MetricValue
from ..metrics.bootstrap import one_torch_thread
from ..registry import EXTRACTORS, METRICS, PROTOCOLS
from ..results import Result
from .distributed import DistContext, from_env
from .extraction import (
    build_extractors,
    extract_features,
    extractor_spec,
)
from .metric_runner import run_metric
from .per_condition import per_condition
from .protocol import protocol_samples
from .provenance import make_result
from .reference_stats import check_specs, is_reference_stats, load_reference_stats

PROTOCOL_VERSION = "1"
def _feature_set(name: str, src: ImageSource, feats: dict, keep: np.ndarray) -> FeatureSet:
    sub = src.subset(keep) if len(keep) != len(src) else src

    def load_images(indices):
        return [torch.from_numpy(sub.load(int(i))).unsqueeze(0) for i in indices]

    return FeatureSet(
        name=name, ids=sub.ids, hashes=sub.hashes, features={k: v[keep] for k, v in feats.items()},
        labels=sub.labels, manifest=sub.manifest, patient_ids=sub.patient_ids, load_images=load_images,
    )


def _metric_plan(config: EvalConfig) -> tuple[list, dict[str, str]]:
    names = list(config.metrics) if config.metrics else METRICS.names()
    plan, skipped = [], {}
    for name in names:
        m = METRICS.get(name)()
        missing = [e for e in m.requires_extractors if e not in config.extractors]
        if missing:
            if config.metrics:
                raise UsageError(f"metric {name!r} needs extractor(s) {missing}; add them to --extractors")
            skipped[name] = f"needs extractor(s) {', '.join(missing)} (add to --extractors)"
            continue
        if m.per_extractor and not any(
            EXTRACTORS.get(e).kind == FeatureKind.EMBEDDING for e in config.extractors
        ):
            skipped[name] = "needs an embedding extractor"
            continue
        plan.append(m)
    return plan, skipped


def config_with(config: EvalConfig | None, knobs: dict, where: str = "evaluate") -> EvalConfig:
    """``config`` (default ``EvalConfig()``) with the keyword knobs replacing its fields; a keyword that is not
    a field is a ``UsageError`` listing the fields (a typo must not fall back to a default silently)."""
    fields = [f.name for f in dataclasses.fields(EvalConfig)]
    unknown = sorted(set(knobs) - set(fields))
    if unknown:
        # a nested setting given flat, as its CLI flag is spelled (augment_task): say where it lives
        nested = [f"{k} is {n}={{{k[len(p):]!r}: ...}}" for k in unknown for n, p in NESTED_FLAGS.items()
                  if k.startswith(p)]
        raise UsageError(f"{where}(): unknown keyword(s) {', '.join(unknown)}; the knobs are EvalConfig's fields: "
                         f"{', '.join(fields)}" + (f" ({'; '.join(nested)})" if nested else ""))
    config = config or EvalConfig()
    return config.resolved(**knobs) if knobs else config


def evaluate(samples, reference=None, *, config: EvalConfig | None = None, train_reference=None,
             **knobs) -> Result:
    """Evaluate a samples set against a reference set.

    The knobs are ``EvalConfig``'s fields, given either as keywords (``device="cpu"``, ``batch_size=64``,
    ``extractors=("xrv",)``, ``metrics=("fid",)``, ``n_bootstrap=0``, ...) or as ``config=``; given both,
    each keyword replaces that field of ``config`` (the keyword wins). An unknown keyword is a ``UsageError``.

    ``samples`` / ``reference`` are folders, ``.npy``/``.npz`` arrays, named references (``nih-cxr14``) or
    ``ImageSource`` objects. With no reference (and no protocol), the default protocol ``cxr128`` runs: its
    reference, network and metrics ship with cxrbench. Returns a ``Result`` (``cxrbench.result/1``).
    """
    config = config_with(config, knobs)
    config = _extractors_of_stats(config, reference)
    if reference is None and not config.under_protocol and train_reference is None:
        config = config.resolved(protocol=DEFAULT_PROTOCOL)
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    dist, device = from_env(device)
    try:
        return _evaluate(samples, reference, config, train_reference, device, dist, t0)
    finally:
        dist.close()


@dataclasses.dataclass
class _Sets:
    """The image sets of one evaluation: opened folders/arrays (``sets``), shipped features (``precomputed``)
    or saved reference statistics (``ref_stats``), and what extraction keeps of each."""

    sets: dict = dataclasses.field(default_factory=dict)
    precomputed: dict = dataclasses.field(default_factory=dict)
    ref_stats: dict | None = None
    stats_file: str | None = None
    expected_n: int | None = None  # the protocol's sample count
    n_found: int = 0
    samples_sha256: str | None = None
    keep: dict = dataclasses.field(default_factory=dict)
    skipped_files: dict = dataclasses.field(default_factory=dict)


def _extractors_of_stats(config: EvalConfig, reference) -> EvalConfig:
    """Against a statistics file (``cxrbench stats``) with the default extractors, the file's extractors: FID
    can use no others, and the defaults would need weights (a download) that the file may not have used."""
    if tuple(config.extractors) != DEFAULT_EXTRACTORS or isinstance(reference, (ImageSource, PrecomputedSet)):
        return config
    if reference is None or not is_reference_stats(reference):
        return config
    return config.resolved(extractors=tuple(load_reference_stats(reference)["stats"]))


def _evaluate(samples, reference, config: EvalConfig, train_reference, device: str, dist: DistContext,
              t0: float) -> Result | None:
    config = _checked(config)
    plan, skipped_metrics = _metric_plan(config)
    train_reference = train_reference if train_reference is not None else config.train_reference
    proto = _protocol(config)
    if proto is not None:  # a protocol may fix the extractors, metrics and reference sets
        config, reference, train_reference = proto.prepare(config, reference, train_reference)
        plan, skipped_metrics = _metric_plan(config)
    if reference is None:
        raise UsageError("no reference given: pass --reference (a folder, array, statistics file or dataset name), "
                         f"or evaluate under a protocol that ships one (--protocol {DEFAULT_PROTOCOL})")
    s = _open_sets(samples, reference, train_reference, config, proto, dist)
    times = {"hash_s": time.perf_counter() - t0}

    t_build = time.perf_counter()
    extractors = build_extractors(config.extractors, config, device)
    times["build_extractors_s"] = time.perf_counter() - t_build
    specs = {k: extractor_spec(e, config) for k, e in extractors.items()}
    for role, pre in s.precomputed.items():
        _check_precomputed(role, pre, specs)
    cache = FeatureCache(config.cache_dir, enabled=config.use_cache)
    t1, stage_s = time.perf_counter(), {}
    feats = _extract(s, extractors, config, cache, device, dist, stage_s)
    if feats is None:
        return None  # rank 0 holds the gathered features, computes the metrics and writes the result
    times["extract_s"] = time.perf_counter() - t1

    ctx = _context(s, feats, extractors, specs, reference, config, device)
    t2 = time.perf_counter()
    metrics, metric_versions, metric_times, notes = _run_metrics(plan, ctx, proto, s, skipped_metrics)
    tc = time.perf_counter()
    # conditional samples only: unconditional results keep exactly their keys
    conditions = per_condition(plan, ctx, set(metric_versions))
    sections = {} if conditions is None else {"per_condition": conditions}
    if conditions is not None:
        metric_times["per_condition"] = round(time.perf_counter() - tc, 3)
    if proto is not None:
        sections.update(proto.sections())
    duplicates = {r: _duplicates(s.sets[r]) for r in s.sets}
    notes += _set_notes(s, duplicates)
    times["metrics_s"] = time.perf_counter() - t2

    if s.expected_n and s.n_found > s.expected_n:
        notes.append(f"protocol {proto.name}: the first {s.expected_n} of {s.n_found} samples in canonical (sha256) "
                     "order were evaluated")
    return make_result(
        protocol={"name": config.protocol, "version": proto.version if proto is not None else PROTOCOL_VERSION},
        **_describe_sets(s, duplicates),
        extractors=specs,
        metrics=dict(sorted(metrics.items())),
        metric_versions=metric_versions,
        skipped_metrics=skipped_metrics,
        config={**config.record(), "device_resolved": device, "world_size": dist.world_size,
                "distributed_backend": dist.backend},
        timings={"world_size": dist.world_size, **{k: round(v, 3) for k, v in times.items()},
                 "total_s": round(time.perf_counter() - t0, 3), "per_metric_s": metric_times,
                 # parts of extract_s on rank 0 (summed over the sets)
                 **{k: {n: round(x, 3) for n, x in v.items()} if isinstance(v, dict) else round(v, 3)
                    for k, v in stage_s.items()}},
        cache={"dir": str(cache.root) if cache.enabled else None, "hits": cache.hits, "misses": cache.misses,
               "corrupt_entries_recomputed": len(cache.corrupt),
               **({"write_error": cache.write_error} if cache.write_error else {})},
        device=device + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        seeds={"seed": config.seed, "weights_seed": config.weights_seed},
        not_comparable_because=_not_comparable(extractors, s, proto, config),
        warnings=notes,
        **sections,
    )


def _checked(config: EvalConfig) -> EvalConfig:
    """The config with tuples for lists; bad values fail here, before any work."""
    config = config.resolved(extractors=tuple(config.extractors), metrics=tuple(config.metrics) if config.metrics else None)
    if config.precision not in PRECISIONS:
        raise UsageError(f"--precision {config.precision}: expected one of {', '.join(PRECISIONS)}")
    if config.n_bootstrap < 0 or config.batch_size < 1 or config.chunk_size < 1:
        raise UsageError("--batch-size and chunk size must be >= 1 and --n-bootstrap >= 0")
    for e in config.extractors:
        if e not in EXTRACTORS:
            EXTRACTORS.get(e)  # raises: unknown names fail before any work, listing the known ones
    return config


def _open_sets(samples, reference, train_reference, config: EvalConfig, proto, dist: DistContext) -> _Sets:
    """Open (and hash) every set; the samples cut to the protocol's N (the first in sha256 order)."""
    s = _Sets(expected_n=proto.sample_count if proto is not None else None)
    opened = {"index": config.use_cache, "cache_dir": config.cache_dir, "dist": dist, "seed": config.seed}
    samples = protocol_samples(samples) or samples  # "cxr128:heldout": a protocol's real-image row
    if isinstance(samples, PrecomputedSet):
        s.precomputed["samples"] = samples
        s.samples_sha256 = set_sha256(samples.hashes)  # of every row, as a folder's is of every file
    else:
        s.sets["samples"] = open_source(samples, split=config.samples_split, role="samples", **opened)
    s.n_found = len(s.precomputed["samples"] if "samples" in s.precomputed else s.sets["samples"])
    if s.expected_n and s.n_found > s.expected_n:
        where = s.precomputed if "samples" in s.precomputed else s.sets
        where["samples"] = where["samples"].subset(np.arange(s.expected_n))
    if isinstance(train_reference, PrecomputedSet):
        s.precomputed["train"] = train_reference
        train_reference = None
    if isinstance(reference, PrecomputedSet):
        s.precomputed["reference"] = reference  # shipped features: nothing to open
    elif not isinstance(reference, ImageSource) and is_reference_stats(reference):
        s.ref_stats = load_reference_stats(reference)  # statistics from `cxrbench stats`: no reference images
        s.stats_file = str(reference)
        if config.under_protocol:
            raise UsageError(f"--protocol {config.protocol} needs reference images, not statistics ({reference})")
    else:
        s.sets["reference"] = open_source(reference, split=config.reference_split, role="reference", **opened)
    if train_reference is not None:
        s.sets["train"] = open_source(train_reference, role="train-reference", **opened)
    return s


def _extract(s: _Sets, extractors, config: EvalConfig, cache, device: str, dist: DistContext,
             stage_s: dict) -> dict | None:
    """Features of every opened set (None on ranks other than 0); bad images refused or skipped."""
    feats, extracted = {}, {}
    for role, src in s.sets.items():
        extracted[role] = extract_features(src, extractors, config, cache, device, desc=f"{role} features", dist=dist,
                                           times=stage_s)
        if dist.active:
            continue  # every rank runs every set's collectives before rank 0 may stop on bad images
        _check_set(role, src, *extracted[role], config, feats, s.keep, s.skipped_files)
    if not dist.is_main:
        return None
    if dist.active:
        for role, src in s.sets.items():
            _check_set(role, src, *extracted[role], config, feats, s.keep, s.skipped_files)
    return feats


def _context(s: _Sets, feats: dict, extractors, specs: dict, reference, config: EvalConfig, device: str) -> EvalContext:
    fsets = {r: _feature_set(r, s.sets[r], feats[r], s.keep[r]) for r in s.sets}
    for role, pre in s.precomputed.items():
        fsets[role] = _precomputed_feature_set(role, pre, extractors)
    if s.ref_stats is not None:
        check_specs(reference, s.ref_stats, specs)
        fsets["reference"] = FeatureSet(name="reference", ids=[], hashes=[], features={}, stats=s.ref_stats["stats"])
    for k, e in extractors.items():
        if e.feature_names:
            specs[k]["feature_names"] = list(e.feature_names)
    return EvalContext(gen=fsets["samples"], ref=fsets["reference"], train=fsets.get("train"), extractors=specs,
                       config=config, device=device)


def _run_metrics(plan, ctx: EvalContext, proto, s: _Sets, skipped_metrics: dict):
    """(metrics, versions, seconds per metric, warnings): every planned metric that can run, then the
    protocol's own; a metric's skip reason lands in ``skipped_metrics``."""
    metrics: dict[str, dict] = {}
    metric_versions, metric_times = {}, {}
    # the bootstraps take a while on a busy CPU: say which metric runs rather than sit silent
    bar = tqdm(plan, desc="metrics", unit="metric", disable=not ctx.config.progress, file=sys.stderr, leave=False)
    with warnings.catch_warnings(record=True) as caught, one_torch_thread(ctx.device):
        warnings.simplefilter("always")
        for m in bar:
            bar.set_postfix_str(m.name)
            reason = m.skip_reason(ctx)  # the registry admits only Metric subclasses
            if s.ref_stats is not None and not m.accepts_reference_stats:
                reason = "the reference is saved statistics (mean/covariance); this metric needs its images"
            if reason:
                skipped_metrics[m.name] = reason
                continue
            tm = time.perf_counter()
            values: dict[str, MetricValue] = run_metric(m, ctx)
            metric_times[m.name] = round(time.perf_counter() - tm, 3)
            metric_versions[m.name] = m.version
            for key, v in values.items():
                if proto is not None and v.ci is not None:
                    v.ci_coverage = coverage_table.flag(proto.name, key, v.n_gen, v.n_ref)
                metrics[key] = v.to_dict()
        if proto is not None and proto.adds_metrics:
            _run_protocol(proto, ctx, s.sets, s.keep, metrics, metric_versions)
    notes = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    return metrics, metric_versions, metric_times, notes


def _set_notes(s: _Sets, duplicates: dict) -> list[str]:
    notes = []
    for role, src in s.sets.items():
        notes += [f"{role}: {x}" for x in src.notes]
        skipped = s.skipped_files.get(role) or []
        if skipped:  # --skip-bad: said where the user looks, not only in the result file
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            notes.append(f"{role}: {len(skipped)} unreadable file(s) skipped (--skip-bad): "
                         f"{', '.join(skipped[:5])}{more}")
        if duplicates[role]:
            extra = sum(len(g) - 1 for g in duplicates[role])
            notes.append(f"{role}: {extra} image(s) are byte-identical copies of others (e.g. "
                         f"{' = '.join(duplicates[role][0][:3])}); they count as separate images in every metric")
    return notes


def _not_comparable(extractors, s: _Sets, proto, config: EvalConfig) -> list[str]:
    # each extractor judges its own weights (published sha256 pins on its class): random, unknown or
    # self-made weights all make the numbers incomparable with published ones
    why = [w for e in extractors.values() if (w := e.unpublished_weights())]
    if s.expected_n and s.n_found < s.expected_n:
        why.append(f"protocol {proto.name} expects {s.expected_n} samples; {s.n_found} given")
    if config.precision != "fp32":
        why.append(f"precision {config.precision}: published numbers are fp32")
    if (changed := config.metric_settings.overrides()) and proto is not None:
        why.append(f"metric settings {changed} differ from protocol {config.protocol}'s")
    return why


def _describe_sets(s: _Sets, duplicates: dict) -> dict:
    """The ``samples``, ``reference`` and ``train_reference`` blocks of the result."""
    pre, sets = s.precomputed, s.sets
    if "samples" in pre:
        samples = {**pre["samples"].describe(), "n_used": len(pre["samples"]), "sha256": s.samples_sha256}
    else:
        samples = {**sets["samples"].describe(), "n_used": len(s.keep["samples"]),
                   "skipped_files": s.skipped_files["samples"], "ignored_files": sets["samples"].ignored[:100],
                   "duplicates": duplicates["samples"]}
    if "reference" in pre:
        reference = {**pre["reference"].describe(), "n_used": len(pre["reference"])}
    elif s.ref_stats is None:
        reference = {**sets["reference"].describe(), "n_used": len(s.keep["reference"]),
                     "skipped_files": s.skipped_files["reference"], "duplicates": duplicates["reference"]}
    else:
        reference = {**s.ref_stats["meta"]["reference"], "kind": "statistics", "statistics_file": s.stats_file}
    train = (pre["train"].describe() if "train" in pre else
             None if "train" not in sets else {**sets["train"].describe(), "skipped_files": s.skipped_files["train"]})
    return {"samples": samples, "reference": reference, "train_reference": train}


def _check_set(role, src, f, bad, config, feats, keep, skipped_files) -> None:
    """Refuse a set with bad images (unless --skip-bad); record its features and which rows are kept."""
    messages = [msg for _, msg in src.unreadable] + [msg for _, msg in bad]
    if messages and not config.skip_bad:
        bad = messages  # for the message below: unreadable files first, then undecodable ones
        shown = "; ".join(bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(
            f"{len(bad)} unreadable image(s) in {role} {src.name}: {shown}{more}. "
            "Fix or remove them, or pass --skip-bad to evaluate without them (they are listed in the result)"
        )
    bad_idx = {i for i, _ in bad}
    keep[role] = np.array([i for i in range(len(src)) if i not in bad_idx], dtype=np.int64)
    skipped_files[role] = [rel for rel, _ in src.unreadable] + [src.ids[i] for i, _ in bad]
    feats[role] = f
    if len(keep[role]) < 2:
        raise DataError(f"{role} {src.name}: {len(keep[role])} usable image(s); metrics need at least 2")


def _protocol(config: EvalConfig):
    """The registered protocol object of ``config.protocol`` (None: the user's own reference)."""
    return PROTOCOLS.get(config.protocol)() if config.under_protocol else None


def _check_precomputed(role: str, pre: PrecomputedSet, specs: dict) -> None:
    """Shipped features are used only by the extractor (weights, version, preprocessing) that made them."""
    fields = ("name", "version", "weights", "whitening", "num_features", "input_size", "resize_filter")
    for k, spec in pre.specs.items():
        if k not in specs:
            raise UsageError(f"{role} {pre.name}: its features are {k!r} features; add {k} to --extractors")
        run = specs[k]
        if is_random_weights(run["weights"]):
            continue  # smoke runs (tests) with random weights: not comparable, marked so in the result
        diff = [f for f in fields if run.get(f) != spec.get(f)]
        if diff:
            raise UsageError(f"{role} {pre.name}: its {k} features were made with a different {diff[0]} "
                             f"({spec.get(diff[0])!r} vs {run.get(diff[0])!r}); use the matching cxrbench version")


def _precomputed_feature_set(role: str, pre: PrecomputedSet, extractors: dict) -> FeatureSet:
    """A FeatureSet from shipped features; derived extractors (label heads) are computed from their base."""
    feats = dict(pre.features)
    for k, e in extractors.items():
        base = getattr(e, "derived_from", None)
        if k not in feats and base in feats:
            with torch.no_grad():
                feats[k] = e.from_features(torch.from_numpy(feats[base])).cpu().numpy().astype(np.float32)
    return FeatureSet(name=role, ids=pre.ids, hashes=pre.hashes, features=feats, labels=pre.labels,
                      patient_ids=pre.patient_ids, load_images=None)


def _run_protocol(proto, ctx, sets, keep, metrics, metric_versions) -> None:
    """A registered protocol's own step on the same sets and features, after the metrics; its metrics join the
    result. ``proto.after_metrics(ctx, sources)`` gets the image sets without the skipped rows (in the rows'
    order of ``ctx``'s features)."""
    values = proto.after_metrics(ctx, {role: src.subset(keep[role]) for role, src in sets.items()})
    metric_versions[f"protocol:{proto.name}"] = proto.version
    metrics.update({k: v.to_dict() for k, v in values.items()})


def _duplicates(src: ImageSource) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for i, h in enumerate(src.hashes):
        groups.setdefault(h, []).append(src.ids[i])
    return [v for v in groups.values() if len(v) > 1][:50]


def images_source(images, name: str = "generator") -> ImageSource:
    """An in-memory image set from a tensor/array of images (any layout ``array_to_images`` accepts)."""
    arr = array_to_images(images.detach().cpu().numpy() if torch.is_tensor(images) else images, name)
    return array_source(arr, name=name, root=None)


@torch.no_grad()
def evaluate_generator(generator, n: int, reference, *, config: EvalConfig | None = None, labels=None,
                       seed: int = 0, batch_size: int = 64, **knobs) -> Result:
    """Sample ``n`` images from ``generator`` (anything with ``sample(n, labels=, seed=)``) and evaluate them.

    ``seed`` and ``batch_size`` are the sampling's; the other keywords are ``EvalConfig`` fields, as in
    ``evaluate`` (merged into ``config``, the keyword wins).

    For use inside a training loop: nothing is written to disk except the feature cache. The images are
    those ``cxrbench sample --seed SEED --batch-size BATCH_SIZE`` writes (``generator.sample_images``).
    """
    config = config_with(config, knobs, "evaluate_generator")  # a typo fails before the sampling
    imgs = sample_images(generator, n, labels=labels, seed=seed, batch_size=batch_size)
    return evaluate(images_source(imgs, name=f"{type(generator).__name__} samples"), reference, config=config)
