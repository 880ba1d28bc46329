"""The feature pass: extractors built from an ``EvalConfig``, images decoded once and run through every
extractor chunk by chunk (cached as chunks complete), and streamed reference statistics.

Below the harness: ``harness``, ``reference_stats`` and protocols use it without importing each other.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np
import torch

from ..config import PRECISIONS, EvalConfig, resolve_device
from ..data.imageset import ImageSource
from ..data.sources import open_source
from ..errors import DataError, UsageError
from ..features.base import FeatureKind
from ..features.cache import FeatureCache, chunk_key
from ..metrics.moments import RunningMoments
from ..registry import EXTRACTORS
from .distributed import DistContext, from_env


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


def default_workers(config: EvalConfig) -> int:
    return config.num_workers if config.num_workers is not None else min(4, os.cpu_count() or 1)


def decoded_batches(src: ImageSource, batches: list[list[int]], *, device: str, workers: int = 0,
                    times: dict | None = None):
    """The one decode loop: every image of ``batches`` (lists of row indices) decoded once, by DataLoader workers
    when ``workers`` > 0, and yielded per batch as ``(rows, groups, bad)``: ``rows`` the batch's indices,
    ``groups`` a list of ``(indices, x)`` with ``x`` the (k, 1, H, W) float32 images of one shape on ``device``
    (mixed sizes are resized later by each consumer's own preprocessing), ``bad`` the ``(index, message)`` of
    images that failed to decode. Feature extraction, streamed reference statistics and the augmentation
    protocol's image classifiers all read images through it.

    ``times["decode_s"]``, when given, accumulates the time spent waiting for decoded batches (the decoding
    itself without workers; with them, what they did not hide behind the consumer's work) and the host-to-device
    copy.
    """
    if not batches:
        return
    if src._array is not None or sum(map(len, batches)) < 64:
        workers = 0  # arrays are in memory; tiny sets do not repay worker start-up
    loader = torch.utils.data.DataLoader(
        _Decode(src), batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=device.startswith("cuda"), persistent_workers=False,
    )
    t = time.perf_counter()  # worker start-up counts as decoding
    for batch in loader:
        groups: dict[tuple, list] = {}
        bad = []
        for i, img, err in batch:
            if err is None:
                groups.setdefault(tuple(img.shape), []).append((i, img))
            else:
                bad.append((i, err))
        out = [([i for i, _ in items], torch.stack([img for _, img in items]).unsqueeze(1).to(device, non_blocking=True))
               for items in groups.values()]
        if times is not None:
            times["decode_s"] = times.get("decode_s", 0.0) + time.perf_counter() - t
        yield [i for i, _, _ in batch], out, bad
        t = time.perf_counter()


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
def run_extractor(e, x: torch.Tensor, precision: str = "fp32", *, times: dict | None = None,
                  name: str | None = None) -> torch.Tensor:
    """``e.extract(x)``, with channels_last input for a channels_last network and bf16 autocast for the network
    forward when asked.

    Preprocessing stays float32 (Inception quantises to 8 bit; XRV rescales to [-1024, 1024]); features come
    back float32. Extractors without parameters (pixel statistics) always run in float32. ``times``, when
    given, accumulates ``preprocess_s`` and ``network_s[name]`` (the network's forward alone).
    """
    p = next(iter(e.parameters()), None)
    t0 = time.perf_counter()
    if p is None:
        f = e.extract(x)
        z_done = time.perf_counter()
    else:
        z = e.preprocess(x.to(p.device, torch.float32))
        if "channels_last" in (getattr(e, "inference_kernels", None) or "") and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        _sync(z)
        z_done = time.perf_counter()
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            f = e.forward(z).float()
    if times is not None:
        _sync(f)
        t1 = time.perf_counter()
        times["preprocess_s"] = times.get("preprocess_s", 0.0) + z_done - t0
        per = times.setdefault("network_s", {})
        per[name or e.name] = per.get(name or e.name, 0.0) + t1 - z_done
    return f


def _sync(x: torch.Tensor) -> None:
    """Wait for ``x``'s device (CUDA runs asynchronously), so a stage's time is its own."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


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
        kwargs["weights"] = cls.weights_from_config(config)
        out[name] = cls(**kwargs)
        if config.fast_kernels:
            out[name].prepare_inference()  # BatchNorm folded, channels_last (oneDNN / cuDNN NHWC kernels)
        if config.compile:
            out[name].compile_forward()
    for e in out.values():  # a derived extractor's features inherit its base network's kernels (and cache key)
        base = out.get(getattr(e, "derived_from", None) or "")
        if base is not None:
            e.inference_kernels = base.inference_kernels
    return out


def extract_features(src: ImageSource, extractors: dict, config: EvalConfig, cache: FeatureCache, device: str,
                     desc: str, dist: DistContext | None = None,
                     times: dict | None = None) -> tuple[dict[str, np.ndarray] | None, list]:
    """Features of every image of ``src`` for every extractor; returns (features, bad images).

    Under ``dist`` (several ranks) each rank looks up and extracts only its own chunks; rank 0 gathers them
    and returns everything, the other ranks return ``(None, [])``. ``times`` (a dict), when given, gets
    seconds added under ``decode_s`` (waiting for decoded batches: the decode itself without workers, what
    the workers did not hide with them), ``forward_s`` (preprocessing, networks and derived heads, copies to
    the host; of it ``preprocess_s`` and ``network_s[extractor]``) and ``cache_s`` (cache lookups and writes).
    """
    times = {} if times is None else times
    for key in ("decode_s", "forward_s", "cache_s"):
        times.setdefault(key, 0.0)
    tc = time.perf_counter()
    dist = dist or DistContext()
    n = len(src)
    base, derived = _base_and_derived(extractors)
    specs = {k: extractor_spec(e, config) for k, e in extractors.items()}
    feats = {k: np.full((n, e.num_features), np.nan, dtype=np.float32) for k, e in extractors.items()}
    chunks = [(s, min(s + config.chunk_size, n)) for s in range(0, n, config.chunk_size)]
    mine = [ci for ci in range(len(chunks)) if dist.owns(ci)]
    hits0, misses0 = cache.hits, cache.misses
    todo = _cached_chunks(src, extractors, (base, derived), specs, feats, chunks, mine, cache)
    times["cache_s"] += time.perf_counter() - tc

    bad: list[tuple[int, str]] = []
    if todo:
        bad += _compute_chunks(src, todo, (base, derived), specs, feats, chunks, config, cache, device, desc,
                               dist.is_main, times)
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
    _list_failures(src, extractors, feats, bad)
    return feats, sorted(bad)


def _base_and_derived(extractors: dict) -> tuple[dict, dict]:
    """(networks run on images, heads computed from a base network's features), each checked to have its base."""
    base = {k: e for k, e in extractors.items() if getattr(e, "derived_from", None) is None}
    derived = {k: e for k, e in extractors.items() if getattr(e, "derived_from", None) is not None}
    for k, e in derived.items():
        if e.derived_from not in base:
            raise UsageError(f"extractor {k!r} is computed from {e.derived_from!r}; add it to --extractors")
    return base, derived


def _cached_chunks(src: ImageSource, extractors: dict, nets: tuple[dict, dict], specs: dict, feats: dict,
                   chunks: list[tuple[int, int]], mine: list[int], cache: FeatureCache) -> dict[int, list[str]]:
    """Fills ``feats`` from the cache for this rank's chunks; returns chunk index -> base extractors still to
    run (a derived head missing from the cache runs its base network again)."""
    base, derived = nets
    todo: dict[int, list[str]] = {}  # chunk index -> base extractors still to run
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
    return todo


def _compute_chunks(src: ImageSource, todo: dict[int, list[str]], nets: tuple[dict, dict], specs: dict,
                    feats: dict, chunks: list[tuple[int, int]], config: EvalConfig, cache: FeatureCache,
                    device: str, desc: str, show_progress: bool, times: dict) -> list[tuple[int, str]]:
    """Runs the chunks of ``todo`` (images decoded once, every base network and its derived heads on each
    batch), caches each chunk as it completes, and returns the images that failed to decode."""
    base, derived = nets
    bad: list[tuple[int, str]] = []
    batches = []
    for ci in sorted(todo):
        s, t = chunks[ci]
        batches += [list(range(b, min(b + config.batch_size, t))) for b in range(s, t, config.batch_size)]
    bar = _progress(sum(len(b) for b in batches), desc, config.progress and show_progress)
    chunk_of = lambda i: i // config.chunk_size
    decoded = decoded_batches(src, batches, device=device, workers=default_workers(config), times=times)
    for rows, groups, bad_here in decoded:
        tf = time.perf_counter()
        bad += bad_here
        ci = chunk_of(rows[0])
        for idx, x in groups:
            for k in todo[ci]:
                with precision_scope(config.precision, device):
                    f = run_extractor(base[k], x, config.precision, times=times, name=k)
                feats[k][idx] = f.cpu().numpy()
                for dk, de in derived.items():
                    if de.derived_from == k:
                        feats[dk][idx] = de.from_features(f).cpu().numpy()
        bar.update(len(rows))
        s, t = chunks[ci]
        tw = time.perf_counter()
        times["forward_s"] += tw - tf
        if rows[-1] == t - 1:  # chunk complete: cache it (bad images stay NaN rows)
            for k in list(base) + list(derived):
                src_k = k if k in base else derived[k].derived_from
                if src_k in todo[ci]:
                    cache.put(chunk_key(src.hashes[s:t], specs[k]), feats[k][s:t])
        times["cache_s"] += time.perf_counter() - tw
    bar.close()
    return bad


def _list_failures(src: ImageSource, extractors: dict, feats: dict, bad: list[tuple[int, str]]) -> None:
    """Adds to ``bad`` every row with no finite features that is not listed yet."""
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


def reference_statistics(source, *, config: EvalConfig | None = None) -> dict | None:
    """Mean and covariance of every embedding extractor's features over ``source``, streamed.

    Features are never held: each batch goes through every extractor and into a ``RunningMoments`` on the
    device (float64), so the memory is ``D^2`` per extractor whatever the number of images. This is how the
    FID statistics of a large reference are made (``RunningMoments.save`` writes the ``.npz``). Under
    torchrun each rank takes every ``WORLD_SIZE``-th batch and rank 0 merges the accumulators; other ranks
    get ``None``. Returns ``{extractor: RunningMoments}``.
    """
    config = config or EvalConfig()
    device = resolve_device(config.device)
    dist, device = from_env(device)
    try:
        src = open_source(source, split=config.reference_split, role="reference", seed=config.seed,
                          index=config.use_cache, cache_dir=config.cache_dir, dist=dist)
        if src.unreadable and not config.skip_bad:
            raise DataError(f"{len(src.unreadable)} unreadable file(s) in {src.name}: {src.unreadable[0][1]}; "
                            "fix or remove them, or pass --skip-bad")
        nets = {k: e for k, e in build_extractors(config.extractors, config, device).items()
                if e.kind == FeatureKind.EMBEDDING and getattr(e, "derived_from", None) is None}
        if not nets:
            raise UsageError("reference statistics need an embedding extractor (inception, xrv, ...)")
        acc = {k: RunningMoments(e.num_features, device=device) for k, e in nets.items()}
        n, bs = len(src), config.batch_size
        batches = [list(range(b, min(b + bs, n))) for i, b in enumerate(range(0, n, bs)) if dist.owns(i)]
        bar = _progress(sum(map(len, batches)), "reference statistics", config.progress and dist.is_main)
        with precision_scope(config.precision, device):
            for rows, groups, bad in decoded_batches(src, batches, device=device, workers=default_workers(config)):
                if bad and not config.skip_bad:
                    raise DataError(f"{bad[0][1]}. Fix or remove it, or pass --skip-bad")
                for _, x in groups:
                    for k, e in nets.items():
                        acc[k].update(run_extractor(e, x, config.precision))
                bar.update(len(rows))
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
