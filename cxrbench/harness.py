"""``evaluate(samples, reference)``: one pass of feature extraction, then every metric.

Each image set is processed in chunks (canonical order). For every chunk whose features are not all in the
cache, the images are decoded once (DataLoader workers) and fed to every extractor still missing for that
chunk in the same loop; derived extractors (the XRV classifier head) are computed from their base
extractor's features. Finished chunks are cached as they complete, so an interrupted run resumes where it
stopped. Metrics are then pure functions of the cached features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .data.sources import ImageSource, open_source
from .distributed import DistContext, from_env
from .errors import DataError, UsageError
from .features.cache import FeatureCache, chunk_key
from .metrics.base import EvalContext, FeatureSet, MetricValue
from .protocols.cxr64 import PrecomputedSet
from .registry import EXTRACTORS, METRICS
from .results import SCHEMA, Result

PROTOCOL_VERSION = "1"
DEFAULT_EXTRACTORS = ("inception", "xrv", "xrv-classifier", "pixels")


@dataclass
class EvalConfig:
    """Every knob of an evaluation; the CLI flags mirror these fields and the resolved copy goes in results."""

    extractors: tuple[str, ...] = DEFAULT_EXTRACTORS
    metrics: tuple[str, ...] | None = None  # None: every registered metric whose inputs are available
    weights: str = "auto"  # auto | random | a folder of weights files
    weights_seed: int = 0
    device: str = "auto"
    batch_size: int = 32
    num_workers: int | None = None  # None: min(4, CPU count); 0 decodes in the main process
    chunk_size: int = 512
    seed: int = 0
    n_bootstrap: int = 200  # replicates for 95% CIs; coverage measured at 200 (tests/benchmarks/coverage.py)
    cache_dir: str | None = None
    use_cache: bool = True
    samples_split: str | None = None
    reference_split: str | None = None
    train_reference: str | None = None
    moco_checkpoint: str | None = None
    skip_bad: bool = False
    protocol: str = "default"  # "default", or a registered protocol run after the metrics ("augmentation")
    augment_task: str | None = None  # protocol augmentation: "A vs B"; labels come from the reference
    augment_n_real: int = 1000
    augment_n_test: int = 300
    augment_seeds: int = 3
    progress: bool = True
    precision: str = "fp32"  # fp32 | tf32 | bf16 (extractor forward only; published numbers are fp32)
    fast_kernels: bool = True  # BatchNorm folded into convs + channels_last (features move ~1e-6 relative)
    xrv_resize: str = "xrv"  # xrv (torchxrayvision's XRayResizer) | torch-antialias
    inception_resize: str = "tf1"  # tf1 (torch-fidelity / TF1 FID) | clean (clean-fid's PIL bicubic)

    def resolved(self, **over) -> "EvalConfig":
        return dataclasses.replace(self, **over)


def resolve_device(device: str) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device auto or cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)


class _Decode(torch.utils.data.Dataset):
    """Decodes one image; a failure is returned (with its message), not raised, so all bad files are listed."""

    def __init__(self, src: ImageSource):
        self.src = src

    def __len__(self):
        return len(self.src)

    def __getitem__(self, i):
        try:
            return i, torch.from_numpy(self.src.load(i)), None
        except DataError as e:
            return i, None, str(e)


def _collate(batch):
    return batch


PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision_scope(precision: str, device: str):
    """TF32 switches for the run, restored afterwards (fp32 turns off cuDNN's default TF32 convolutions)."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if not device.startswith("cuda"):
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def run_extractor(e, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``e.extract(x)``, with channels_last input for a channels_last network and bf16 autocast for the network
    forward when asked.

    Preprocessing stays float32 (Inception quantises to 8 bit; XRV rescales to [-1024, 1024]); features come
    back float32. Extractors without parameters (pixel statistics) always run in float32.
    """
    p = next(iter(e.parameters()), None)
    if p is None:
        return e.extract(x)
    z = e.preprocess(x.to(p.device, torch.float32))
    if "channels_last" in (getattr(e, "inference_kernels", None) or "") and z.ndim == 4:
        z = z.contiguous(memory_format=torch.channels_last)
    with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        f = e.forward(z)
    return f.float()


def extractor_spec(e, config: EvalConfig) -> dict:
    """``e.spec()``, plus the precision when it is not fp32 (so reduced-precision features never share a cache
    entry with fp32 ones, and fp32 keys are unchanged)."""
    spec = e.spec()
    if config.precision != "fp32" and next(iter(e.parameters()), None) is not None:
        spec["precision"] = config.precision
    return spec


def build_extractors(names, config: EvalConfig, device: str) -> dict[str, torch.nn.Module]:
    out = {}
    for name in names:
        cls = EXTRACTORS.get(name)
        kwargs = {"seed": config.weights_seed, "device": device}
        kwargs.update({k: getattr(config, f) for k, f in getattr(cls, "config_kwargs", {}).items()})
        if name == "moco":
            kwargs["weights"] = config.moco_checkpoint or ("random" if config.weights == "random" else None)
            if kwargs["weights"] is None:
                raise UsageError("extractor 'moco' needs --moco-checkpoint DIR (a folder saved by `cxrbench train moco`)")
        else:
            kwargs["weights"] = config.weights
        out[name] = cls(**kwargs)
        if config.fast_kernels:
            out[name].prepare_inference()  # BatchNorm folded, channels_last (oneDNN / cuDNN NHWC kernels)
    for e in out.values():  # a derived extractor's features inherit its base network's kernels (and cache key)
        base = out.get(getattr(e, "derived_from", None) or "")
        if base is not None:
            e.inference_kernels = base.inference_kernels
    return out


def extract_features(src: ImageSource, extractors: dict, config: EvalConfig, cache: FeatureCache, device: str,
                     desc: str, dist: DistContext | None = None) -> tuple[dict[str, np.ndarray] | None, list]:
    """Features of every image of ``src`` for every extractor; returns (features, bad images).

    Under ``dist`` (several ranks) each rank looks up and extracts only its own chunks; rank 0 gathers them
    and returns everything, the other ranks return ``(None, [])``.
    """
    dist = dist or DistContext()
    n = len(src)
    base = {k: e for k, e in extractors.items() if getattr(e, "derived_from", None) is None}
    derived = {k: e for k, e in extractors.items() if getattr(e, "derived_from", None) is not None}
    for k, e in derived.items():
        if e.derived_from not in base:
            raise UsageError(f"extractor {k!r} is computed from {e.derived_from!r}; add it to --extractors")
    specs = {k: extractor_spec(e, config) for k, e in extractors.items()}
    feats = {k: np.full((n, e.num_features), np.nan, dtype=np.float32) for k, e in extractors.items()}
    chunks = [(s, min(s + config.chunk_size, n)) for s in range(0, n, config.chunk_size)]
    todo: dict[int, list[str]] = {}  # chunk index -> base extractors still to run
    mine = [ci for ci in range(len(chunks)) if dist.owns(ci)]
    hits0, misses0 = cache.hits, cache.misses
    for ci in mine:
        s, t = chunks[ci]
        hashes = src.hashes[s:t]
        for k in list(base) + list(derived):
            got = cache.get(chunk_key(hashes, specs[k]))
            if got is not None and got.shape == (t - s, extractors[k].num_features):
                feats[k][s:t] = got
            else:
                need = k if k in base else extractors[k].derived_from
                todo.setdefault(ci, [])
                if need not in todo[ci]:
                    todo[ci].append(need)

    bad: list[tuple[int, str]] = []
    if todo:
        batches = []
        for ci in sorted(todo):
            s, t = chunks[ci]
            batches += [list(range(b, min(b + config.batch_size, t))) for b in range(s, t, config.batch_size)]
        workers = config.num_workers if config.num_workers is not None else min(4, os.cpu_count() or 1)
        if src._array is not None or sum(len(b) for b in batches) < 64:
            workers = 0  # arrays are in memory; tiny sets do not repay worker start-up
        loader = torch.utils.data.DataLoader(
            _Decode(src), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
            pin_memory=device.startswith("cuda"), persistent_workers=False,
        )
        bar = _progress(sum(len(b) for b in batches), desc, config.progress and dist.is_main)
        chunk_of = lambda i: i // config.chunk_size  # noqa: E731
        for batch in loader:
            ci = chunk_of(batch[0][0])
            good = [(i, img) for i, img, err in batch if err is None]
            bad += [(i, err) for i, img, err in batch if err is not None]
            # group by shape: mixed sizes are resized by each extractor's own preprocess
            groups: dict[tuple, list] = {}
            for i, img in good:
                groups.setdefault(tuple(img.shape), []).append((i, img))
            for items in groups.values():
                idx = [i for i, _ in items]
                x = torch.stack([img for _, img in items]).unsqueeze(1).to(device, non_blocking=True)
                for k in todo[ci]:
                    with precision_scope(config.precision, device):
                        f = run_extractor(base[k], x, config.precision)
                    feats[k][idx] = f.cpu().numpy()
                    for dk, de in derived.items():
                        if de.derived_from == k:
                            feats[dk][idx] = de.from_features(f).cpu().numpy()
            bar.update(len(batch))
            last = batch[-1][0]
            s, t = chunks[ci]
            if last == t - 1:  # chunk complete: cache it (bad images stay NaN rows)
                for k in list(base) + list(derived):
                    src_k = k if k in base else derived[k].derived_from
                    if src_k in todo[ci]:
                        cache.put(chunk_key(src.hashes[s:t], specs[k]), feats[k][s:t])
        bar.close()
    if dist.active:  # rank 0 collects every rank's chunks (computed or cached) and failures
        payload = {"chunks": {ci: {k: feats[k][chunks[ci][0]:chunks[ci][1]] for k in extractors} for ci in mine},
                   "bad": bad, "hits": cache.hits - hits0, "misses": cache.misses - misses0}
        gathered = dist.gather(payload)
        if not dist.is_main:
            return None, []
        for r, p in enumerate(gathered):
            if r == 0:
                continue
            for ci, fk in p["chunks"].items():
                s, t = chunks[ci]
                for k, v in fk.items():
                    feats[k][s:t] = v
            bad += p["bad"]
            cache.hits += p["hits"]
            cache.misses += p["misses"]
    # Images that failed in an earlier (perhaps interrupted) run are NaN rows in cached chunks; they must be
    # listed even when this run found other bad images in the chunks it computed.
    # An extractor that returns NaN/Inf for a decodable image is listed too, rather than poisoning a metric.
    known = {i for i, _ in bad}
    for k in extractors:
        failed = np.isnan(feats[k]).all(1)
        nonfinite = ~np.isfinite(feats[k]).all(1) & ~failed
        for i in np.flatnonzero(failed | nonfinite):
            if int(i) not in known:
                known.add(int(i))
                bad.append((int(i), _failure_message(src, int(i), None if failed[i] else k)))
    return feats, sorted(bad)


def reference_statistics(source, *, config: EvalConfig | None = None) -> dict | None:
    """Mean and covariance of every embedding extractor's features over ``source``, streamed.

    Features are never held: each batch goes through every extractor and into a ``RunningMoments`` on the
    device (float64), so the memory is ``D^2`` per extractor whatever the number of images. This is how the
    FID statistics of a large reference are made (``RunningMoments.save`` writes the ``.npz``). Under
    torchrun each rank takes every ``WORLD_SIZE``-th batch and rank 0 merges the accumulators; other ranks
    get ``None``. Returns ``{extractor: RunningMoments}``.
    """
    from .metrics.moments import RunningMoments

    config = config or EvalConfig()
    device = resolve_device(config.device)
    dist, device = from_env(device)
    try:
        src = open_source(source, split=config.reference_split, role="reference", seed=config.seed,
                          index=config.use_cache, cache_dir=config.cache_dir)
        if src.unreadable and not config.skip_bad:
            raise DataError(f"{len(src.unreadable)} unreadable file(s) in {src.name}: {src.unreadable[0][1]}; "
                            "fix or remove them, or pass --skip-bad")
        nets = {k: e for k, e in build_extractors(config.extractors, config, device).items()
                if e.kind == "embedding" and getattr(e, "derived_from", None) is None}
        if not nets:
            raise UsageError("reference statistics need an embedding extractor (inception, xrv, ...)")
        acc = {k: RunningMoments(e.num_features, device=device) for k, e in nets.items()}
        n, bs = len(src), config.batch_size
        batches = [list(range(b, min(b + bs, n))) for i, b in enumerate(range(0, n, bs)) if dist.owns(i)]
        workers = config.num_workers if config.num_workers is not None else min(4, os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(
            _Decode(src), batch_sampler=batches, num_workers=0 if src._array is not None else workers,
            collate_fn=_collate, pin_memory=device.startswith("cuda"),
        )
        bar = _progress(sum(map(len, batches)), "reference statistics", config.progress and dist.is_main)
        with precision_scope(config.precision, device):
            for batch in loader:
                for i, img, err in batch:
                    if err is not None and not config.skip_bad:
                        raise DataError(f"{err}. Fix or remove it, or pass --skip-bad")
                groups: dict[tuple, list] = {}
                for i, img, err in batch:
                    if err is None:
                        groups.setdefault(tuple(img.shape), []).append(img)
                for imgs in groups.values():
                    x = torch.stack(imgs).unsqueeze(1).to(device, non_blocking=True)
                    for k, e in nets.items():
                        acc[k].update(run_extractor(e, x, config.precision))
                bar.update(len(batch))
        bar.close()
        if dist.active:
            gathered = dist.gather({k: m.to("cpu") for k, m in acc.items()})
            if not dist.is_main:
                return None
            for other in gathered[1:]:
                for k, m in other.items():
                    acc[k].merge(m)
        return acc
    finally:
        dist.close()


def _failure_message(src: ImageSource, i: int, extractor: str | None) -> str:
    """Why row ``i`` has no finite features; a failure cached by an earlier run is decoded again for its reason."""
    where = src.path(i) or src.ids[i]
    if extractor is not None:
        return f"{where}: extractor {extractor} gave NaN/Inf features"
    try:
        src.load(i)
    except DataError as e:
        return str(e)
    return f"{where}: could not be decoded in an earlier run (cached failure); clear the cache to retry"


def _git_hash() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        if not (root / ".git").exists():
            return None
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "cxrbench": __version__}
    for pkg in ("torch", "torchvision", "torchxrayvision", "numpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


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
            getattr(EXTRACTORS.get(e), "kind", "") == "embedding" for e in config.extractors
        ):
            skipped[name] = "needs an embedding extractor"
            continue
        plan.append(m)
    return plan, skipped


DEFAULT_PROTOCOL = "cxr64"


def evaluate(samples, reference=None, *, config: EvalConfig | None = None, train_reference=None) -> Result:
    """Evaluate a samples set against a reference set; see ``EvalConfig`` for the knobs.

    ``samples`` / ``reference`` are folders, ``.npy``/``.npz`` arrays, named references (``nih-cxr14``) or
    ``ImageSource`` objects. With no reference (and no protocol), the default protocol ``cxr64`` runs: its
    reference, network and metrics ship with cxrbench. Returns a ``Result`` (``cxrbench.result/1``).
    """
    config = config or EvalConfig()
    if reference is None and config.protocol == "default" and train_reference is None:
        config = config.resolved(protocol=DEFAULT_PROTOCOL)
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    dist, device = from_env(device)
    try:
        return _evaluate(samples, reference, config, train_reference, device, dist, t0)
    finally:
        dist.close()


def _evaluate(samples, reference, config: EvalConfig, train_reference, device: str, dist: DistContext,
              t0: float) -> Result | None:
    config = config.resolved(extractors=tuple(config.extractors), metrics=tuple(config.metrics) if config.metrics else None)
    if config.precision not in PRECISIONS:
        raise UsageError(f"--precision {config.precision}: expected one of {', '.join(PRECISIONS)}")
    if config.n_bootstrap < 0 or config.batch_size < 1 or config.chunk_size < 1:
        raise UsageError("--batch-size and chunk size must be >= 1 and --n-bootstrap >= 0")
    for e in config.extractors:
        if e not in EXTRACTORS:
            EXTRACTORS.get(e)  # raises: unknown names fail before any work, listing the known ones
    plan, skipped_metrics = _metric_plan(config)

    train_reference = train_reference if train_reference is not None else config.train_reference
    from .reference_stats import check_specs, is_reference_stats, load_reference_stats

    proto = _protocol(config)
    if hasattr(proto, "prepare"):  # a protocol that fixes the extractors, metrics and reference sets
        config, reference, train_reference = proto.prepare(config, reference, train_reference)
        plan, skipped_metrics = _metric_plan(config)
    elif reference is None:
        raise UsageError("no reference given: pass --reference (a folder, array, statistics file or dataset name), "
                         f"or evaluate under a protocol that ships one (--protocol {DEFAULT_PROTOCOL})")
    ref_stats = None
    sets = {"samples": open_source(samples, split=config.samples_split, role="samples", seed=config.seed,
                                    index=config.use_cache, cache_dir=config.cache_dir)}
    expected_n = getattr(proto, "sample_count", None)
    n_found = len(sets["samples"])
    if expected_n and n_found > expected_n:  # the protocol's N: the first in canonical (sha256) order
        sets["samples"] = sets["samples"].subset(np.arange(expected_n))
    precomputed = {}
    if isinstance(reference, PrecomputedSet):
        precomputed["reference"] = reference
    if isinstance(train_reference, PrecomputedSet):
        precomputed["train"] = train_reference
        train_reference = None
    if precomputed.get("reference") is not None:
        pass
    elif not isinstance(reference, ImageSource) and is_reference_stats(reference):
        ref_stats = load_reference_stats(reference)  # statistics from `cxrbench stats`: no reference images
        if config.protocol != "default":
            raise UsageError(f"--protocol {config.protocol} needs reference images, not statistics ({reference})")
    else:
        sets["reference"] = open_source(reference, split=config.reference_split, role="reference", seed=config.seed,
                                        index=config.use_cache, cache_dir=config.cache_dir)
    if train_reference is not None:
        sets["train"] = open_source(train_reference, role="train-reference", seed=config.seed,
                                    index=config.use_cache, cache_dir=config.cache_dir)
    t_hash = time.perf_counter() - t0

    extractors = build_extractors(config.extractors, config, device)
    specs = {k: extractor_spec(e, config) for k, e in extractors.items()}
    for role, pre in precomputed.items():
        _check_precomputed(role, pre, specs)
    cache = FeatureCache(config.cache_dir, enabled=config.use_cache)
    feats, keep, skipped_files, t1 = {}, {}, {}, time.perf_counter()
    extracted = {}
    for role, src in sets.items():
        extracted[role] = extract_features(src, extractors, config, cache, device, desc=f"{role} features", dist=dist)
        if dist.active:
            continue  # every rank runs every set's collectives before rank 0 may stop on bad images
        _check_set(role, src, *extracted[role], config, feats, keep, skipped_files)
    if not dist.is_main:
        return None  # rank 0 holds the gathered features, computes the metrics and writes the result
    if dist.active:
        for role, src in sets.items():
            _check_set(role, src, *extracted[role], config, feats, keep, skipped_files)
    t_extract = time.perf_counter() - t1

    fsets = {r: _feature_set(r, sets[r], feats[r], keep[r]) for r in sets}
    for role, pre in precomputed.items():
        fsets[role] = _precomputed_feature_set(role, pre, extractors)
    if ref_stats is not None:
        check_specs(reference, ref_stats, specs)
        fsets["reference"] = FeatureSet(name="reference", ids=[], hashes=[], features={}, stats=ref_stats["stats"])
    for k, e in extractors.items():
        if e.feature_names:
            specs[k]["feature_names"] = list(e.feature_names)
    ctx = EvalContext(gen=fsets["samples"], ref=fsets["reference"], train=fsets.get("train"), extractors=specs,
                      config=config, device=device)
    metrics: dict[str, dict] = {}
    metric_versions, metric_times, notes = {}, {}, []
    t2 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for m in plan:
            reason = m.skip_reason(ctx) if hasattr(m, "skip_reason") else None
            if ref_stats is not None and not m.accepts_reference_stats:
                reason = "the reference is saved statistics (mean/covariance); this metric needs its images"
            if reason:
                skipped_metrics[m.name] = reason
                continue
            tm = time.perf_counter()
            values: dict[str, MetricValue] = m.compute(ctx)
            metric_times[m.name] = round(time.perf_counter() - tm, 3)
            metric_versions[m.name] = m.version
            for key, v in values.items():
                metrics[key] = v.to_dict()
        if hasattr(proto, "run"):
            _run_protocol(proto, config, ctx, sets, keep, feats, specs, device, metrics, metric_versions)
        notes += sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})
    duplicates = {r: _duplicates(sets[r]) for r in sets}
    for role, src in sets.items():
        notes += [f"{role}: {x}" for x in src.notes]
        if duplicates[role]:
            extra = sum(len(g) - 1 for g in duplicates[role])
            notes.append(f"{role}: {extra} image(s) are byte-identical copies of others (e.g. "
                         f"{' = '.join(duplicates[role][0][:3])}); they count as separate images in every metric")
    t_metrics = time.perf_counter() - t2

    # each extractor judges its own weights (published sha256 pins on its class): random, unknown or
    # self-made weights all make the numbers incomparable with published ones
    unpublished = [why for e in extractors.values() if (why := e.unpublished_weights())]
    outside = []
    if expected_n and n_found < expected_n:
        outside.append(f"protocol {proto.name} expects {expected_n} samples; {n_found} given")
    if expected_n and n_found > expected_n:
        notes.append(f"protocol {proto.name}: the first {expected_n} of {n_found} samples in canonical (sha256) "
                     "order were evaluated")
    result = Result(
        schema=SCHEMA,
        cxrbench_version=__version__,
        git_hash=_git_hash(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        protocol={"name": config.protocol, "version": getattr(proto, "version", PROTOCOL_VERSION)},
        samples={**sets["samples"].describe(), "n_used": int(len(keep["samples"])),
                 "skipped_files": skipped_files["samples"], "ignored_files": sets["samples"].ignored[:100],
                 "duplicates": duplicates["samples"]},
        reference=({**precomputed["reference"].describe(), "n_used": len(precomputed["reference"])}
                   if "reference" in precomputed else
                   {**sets["reference"].describe(), "n_used": int(len(keep["reference"])),
                    "skipped_files": skipped_files["reference"], "duplicates": duplicates["reference"]}
                   if ref_stats is None else
                   {**ref_stats["meta"]["reference"], "kind": "statistics", "statistics_file": str(reference)}),
        train_reference=(precomputed["train"].describe() if "train" in precomputed else
                         None if "train" not in sets else {**sets["train"].describe(),
                                                           "skipped_files": skipped_files["train"]}),
        extractors=specs,
        metrics=dict(sorted(metrics.items())),
        metric_versions=metric_versions,
        skipped_metrics=skipped_metrics,
        config={**dataclasses.asdict(config), "device_resolved": device, "world_size": dist.world_size,
                "distributed_backend": dist.backend},
        timings={"world_size": dist.world_size, "hash_s": round(t_hash, 3), "extract_s": round(t_extract, 3), "metrics_s": round(t_metrics, 3),
                 "total_s": round(time.perf_counter() - t0, 3), "per_metric_s": metric_times},
        cache={"dir": str(cache.root) if cache.enabled else None, "hits": cache.hits, "misses": cache.misses,
               "corrupt_entries_recomputed": len(cache.corrupt)},
        device=device + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        seeds={"seed": config.seed, "weights_seed": config.weights_seed},
        versions=_versions(),
        comparable=not unpublished and not outside and config.precision == "fp32",
        not_comparable_because=unpublished + outside + (
            [f"precision {config.precision}: published numbers are fp32"] if config.precision != "fp32" else []),
        warnings=notes,
    )
    return result


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
    """The registered protocol object of ``config.protocol`` (None for "default": your own reference)."""
    from .registry import PROTOCOLS

    return None if config.protocol == "default" else PROTOCOLS.get(config.protocol)()


def _check_precomputed(role: str, pre: PrecomputedSet, specs: dict) -> None:
    """Shipped features are used only by the extractor (weights, version, preprocessing) that made them."""
    fields = ("name", "version", "weights", "num_features", "input_size", "resize_filter")
    for k, spec in pre.specs.items():
        if k not in specs:
            raise UsageError(f"{role} {pre.name}: its features are {k!r} features; add {k} to --extractors")
        run = specs[k]
        if str(run["weights"]).startswith("random"):
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


def _run_protocol(proto, config, ctx, sets, keep, feats, specs, device, metrics, metric_versions) -> None:
    """A registered multi-step protocol on the same sets and cached features; its metrics join the result."""
    if config.protocol == "augmentation":
        from .protocols.augmentation import AugmentConfig

        if not config.augment_task:
            raise UsageError("--protocol augmentation needs --augment-task 'A vs B' (labels come from the reference)")
        emb = next((e for e in config.extractors if specs[e].get("kind") == "embedding"), None)
        if emb is None:
            raise UsageError("--protocol augmentation needs an embedding extractor (e.g. xrv) in --extractors")
        acfg = AugmentConfig(
            n_real=config.augment_n_real, n_test=config.augment_n_test, seeds=config.augment_seeds, seed=config.seed,
            extractor=emb, weights=config.weights, weights_seed=config.weights_seed, device=device,
            batch_size=config.batch_size, num_workers=config.num_workers, cache_dir=config.cache_dir,
            use_cache=config.use_cache, n_bootstrap=config.n_bootstrap, progress=config.progress,
        )
        values = proto.run(
            sets["reference"].subset(keep["reference"]), sets["samples"].subset(keep["samples"]),
            task=config.augment_task, config=acfg, real_features=feats["reference"][emb][keep["reference"]],
            synthetic_features=feats["samples"][emb][keep["samples"]],
        )
    else:
        values = proto.run(ctx)
    metric_versions[f"protocol:{proto.name}"] = proto.version
    metrics.update({k: v.to_dict() for k, v in values.items()})


def _duplicates(src: ImageSource) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for i, h in enumerate(src.hashes):
        groups.setdefault(h, []).append(src.ids[i])
    return [v for v in groups.values() if len(v) > 1][:50]


def images_source(images, name: str = "generator") -> ImageSource:
    """An in-memory image set from a tensor/array of images (any layout ``array_to_images`` accepts)."""
    from .data.io import array_to_images
    from .data.sources import array_source

    arr = array_to_images(images.detach().cpu().numpy() if torch.is_tensor(images) else images, name)
    return array_source(arr, name=name, root=None)


@torch.no_grad()
def evaluate_generator(generator, n: int, reference, *, config: EvalConfig | None = None, labels=None,
                       seed: int = 0, batch_size: int = 64) -> Result:
    """Sample ``n`` images from ``generator`` (anything with ``sample(n, labels=, seed=)``) and evaluate them.

    For use inside a training loop: nothing is written to disk except the feature cache. The images are
    those ``cxrbench sample --seed SEED --batch-size BATCH_SIZE`` writes (``generator.sample_images``).
    """
    from .generator import sample_images

    imgs = sample_images(generator, n, labels=labels, seed=seed, batch_size=batch_size)
    return evaluate(images_source(imgs, name=f"{type(generator).__name__} samples"), reference, config=config)
