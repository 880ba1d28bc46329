"""Where a result came from: ``make_result`` fills every ``cxrbench.result/1`` field that describes the run
(schema, cxrbench version, git commit, creation time, library versions, comparability) the same way for
``cxrbench evaluate`` and ``cxrbench augment``; callers give what they measured."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from ..kernels import cpu_kernels
from ..results import SCHEMA, Result
from ..version import __version__


def git_hash() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]  # the checkout: cxrbench/engine/provenance.py
        if not (root / ".git").exists():
            return None
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def versions() -> dict:
    out = {"python": platform.python_version(), "cxrbench": __version__}
    for pkg in ("torch", "torchvision", "torchxrayvision", "numpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    k = cpu_kernels()  # the same versions give the same bits only with the same CPU kernels
    out["cpu_kernels"] = f"{k.pop('cpu_capability')} ({', '.join(f'{n}={v}' for n, v in k.items())})"
    return out


def make_result(*, protocol: dict, samples: dict, reference: dict, train_reference: dict | None, extractors: dict,
                metrics: dict, metric_versions: dict, skipped_metrics: dict, config: dict, timings: dict,
                cache: dict, device: str, seeds: dict, not_comparable_because: list[str], warnings: list[str],
                **sections) -> Result:
    """A ``Result``; it is comparable with published numbers exactly when ``not_comparable_because`` is empty.
    ``sections`` are protocol-specific top-level blocks (``augmentation=...``)."""
    return Result(
        schema=SCHEMA,
        cxrbench_version=__version__,
        git_hash=git_hash(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        protocol=protocol,
        samples=samples,
        reference=reference,
        train_reference=train_reference,
        extractors=extractors,
        metrics=metrics,
        metric_versions=metric_versions,
        skipped_metrics=skipped_metrics,
        config=config,
        timings=timings,
        cache=cache,
        device=device,
        seeds=seeds,
        versions=versions(),
        comparable=not not_comparable_because,
        not_comparable_because=list(not_comparable_because),
        warnings=warnings,
        **sections,
    )
