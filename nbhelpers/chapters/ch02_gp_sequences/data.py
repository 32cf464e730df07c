"""Chapter 2 data: pairs of GP series that differ by a constant offset, and the exact GP posterior (the oracle).

Ported from the original's ``data_gen2d(bias='const', kernel='rbf')``. One example has ``n_points`` (400)
**distinct** x values, x ~ U(5, 15), drawn once; about half of the examples have them sorted. One GP draw f
(unit variance, length scale 1) is taken over all of them, two offsets c ~ N(0, 2²) are drawn, each is tiled
n_points / 2 times and the offsets are **randomly permuted over the points**: the two series interleave, each at
its own x values, and no point of one series sits at the x of a point of the other. y = f(x) + c_s (+ N(0, σ_n²)
in the noisy variant). The series **flag** is 1 for the *smaller* offset, so series 1 is always the lower curve.

Examples are stored in the order they were generated (``Pairs``: ``x``, ``s`` flag int64, ``y``: (N, n_points);
``c``: (N, 2) with c[:, 0] the offset of flag 0 and c[:, 1] of flag 1; ``sorted``: (N,)). ``inference_layout``
rearranges them the way the original's inference did: sorted by x, all of series 1, then ``context_p`` series-0
points picked at random among its lowest ``pool`` points, then the rest of series 0 in x order.

Because f and the offsets are Gaussian, any set of points of a pair is jointly Gaussian with covariance
k(x, x') + 4·[same series] + σ_n²·[same point] — except for the flag convention, which orders the offsets
(c0 > c1) and so makes the Gaussian posterior a *near*-oracle: ``order_violation`` measures how near.

One difference from the original, kept on purpose: the original drew f with scikit-learn's
``GaussianProcessRegressor.sample_y``, whose default ``random_state=0`` re-uses the same normal vector for every
example; here every example gets its own draw (the chapter says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import linalg, special

KERNELS = ("rbf", "matern52", "periodic")
X_LO, X_HI = 5.0, 15.0
OFFSET_SD = 2.0
JITTER = 1e-6  # added to the diagonal of noise-free covariances (their dense x grids are numerically singular)


@dataclass(frozen=True, eq=False)
class Pairs:
    """N pairs of two interleaved series: x, flag s (0/1, int64) and y, each (N, n_points); the offsets c (N, 2)
    (c[:, 0] of flag 0, c[:, 1] of flag 1); which examples were generated sorted (N,); the kernel and noise σ_n;
    ``first``: the first predicted index, set by ``inference_layout``."""

    x: np.ndarray
    s: np.ndarray
    y: np.ndarray
    c: np.ndarray
    sorted: np.ndarray
    kernel: str
    noise: float
    first: int | None = None

    def head(self, n: int) -> "Pairs":
        """The first ``n`` pairs."""
        return replace(self, **{k: getattr(self, k)[:n] for k in ("x", "s", "y", "c", "sorted")})


def kernel(name: str, a, b, lengthscale: float = 1.0, period: float = 3.0):
    """Unit-variance stationary kernel matrix k(a_i, b_j) for 1-D inputs: rbf, matern52 or periodic.
    numpy arrays in, numpy out; torch tensors in, torch out (on their device)."""
    if isinstance(a, torch.Tensor):
        xp, d = torch, (a[..., :, None] - b[..., None, :]).abs()
    else:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        xp, d = np, np.abs(a[..., :, None] - b[..., None, :])
    if name == "rbf":
        return xp.exp(-0.5 * (d / lengthscale) ** 2)
    if name == "matern52":
        r = math.sqrt(5.0) * d / lengthscale
        return (1.0 + r + r * r / 3.0) * xp.exp(-r)
    if name == "periodic":
        return xp.exp(-2.0 * xp.sin(np.pi * d / period) ** 2 / lengthscale ** 2)
    raise ValueError(f"kernel={name!r} is not allowed; choose one of {', '.join(KERNELS)}")


def pair_cov(x, s, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER) -> np.ndarray:
    """Joint covariance of the points (x, s) of one pair (or a batch: leading dims broadcast)."""
    x, s = np.asarray(x, np.float64), np.asarray(s)
    K = kernel(kernel_name, x, x) + OFFSET_SD ** 2 * (s[..., :, None] == s[..., None, :])
    return K + (noise ** 2 + jitter) * np.eye(x.shape[-1])


def make_pairs(n_examples: int, n_points: int = 400, kernel_name: str = "rbf", noise: float = 0.0,
               sorted_frac: float = 0.5, seed: int = 0, device="cpu") -> Pairs:
    """Draw ``n_examples`` pairs of ``n_points`` distinct points (n_points / 2 per series), in generation order.

    sorted_frac: the fraction of examples whose x values are sorted (the original: half); the rest keep a random
    order. device: where the batched float64 Cholesky factorisations run (all random numbers come from one numpy
    generator, so the pairs do not depend on it beyond rounding).
    """
    if n_points < 4 or n_points % 2:
        raise ValueError(f"n_points={n_points} must be an even number >= 4 (two series of n_points/2)")
    if kernel_name not in KERNELS:
        raise ValueError(f"kernel={kernel_name!r} is not allowed; choose one of {', '.join(KERNELS)}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(X_LO, X_HI, size=(n_examples, n_points))
    is_sorted = rng.random(n_examples) < sorted_frac
    x[is_sorted] = np.sort(x[is_sorted], axis=1)
    f = np.empty((n_examples, n_points))
    chunk = 128
    for i in range(0, n_examples, chunk):  # batched Cholesky draws of f on each example's own x values
        xc = torch.from_numpy(x[i:i + chunk]).to(device)
        K = kernel(kernel_name, xc, xc) + JITTER * torch.eye(n_points, dtype=xc.dtype, device=device)
        z = torch.from_numpy(rng.standard_normal((len(xc), n_points, 1))).to(device)
        f[i:i + chunk] = (torch.linalg.cholesky(K) @ z)[..., 0].cpu().numpy()
    raw = rng.normal(0.0, OFFSET_SD, size=(n_examples, 2))
    c = np.stack([raw.max(1), raw.min(1)], axis=1)  # flag 0 = larger offset, flag 1 = smaller (lower curve)
    # the offsets permuted over the points: n flags of each kind in a random order per example
    s = (np.argsort(rng.random((n_examples, n_points)), axis=1) < n_points // 2).astype(np.int64)
    y = f + np.where(s == 1, c[:, 1:2], c[:, 0:1])
    if noise:
        y = y + rng.normal(0.0, noise, size=y.shape)
    return Pairs(x, s, y, c, is_sorted, kernel_name, float(noise))


def _take(pairs: Pairs, idx: np.ndarray, **changes) -> Pairs:
    return replace(pairs, **{k: np.take_along_axis(getattr(pairs, k), idx, axis=1) for k in ("x", "s", "y")},
                   **changes)


def sort_by_x(pairs: Pairs) -> Pairs:
    """A copy with every example's points sorted by x (both series interleaved)."""
    return _take(pairs, np.argsort(pairs.x, axis=1, kind="stable"), sorted=np.ones(len(pairs.x), bool))


def inference_layout(pairs: Pairs, context_p: int, pool: int, seed: int = 0) -> Pairs:
    """The original's inference layout (``consec=False``): sorted by x, all of series 1, then ``context_p`` points
    of series 0 picked at random among its ``pool`` lowest, then the rest of series 0 in x order.

    The first predicted point is at index n_points / 2 + context_p (``first``, set on the result).
    """
    n = pairs.x.shape[1] // 2
    if not 1 <= context_p <= pool <= n:
        raise ValueError(f"context_p={context_p} and pool={pool} must satisfy 1 <= context_p <= pool <= "
                         f"n_points / 2 = {n}")
    srt = sort_by_x(pairs)
    rng = np.random.default_rng(seed)
    rank0 = np.cumsum(srt.s == 0, axis=1) - 1               # rank of a series-0 point among series 0
    picked = np.zeros(srt.s.shape, bool)
    for i in range(len(picked)):
        picked[i] = (srt.s[i] == 0) & np.isin(rank0[i], rng.choice(pool, size=context_p, replace=False))
    T = srt.x.shape[1]
    key = np.where(srt.s == 1, 0, np.where(picked, 1, 2)) * T + np.arange(T)  # block, then x order
    return _take(srt, np.argsort(key, axis=1), first=n + context_p)


def inference_pairs(n: int, n_points: int, context_p: int, pool: int, seed: int, kernel_name: str = "rbf",
                    noise: float = 0.0) -> Pairs:
    """``n`` pairs drawn (on the CPU) and put in the inference layout, both with ``seed``."""
    return inference_layout(make_pairs(n, n_points, kernel_name, noise, seed=seed), context_p, pool, seed=seed)


def posterior(x, s, y, observed, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER):
    """Exact Gaussian posterior of the unobserved points of one pair given the observed ones.

    x, s, y: (n,) one pair; observed: boolean mask (n,). Returns (mean, cov) over the points where ~observed,
    for *noisy* observations of the targets (the predictive distribution of y, σ_n² included).
    """
    o = np.asarray(observed, bool)
    K = pair_cov(x, s, kernel_name, noise, jitter)
    L = linalg.cho_factor(K[np.ix_(o, o)], lower=True)
    Kto = K[np.ix_(~o, o)]
    mean = Kto @ linalg.cho_solve(L, np.asarray(y, np.float64)[o])
    cov = K[np.ix_(~o, ~o)] - Kto @ linalg.cho_solve(L, Kto.T)
    return mean, cov


def log_likelihood(x, s, y, observed, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER) -> float:
    """log p(y_targets | y_observed) under the oracle, summed over the targets (nats)."""
    mean, cov = posterior(x, s, y, observed, kernel_name, noise, jitter)
    r = np.asarray(y, np.float64)[~np.asarray(observed, bool)] - mean
    L = np.linalg.cholesky(cov)
    z = linalg.solve_triangular(L, r, lower=True)
    return float(-0.5 * z @ z - np.log(np.diag(L)).sum() - 0.5 * len(r) * math.log(2 * math.pi))


def order_violation(x, s, y, observed, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER):
    """How far the Gaussian posterior is from the true one, which also knows c0 > c1 (the flag convention).

    Returns (p, bound): p = P(c0 < c1 | observed) under the Gaussian posterior, and bound = -log(1 - p), an upper
    bound on how many nats the exact (order-aware) posterior can gain on log p(y_targets | observed).
    """
    observed = np.asarray(observed, bool)
    K = pair_cov(x, s, kernel_name, noise, jitter)[np.ix_(observed, observed)]
    so = np.asarray(s)[observed]
    v = OFFSET_SD ** 2 * ((so == 0).astype(float) - (so == 1).astype(float))  # cov(c0 - c1, y_obs)
    L = linalg.cho_factor(K, lower=True)
    m = v @ linalg.cho_solve(L, np.asarray(y, np.float64)[observed])
    var = max(2 * OFFSET_SD ** 2 - v @ linalg.cho_solve(L, v), 1e-300)
    p = float(special.ndtr(-m / math.sqrt(var)))
    return p, float(-math.log1p(-min(p, 1 - 1e-16)))
