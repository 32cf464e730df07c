"""Chapter 2 data: pairs of GP series that differ by a constant offset, and the exact GP posterior (the oracle).

A *pair* is one draw f ~ GP(0, k) over x ~ U(5, 15) plus two offsets c0, c1 ~ N(0, 2²): series s is
y = f(x) + c_s (+ N(0, σ_n²) observation noise in the noisy variant). Both series share the same x values. The
original's convention: the **flag** of a series is 1 for the *smaller* offset, so series 1 is always the lower curve.

Every example is stored in the *inference layout* of the original: all of series 1 (flag 1) first, then series 0,
each block in the example's own x order (sorted for half of the examples). Arrays are (N, 2n): ``x``, ``s`` (flag,
int64) and ``y``; ``c`` (N, 2) holds the offsets (c[:, 0] for flag 0, c[:, 1] for flag 1).

Because f and the offsets are Gaussian, any set of points of a pair is jointly Gaussian with covariance
k(x, x') + 4·[same series] + σ_n²·[same point] — except for the flag convention, which orders the offsets
(c0 > c1) and so makes the Gaussian posterior a *near*-oracle: ``order_violation`` measures how near.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg, special

KERNELS = ("rbf", "matern52", "periodic")
X_LO, X_HI = 5.0, 15.0
OFFSET_SD = 2.0
JITTER = 1e-6  # added to the diagonal of noise-free covariances (their dense x grids are numerically singular)


def kernel(name: str, a, b, lengthscale: float = 1.0, period: float = 3.0) -> np.ndarray:
    """Unit-variance stationary kernel matrix k(a_i, b_j) for 1-D inputs: rbf, matern52 or periodic."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a[..., :, None] - b[..., None, :])
    if name == "rbf":
        return np.exp(-0.5 * (d / lengthscale) ** 2)
    if name == "matern52":
        r = math.sqrt(5.0) * d / lengthscale
        return (1.0 + r + r * r / 3.0) * np.exp(-r)
    if name == "periodic":
        return np.exp(-2.0 * np.sin(np.pi * d / period) ** 2 / lengthscale ** 2)
    raise ValueError(f"kernel={name!r} is not allowed; choose one of {', '.join(KERNELS)}")


def pair_cov(x, s, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER) -> np.ndarray:
    """Joint covariance of the points (x, s) of one pair (or a batch: leading dims broadcast)."""
    x, s = np.asarray(x, np.float64), np.asarray(s)
    K = kernel(kernel_name, x, x) + OFFSET_SD ** 2 * (s[..., :, None] == s[..., None, :])
    n = x.shape[-1]
    return K + (noise ** 2 + jitter) * np.eye(n)


def make_pairs(n_examples: int, n_points: int = 400, kernel_name: str = "rbf", noise: float = 0.0,
               sorted_frac: float = 0.5, seed: int = 0) -> dict:
    """Draw ``n_examples`` pairs of ``n_points`` points (n_points / 2 per series) in the inference layout.

    sorted_frac: the fraction of examples whose x values are sorted (the original: half); the rest keep a random
    order. Returns {"x", "s", "y" (N, n_points), "c" (N, 2), "sorted" (N,) bool, "kernel", "noise"}.
    """
    if n_points < 4 or n_points % 2:
        raise ValueError(f"n_points={n_points} must be an even number >= 4 (two series of n_points/2)")
    if kernel_name not in KERNELS:
        raise ValueError(f"kernel={kernel_name!r} is not allowed; choose one of {', '.join(KERNELS)}")
    rng = np.random.default_rng(seed)
    n = n_points // 2
    xs = rng.uniform(X_LO, X_HI, size=(n_examples, n))
    is_sorted = rng.random(n_examples) < sorted_frac
    xs[is_sorted] = np.sort(xs[is_sorted], axis=1)
    f = np.empty((n_examples, n))
    chunk = 256
    for i in range(0, n_examples, chunk):  # batched Cholesky draws of f on each example's own grid
        xc = xs[i:i + chunk]
        L = np.linalg.cholesky(kernel(kernel_name, xc, xc) + JITTER * np.eye(n))
        f[i:i + chunk] = (L @ rng.standard_normal((len(xc), n, 1)))[..., 0]
    raw = rng.normal(0.0, OFFSET_SD, size=(n_examples, 2))
    c = np.stack([raw.max(1), raw.min(1)], axis=1)  # flag 0 = larger offset, flag 1 = smaller (lower curve)
    y1, y0 = f + c[:, 1:2], f + c[:, 0:1]
    x = np.concatenate([xs, xs], axis=1)
    s = np.concatenate([np.ones((n_examples, n), np.int64), np.zeros((n_examples, n), np.int64)], axis=1)
    y = np.concatenate([y1, y0], axis=1)
    if noise:
        y = y + rng.normal(0.0, noise, size=y.shape)
    return {"x": x, "s": s, "y": y, "c": c, "sorted": is_sorted, "kernel": kernel_name, "noise": float(noise)}


def sort_by_x(pairs: dict) -> dict:
    """A copy with each series' points sorted by x (the layout used for rollouts and figures)."""
    n = pairs["x"].shape[1] // 2
    order = np.argsort(pairs["x"][:, :n], axis=1)
    idx = np.concatenate([order, order + n], axis=1)
    out = dict(pairs)
    for k in ("x", "s", "y"):
        out[k] = np.take_along_axis(pairs[k], idx, axis=1)
    out["sorted"] = np.ones(len(idx), bool)
    return out


def posterior(x, s, y, observed, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER):
    """Exact Gaussian posterior of the unobserved points of one pair given the observed ones.

    x, s, y: (n,) one pair; observed: boolean mask (n,). Returns (mean, cov) over the points where ~observed,
    for *noisy* observations of the targets (the predictive distribution of y, σ_n² included).
    """
    observed = np.asarray(observed, bool)
    K = pair_cov(x, s, kernel_name, noise, jitter)
    o, t = observed, ~observed
    L = linalg.cho_factor(K[np.ix_(o, o)], lower=True)
    Kto = K[np.ix_(t, o)]
    mean = Kto @ linalg.cho_solve(L, np.asarray(y, np.float64)[o])
    cov = K[np.ix_(t, t)] - Kto @ linalg.cho_solve(L, Kto.T)
    return mean, cov


def log_likelihood(x, s, y, observed, kernel_name: str = "rbf", noise: float = 0.0, jitter: float = JITTER) -> float:
    """log p(y_targets | y_observed) under the oracle, summed over the targets (nats)."""
    mean, cov = posterior(x, s, y, observed, kernel_name, noise, jitter)
    r = np.asarray(y, np.float64)[~np.asarray(observed, bool)] - mean
    L = np.linalg.cholesky(cov)
    z = linalg.solve_triangular(L, r, lower=True)
    return float(-0.5 * z @ z - np.log(np.diag(L)).sum() - 0.5 * len(r) * math.log(2 * math.pi))


def sequential_stats(x, s, y, first_target: int, kernel_name: str = "rbf", noise: float = 0.0,
                     jitter: float = JITTER):
    """The oracle's one-step-ahead predictive (mean, sd) at every position t >= first_target given points < t.

    By the chain rule, the mean over targets of log N(y_t | mean_t, sd_t) equals
    ``log_likelihood(...) / n_targets`` — the per-point number models are compared with.
    """
    K = pair_cov(x, s, kernel_name, noise, jitter)
    L = np.linalg.cholesky(K)  # Cholesky of the joint: row t gives the conditional of y_t given y_<t
    y = np.asarray(y, np.float64)
    z = linalg.solve_triangular(L, y, lower=True)
    sd = np.diag(L)
    mean = y - sd * z  # y_t = mean_t + L_tt z_t
    return mean[first_target:], sd[first_target:]


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
