"""Mean and covariance accumulated batch by batch in float64, without holding the features.

``RunningMoments`` keeps the count, the sum and the sum of outer products of ``x - shift`` on the device
(``shift`` is the first batch's mean: centring keeps the float64 sums far from cancellation when features
have a large common offset). Two accumulators merge exactly (distributed ranks, or chunks), and
``stats()`` gives what ``gaussian_stats`` gives on the full matrix. Memory is ``D^2`` float64 whatever N is
(32 MB at D = 2048), so reference statistics for 100k images need no 100k x D matrix. ``save``/``load``
write the statistics as ``.npz`` (``mu``, ``sigma``, ``n``), the layout pytorch-fid and clean-fid use.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..fileio import atomic_write_bytes


class RunningMoments:
    def __init__(self, dim: int, *, device: str | torch.device = "cpu"):
        if device == "mps" or (isinstance(device, torch.device) and device.type == "mps"):
            device = "cpu"  # mps has no float64
        self.dim = int(dim)
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)

    @property
    def device(self) -> torch.device:
        return self.sum.device

    def update(self, x) -> RunningMoments:
        """Add the rows of an ``(N, D)`` batch (numpy or torch, any float dtype)."""
        x = torch.as_tensor(x).to(self.device, torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) features, got {tuple(x.shape)}")
        if len(x) == 0:
            return self
        if self.shift is None:
            self.shift = x.mean(0)
        xc = x - self.shift
        self.sum += xc.sum(0)
        self.outer.addmm_(xc.T, xc)
        self.n += len(x)
        return self

    def _shifted_to(self, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, outer) about ``shift`` instead of ``self.shift``: x - c' = (x - c) + d with d = c - c'."""
        d = self.shift - shift
        s = self.sum + self.n * d
        o = self.outer + torch.outer(self.sum, d) + torch.outer(d, self.sum) + self.n * torch.outer(d, d)
        return s, o

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Add another accumulator's rows (as if its batches had been passed to ``update``)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge {other.dim}-d moments into {self.dim}-d")
        if other.n == 0:
            return self
        if self.n == 0:
            self.shift = other.shift.to(self.device)
        s, o = other.to(self.device)._shifted_to(self.shift)
        self.sum += s
        self.outer += o
        self.n += other.n
        return self

    def to(self, device) -> RunningMoments:
        out = RunningMoments(self.dim, device=device)
        out.n, out.sum, out.outer = self.n, self.sum.to(out.device), self.outer.to(out.device)
        out.shift = None if self.shift is None else self.shift.to(out.device)
        return out

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased covariance) in float64, as ``gaussian_stats`` returns them."""
        if self.n < 2:
            raise DataError(f"Frechet distance needs at least 2 feature vectors, got {self.n}")
        m = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return self.shift + m, (cov + cov.T) / 2

    def save(self, path) -> None:
        mu, sigma = self.stats()
        buf = io.BytesIO()
        np.savez(buf, mu=mu.cpu().numpy(), sigma=sigma.cpu().numpy(), n=np.int64(self.n))
        atomic_write_bytes(Path(path), buf.getvalue())

    @staticmethod
    def load_stats(path) -> tuple[np.ndarray, np.ndarray, int | None]:
        """(mu, sigma, n) from a statistics ``.npz`` (``n`` is None for files written by other tools)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
                n = int(z["n"]) if "n" in z.files else None
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: not a statistics .npz with arrays mu and sigma ({e}); "
                            "write one with RunningMoments.save") from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (expected (D,) and (D, D))")
        return mu, sigma, n
