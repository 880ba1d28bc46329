"""FID in one file: the Frechet distance between Gaussians fitted to features, its functional entry
``fid(real=, fake=)`` (re-exported by ``functional``) and the registered ``fid`` metric (``FID``).

The trace term ``Tr((S1 S2)^1/2)`` is computed from the eigenvalues of the symmetric product ``A^T S2 A``
(``A A^T = S1``, a Cholesky factor when ``S1`` is positive definite) with ``eigvalsh``, in float64: no complex
``sqrtm`` round-off, and the same answer as scipy's ``sqrtm`` formula to ~1e-13 relative on well-conditioned
covariances.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..config import MetricSettings
from ..errors import DataError
from .base import FeaturePair, MetricValue, TwoSampleMetric
from .bootstrap import two_sample_bootstrap
from .common import check_pair, fd_validity, float64_device, one_thread, replicates, with_interval

#: FID's and FD_inf's intervals cover only when each set has at least this many rows per feature dimension
#: (measured: tests/benchmarks/coverage.py; below it the bias of the rank-deficient covariance dominates)
FD_MIN_ROWS_PER_DIM = 2.0
#: pairs of half subsets whose mean FD gives FID's bias at the full sizes (``half_sample_bias``); the Monte
#: Carlo error of the bias is then about a quarter of the estimate's own spread (whitened cxr128 features, 300
#: vs 599 at the null: 0.16-0.23 against 0.83); the coverage benchmark measures the intervals with it included
HALF_SAMPLES = 50


def _as64(x, device=None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64, device=device)


def gaussian_stats(features, *, weights: np.ndarray | None = None, device=None):
    """Mean and (unbiased) covariance of ``(N, D)`` features in float64, as torch tensors.

    ``weights`` (counts per row, as a bootstrap resample gives) avoid materialising the resampled matrix.
    """
    x = _as64(features, device)
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"Frechet distance needs at least 2 feature vectors, got shape {tuple(x.shape)}")
    if weights is None:
        mu = x.mean(0)
        xc = x - mu
        return mu, xc.T @ xc / (x.shape[0] - 1)
    w = _as64(weights, x.device)
    n = w.sum()
    mu = (w[:, None] * x).sum(0) / n
    xc = x - mu
    return mu, (xc * w[:, None]).T @ xc / (n - 1)


def _eigvalsh(m: torch.Tensor) -> torch.Tensor:
    # LAPACK's syevd through numpy is ~3x faster than torch's CPU eigvalsh for D=2048 (measured here).
    if m.device.type == "cpu":
        return torch.from_numpy(np.linalg.eigvalsh(m.numpy()))
    return torch.linalg.eigvalsh(m)


def _eigvalsh_of_gram(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eigenvalues of ``alpha z^T z``; on CPU BLAS's ``syrk`` builds one triangle (half a matmul's work)."""
    if z.device.type == "cpu":
        from scipy.linalg.blas import dsyrk

        c = dsyrk(alpha, z.contiguous().numpy().T)  # C-ordered z is Fortran-ordered z^T: (z^T)(z^T)^T, upper
        return torch.from_numpy(np.linalg.eigvalsh(c, UPLO="U"))
    return torch.linalg.eigvalsh(alpha * (z.T @ z))


def sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    if s.device.type == "cpu":
        evals, evecs = (torch.from_numpy(a) for a in np.linalg.eigh(s.numpy()))
    else:
        evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def covariance_factor(s, features=None) -> torch.Tensor:
    """``A`` with ``A A^T = S``: the Cholesky factor when ``S`` is positive definite, else ``S^1/2``.

    Any such factor gives ``eig(A^T S2 A) = eig(S S2)``. Cholesky costs a tenth of the eigendecomposition a
    symmetric square root needs (D = 2048 on 2 cores: 0.07 s vs 0.9 s); a rank-deficient covariance (fewer
    samples than dimensions) makes it fail, and the square root takes over. Given the ``(N, D)`` features
    with N <= D, the centred data ``X_c^T / sqrt(N - 1)`` (D x N) is returned instead: exact, and it turns
    the D x D eigenproblem into an N x N one.
    """
    s = _as64(s)
    if features is not None:
        x = _as64(features, s.device)
        if x.shape[0] <= x.shape[1]:
            return (x - x.mean(0)).T / float(x.shape[0] - 1) ** 0.5
    chol, info = torch.linalg.cholesky_ex(s)
    return chol if int(info) == 0 else sqrtm_psd(s)


def _congruence(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``A^T S A`` for symmetric ``S``; with BLAS's triangular multiply on CPU when ``A`` is a Cholesky factor.

    Only the lower triangle is guaranteed (all ``eigvalsh`` reads). A ``D x N`` centred-data factor is not
    triangular even when it is all zero (identical rows): only a square factor may take the BLAS route.
    """
    # square: the D x N centred-data factor (N < D) is never triangular, even when its top rows are all zero
    if a.device.type == "cpu" and a.shape[0] == a.shape[1] and not torch.triu(a, 1).any():
        from scipy.linalg.blas import dtrmm

        # C-ordered L and S are Fortran-ordered L^T and S^T = S: BLAS takes them without a copy
        u, sf = a.contiguous().numpy().T, s.contiguous().numpy().T
        left = dtrmm(1.0, u, sf, side=0, lower=0)  # L^T S
        return torch.from_numpy(dtrmm(1.0, u, left, side=1, lower=0, trans_a=1, overwrite_b=1))  # (L^T S) L
    return a.T @ s @ a


def trace_sqrt_product(sigma1, sigma2, *, factor1: torch.Tensor | None = None) -> float:
    """``Tr((S1 S2)^1/2)``: the square roots of the eigenvalues of ``A^T S2 A`` (``A A^T = S1``), summed.

    ``A^T S2 A`` is symmetric PSD with the eigenvalues of ``S1 S2``, so one ``eigvalsh`` replaces scipy's
    complex Schur-based ``sqrtm`` (D = 2048 on 2 cores: ~0.6 s against ~10 s, agreeing to ~1e-13).
    """
    s1 = _as64(sigma1)
    s2 = _as64(sigma2, device=s1.device)
    a = covariance_factor(s1) if factor1 is None else factor1
    ev = _eigvalsh(_congruence(a, s2.to(a.device)))
    return float(ev.clamp(min=0).sqrt().sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, *, factor1: torch.Tensor | None = None) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`` in float64.

    ``factor1`` (any ``A`` with ``A A^T = S1``, see ``covariance_factor``) saves refactoring ``S1`` when one
    reference is compared with many sets.
    """
    mu1, s1 = _as64(mu1), _as64(sigma1)
    mu2, s2 = _as64(mu2, mu1.device), _as64(sigma2, mu1.device)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise DataError(f"feature dimensions differ: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    diff = mu1 - mu2
    tr = trace_sqrt_product(s1, s2, factor1=factor1)
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr)


class BootstrapFD:
    """FD between a fixed reference and weighted resamples of the generated set, without refitting.

    With ``A A^T = S_r`` (``covariance_factor``) and ``Y = X_g A``, a resample with counts ``w`` has
    ``A^T S_b A`` (eigenvalues those of ``S_r S_b``) equal to the weighted covariance of ``Y``, so ``Y`` is
    computed once. Its non-zero eigenvalues are those of the
    ``k x k`` weighted, centred Gram matrix over the ``k`` distinct rows drawn, which is cheaper than the
    ``D x D`` problem whenever ``k < D`` (N = 2000, D = 2048: ~10x per replicate).
    """

    def __init__(self, gen, mu_r: torch.Tensor, s_r: torch.Tensor, factor_r: torch.Tensor):
        self.x = _as64(gen, mu_r.device)
        self.n = self.x.shape[0]
        self.mu_r, self.tr_r = mu_r, float(torch.trace(s_r))
        self.y = self.x @ factor_r
        self.d = self.y.shape[1]  # the factor's rank bound: D, or N_ref for a centred-data factor
        self.sq = (self.x * self.x).sum(1)
        self._gram = None

    def __call__(self, idx: np.ndarray) -> float:
        w_np = np.bincount(idx, minlength=self.n).astype(np.float64)
        w = torch.from_numpy(w_np).to(self.x.device)
        n = w.sum()
        mu_b = (w @ self.x) / n
        tr_b = float((w @ self.sq - n * (mu_b @ mu_b)) / (n - 1))
        diff = self.mu_r - mu_b
        keep = torch.from_numpy(np.flatnonzero(w_np)).to(self.x.device)
        sw = w[keep].sqrt()
        if len(keep) < self.d and self.n <= 8192:  # the N x N Gram matrix stays below 512 MB
            if self._gram is None:
                self._gram = self.y @ self.y.T
            gw_all = self._gram @ w
            gw = gw_all[keep] / n  # <y_i, m> for kept rows, m = weighted mean of Y
            mm = float(w @ gw_all) / float(n) ** 2
            # the weighted, centred Gram matrix sqrt(w_i w_j) <y_i - m, y_j - m> / (n - 1), in place
            k = self._gram[keep[:, None], keep[None, :]]
            k.sub_(gw[:, None]).sub_(gw[None, :]).add_(mm).mul_(sw[:, None]).mul_(sw[None, :]).div_(n - 1)
            ev = _eigvalsh(k)
        else:
            z = (self.y[keep] - (w @ self.y) / n) * sw[:, None]
            ev = _eigvalsh_of_gram(z, 1 / float(n - 1))  # eigenvalues of z^T z / (n - 1), the weighted covariance
        tr_sqrt = float(ev.clamp(min=0).sqrt().sum())
        return float(diff @ diff) + self.tr_r + tr_b - 2 * tr_sqrt


class TwoSampleFD:
    """FD between weighted resamples of *both* sets, without refitting either (the reference is a sample too).

    The non-zero eigenvalues of ``S_g S_r`` are the squared singular values of ``M = Z_g Z_r^T`` with
    ``Z = sqrt(w) (X - m) / sqrt(n - 1)`` over the distinct rows drawn, so ``Tr((S_g S_r)^1/2)`` is the sum of
    the square roots of the eigenvalues of the ``k x k`` matrix ``M M^T`` (k the smaller number of distinct
    rows). ``M`` is read off the cross Gram matrix ``X_g X_r^T``, computed once, with rank-one corrections for
    the resampled means. When ``N >> D`` the D-space route (weighted covariances, one D x D eigenproblem) is
    cheaper and is used instead. Unit weights reproduce ``frechet_distance`` of the two sets.
    """

    def __init__(self, gen, ref, device=None):
        xg, xr = _as64(gen, device), _as64(ref, device)
        if xg.shape[1] != xr.shape[1]:
            raise DataError(f"feature dimensions differ: {xg.shape[1]} vs {xr.shape[1]}")
        center = xr.mean(0)  # distances to the reference mean keep the Gram entries small (less cancellation)
        self.xg, self.xr = xg - center, xr - center
        (ng, d), nr = self.xg.shape, self.xr.shape[0]
        self.sq_g, self.sq_r = (self.xg * self.xg).sum(1), (self.xr * self.xr).sum(1)
        k_g, k_r = 0.64 * ng, 0.64 * nr  # distinct rows in a resample
        gram_cost = k_g * k_r * min(k_g, k_r) + min(k_g, k_r) ** 3
        dspace_cost = (ng + nr) * d * d + 4 * d**3
        self.cross = self.xg @ self.xr.T if gram_cost < dspace_cost and ng * nr <= 8192**2 else None

    @staticmethod
    def _moments(x, sq, w):
        t = float(w.sum())
        m = (w @ x) / t
        return t, m, float((w @ sq - t * (m @ m)) / (t - 1))

    def __call__(self, idx_g: np.ndarray, idx_r: np.ndarray | None) -> float:
        ng, nr = len(self.xg), len(self.xr)
        wg_np = np.bincount(idx_g, minlength=ng).astype(np.float64)
        wr_np = np.ones(nr) if idx_r is None else np.bincount(idx_r, minlength=nr).astype(np.float64)
        wg, wr = (torch.from_numpy(w).to(self.xg.device) for w in (wg_np, wr_np))
        tg, mg, tr_g = self._moments(self.xg, self.sq_g, wg)
        tr, mr, tr_r = self._moments(self.xr, self.sq_r, wr)
        diff = mg - mr
        if self.cross is None:
            xg_c, xr_c = self.xg - mg, self.xr - mr
            s_g = (xg_c * wg[:, None]).T @ xg_c / (tg - 1)
            s_r = (xr_c * wr[:, None]).T @ xr_c / (tr - 1)
            tr_sqrt = trace_sqrt_product(s_r, s_g)
        else:
            kg = torch.from_numpy(np.flatnonzero(wg_np)).to(self.xg.device)
            kr = torch.from_numpy(np.flatnonzero(wr_np)).to(self.xg.device)
            g_mr = self.cross @ wr / tr  # <x_g_i, m_r> for every generated row
            mg_r = (wg @ self.cross) / tg  # <m_g, x_r_j> for every reference row
            mm = float(mg_r @ wr) / tr
            m = self.cross[kg[:, None], kr[None, :]]
            m.sub_(g_mr[kg][:, None]).sub_(mg_r[kr][None, :]).add_(mm)
            m.mul_(wg[kg].sqrt()[:, None]).mul_(wr[kr].sqrt()[None, :]).div_(((tg - 1) * (tr - 1)) ** 0.5)
            small = m @ m.T if len(kg) <= len(kr) else m.T @ m
            tr_sqrt = float(_eigvalsh(small).clamp(min=0).sqrt().sum())
        return float(diff @ diff) + tr_g + tr_r - 2 * tr_sqrt


def fid_from_features(f1, f2) -> float:
    if len(f2) < len(f1):  # factor the smaller set: an N x N eigenproblem when N <= D
        f1, f2 = f2, f1
    mu1, s1 = gaussian_stats(f1)
    mu2, s2 = gaussian_stats(f2)
    return frechet_distance(mu1, s1, mu2, s2, factor1=covariance_factor(s1, f1))


# the functional entry (``functional.fid``)


@one_thread
def fid(*, real=None, fake, real_stats: dict | None = None, ci: bool = False, n_bootstrap: int | None = None,
        seed: int = MetricSettings.seed, alpha: float = MetricSettings.alpha, device: str = "cpu") -> MetricValue:
    """FID; on request a basic-bootstrap interval over both sets, centred on the estimate corrected by
    ``half_sample_bias``, with that estimate beside it.

    ``real_stats`` (``{"mu", "sigma", "n"}``) stands in for ``real`` when the reference is only known by its
    statistics; the interval then resamples the generated set alone (``ci_method`` says so).
    """
    gen, ref, ref_stats = fake, real, real_stats
    n_bootstrap = replicates(n_bootstrap, ci)
    if (ref is None) == (ref_stats is None):
        raise DataError("fid: pass exactly one of real= (features) and real_stats= (mu, sigma, n)")

    if ref_stats is None:
        g, r = check_pair(gen, ref, what="fid")
        n_ref = len(r)
        mu_r, s_r = gaussian_stats(r, device=device)
        factor_r = covariance_factor(s_r, r)
    else:
        g, _ = check_pair(gen, gen, what="fid")
        mu_r, s_r = _as64(ref_stats["mu"], device), _as64(ref_stats["sigma"], device)
        if mu_r.shape[0] != g.shape[1]:
            raise DataError(f"fid: reference statistics are {mu_r.shape[0]}-d, generated features {g.shape[1]}-d")
        n_ref, factor_r = int(ref_stats["n"]), covariance_factor(s_r)
    mu_g, s_g = gaussian_stats(g, device=device)
    value = frechet_distance(mu_r, s_r, mu_g, s_g, factor1=factor_r)
    valid, reason = fd_validity(min(len(g), n_ref), g.shape[1], FD_MIN_ROWS_PER_DIM, "fid",
                                 "the rank-deficiency bias dominates and no bootstrap interval reaches 95% "
                                 "coverage; compare only at equal N")
    mv = MetricValue(value, False, None, len(g), n_ref, valid=valid, reason=reason)
    if ref_stats is None:
        stat, n_r = TwoSampleFD(g, r, device=device), n_ref
    else:
        one = BootstrapFD(_as64(g, device), mu_r, s_r, factor_r)
        stat, n_r = (lambda ig, ir: one(ig)), None
    iv = two_sample_bootstrap(stat, len(g), n_r, value, n_boot=n_bootstrap, seed=seed, alpha=alpha,
                              method="basic" if valid else "centred")
    if valid and iv is not None:
        bias = half_sample_bias(stat, len(g), n_r, value, seed=seed)
        if np.isfinite(bias):  # halves of fewer than 2 rows have no covariance: keep the bootstrap's estimate
            iv = _with_half_sample_bias(iv, bias)
    if not valid:
        # no interval for the population FID (none covers); the replicates' spread about the value still
        # measures the noise of FID at this N, which is what comparisons at equal N (`cxrbench check`) need
        if iv is not None:
            mv.extra["ci_equal_n"] = [max(iv.lo, 0.0), iv.hi]
        return mv
    return with_interval(mv, iv, bias_corrected=True, lower=0.0)


def half_sample_bias(stat, n_gen: int, n_ref: int | None, value: float, *, seed: int = 0,
                     k: int = HALF_SAMPLES) -> float:
    """FD's bias at the sizes it was computed at, from ``k`` FDs of half subsets drawn without replacement.

    To first order the bias is ``b_g / n_g + b_r / n_r`` (the sampling noise of the two means and covariances),
    so halving both sizes doubles it: ``mean(FD_half) - FD`` estimates it (a two-point version of the 1/N
    extrapolation of Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them",
    2020). The basic bootstrap's own bias estimate (the replicates' mean minus FD) falls short when the
    features have many effective dimensions: on whitened cxr128 features (about 73) at N = 300 it removed
    about 80% of the bias, and the intervals missed high near the null. ``n_ref`` None: the reference is
    fixed (given as statistics); only the generated set is halved and the reference's bias stays. NaN when a
    half would have fewer than 2 rows.
    """
    rng = np.random.default_rng([seed, 1])  # not the bootstrap's stream: adding this leaves its draws alone
    hg = n_gen // 2
    hr = None if n_ref is None else n_ref // 2
    if hg < 2 or (hr is not None and hr < 2):
        return float("nan")
    halves = [stat(rng.permutation(n_gen)[:hg], None if hr is None else rng.permutation(n_ref)[:hr])
              for _ in range(k)]
    return float(np.mean(halves)) - value


def _with_half_sample_bias(iv, bias: float):
    """The basic interval re-centred: its replicates' spread about their mean, placed on ``FD - bias``
    instead of on the bootstrap's own bias-corrected value ``FD - iv.bias``."""
    shift = iv.bias - bias
    return dataclasses.replace(iv, lo=iv.lo + shift, hi=iv.hi + shift, bias=bias,
                               method=iv.method + ", half-sample bias")


# the registered metric (``cxrbench evaluate``)


class FID(TwoSampleMetric):
    name = "fid"
    version = "1"
    outputs = {"fid": False}
    accepts_reference_stats = True

    def estimate(self, pair: FeaturePair) -> MetricValue:
        st = pair.settings
        kw = dict(n_bootstrap=st.n_bootstrap, seed=st.seed, alpha=st.alpha, device=float64_device(pair.device))
        if pair.ref is None:  # reference given as statistics (`cxrbench stats`)
            return fid(fake=pair.gen, real_stats=pair.ref_stats, **kw)
        return fid(real=pair.ref, fake=pair.gen, **kw)

    def point(self, x, y, pair: FeaturePair) -> float:
        return fid_from_features(x, y)
