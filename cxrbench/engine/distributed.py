"""Sharding feature extraction across processes with torch.distributed (``torchrun``).

Under ``torchrun --nproc_per_node K -m cxrbench evaluate ...`` (RANK / WORLD_SIZE / LOCAL_RANK set), every
rank opens the same image sets (each rank hashes about 1/K of the files and the hashes are all-gathered, so
every rank has the same canonical order and chunks), extracts the chunks ``ci % K == rank``
and writes them to the shared cache; the computed chunks are gathered on rank 0, which computes the metrics.
Chunks are the unit of work, so cache entries are byte-identical to a single-process run's, and the
features (hence every metric) are the same as one process gives.

Features travel over a gloo group even when the extraction group is NCCL: they are CPU numpy arrays by then,
and gloo's object collectives need no GPU staging copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UsageError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # we initialised the default group (and destroy it at the end)
    _gather_group: object = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk_index: int) -> bool:
        """Whether this rank extracts chunk ``chunk_index`` (round robin: balanced when chunks are equal)."""
        return chunk_index % self.world_size == self.rank

    def gather(self, obj):
        """``obj`` of every rank, in rank order, on rank 0; ``None`` elsewhere."""
        if not self.active:
            return [obj]

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._gather_group)
        return out

    def all_gather(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank (sharded hashing: every rank needs every hash)."""
        if not self.active:
            return [obj]

        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._gather_group)
        return out

    def close(self) -> None:
        if self.owns_group:
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def from_env(device: str) -> tuple[DistContext, str]:
    """The distributed context torchrun describes in the environment, and this rank's device.

    Without WORLD_SIZE > 1 this is a single process (rank 0 of 1) and nothing is initialised.
    ``device`` is the resolved device; ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext(), device

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here; "
                             "lower --nproc_per_node")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    elif device == "mps":
        raise UsageError("torchrun with --device mps is not supported; use --device cpu or cuda")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        owns = True
    else:
        backend = dist.get_backend()
    group = dist.new_group(backend="gloo") if backend != "gloo" else None
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, backend=backend,
                      owns_group=owns, _gather_group=group)
    return ctx, device
