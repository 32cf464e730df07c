"""NumPy ports of the TensorFlow-playground 2-D datasets (radius 6).

"Label noise" offsets a point by ``U(-6, 6) * noise`` per coordinate only to compute its label; the stored point
stays clean. Rows come grouped by class (the +1 part first) for the two-part generators, so shuffle before batching."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

__all__ = ["DATASETS", "Task", "TASKS", "Split", "check_dataset", "generate", "make_split", "bayes_ceiling", "grid"]

RADIUS = 6.0
DATASETS = ("plane", "gaussian", "two_gaussians", "spiral", "circle", "xor")
_CHUNK = 2048            # points per Monte-Carlo chunk (bounds memory)
_SPIRAL_ARM_POINTS = 1000  # fine parametrisation of each arm for the spiral posterior


@dataclass(frozen=True)
class Task:
    """A dataset with its training recipe."""
    name: str
    kind: str  # "regression" | "classification"
    noise: float
    epochs: int
    lr: float

    @property
    def n_out(self) -> int:
        return 1 if self.kind == "regression" else 2


TASKS = {t.name: t for t in (
    Task("plane", "regression", 0.2, 3, 1e-2),
    Task("gaussian", "regression", 0.01, 30, 3e-2),
    Task("two_gaussians", "classification", 0.5, 3, 3e-2),
    Task("spiral", "classification", 0.2, 300, 3e-2),
    Task("circle", "classification", 0.1, 30, 3e-2),
    Task("xor", "classification", 0.1, 30, 3e-2),
)}


def check_dataset(name) -> str:
    """Return ``name`` if it is a known dataset, else raise ValueError."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    return name


def _check_int(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_noise(noise) -> float:
    try:
        ok = math.isfinite(noise) and noise >= 0
    except TypeError:
        ok = False
    if isinstance(noise, bool) or not ok:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    return float(noise)


def _halves(n: int) -> tuple[int, int]:
    """Sizes of the +1 and -1 parts (the +1 part takes any odd point)."""
    return n - n // 2, n // 2


# --- clean positions and labelling rules (labels are +-1, targets floats) ---

def _uniform_xy(n, rng):
    return rng.uniform(-RADIUS, RADIUS, size=(n, 2))


def _circle_xy(n, rng):
    n_in, n_out = _halves(n)
    r = np.concatenate([rng.uniform(0, RADIUS / 2, n_in), rng.uniform(0.7 * RADIUS, RADIUS, n_out)])
    a = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.sin(a), r * np.cos(a)], axis=1)


def _xor_xy(n, rng):
    X = _uniform_xy(n, rng)
    return X + np.where(X >= 0, 0.3, -0.3)


_GAUSS_CENTRES = np.array([[-4, 2.5], [0, 2.5], [4, 2.5], [-4, -2.5], [0, -2.5], [4, -2.5]])
_GAUSS_SIGNS = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])


def _gaussian_target(P):
    """sign * (1 - 0.1 d^2) of the nearest centre."""
    best_d2, target = np.full(P.shape[:-1], np.inf), np.zeros(P.shape[:-1])
    for (cx, cy), sign in zip(_GAUSS_CENTRES, _GAUSS_SIGNS):
        d2 = (P[..., 0] - cx) ** 2 + (P[..., 1] - cy) ** 2
        closer = d2 < best_d2
        best_d2 = np.where(closer, d2, best_d2)
        target = np.where(closer, sign * (1 - 0.1 * d2), target)
    return target


# name -> (sampler of clean positions, target of a label-noised point)
_LABEL_NOISE = {
    "plane": (_uniform_xy, lambda P: (P[..., 0] + P[..., 1]) / (2 * RADIUS)),
    "gaussian": (_uniform_xy, _gaussian_target),
    "circle": (_circle_xy, lambda P: np.where((P ** 2).sum(-1) < (RADIUS / 2) ** 2, 1, -1)),
    "xor": (_xor_xy, lambda P: np.where(P[..., 0] * P[..., 1] >= 0, 1, -1)),
}


# --- generators: (n, noise, rng) -> (X float64 (n, 2), y as +-1 labels or targets) ---

def _with_label_noise(sample, target, n, noise, rng):
    X = sample(n, rng)
    return X, target(X + rng.uniform(-RADIUS, RADIUS, size=X.shape) * noise)


def _two_gaussians(n, noise, rng):
    n_pos, n_neg = _halves(n)
    std = math.sqrt(6 * noise + 0.5)
    X = np.concatenate([rng.normal(2, std, (n_pos, 2)), rng.normal(-2, std, (n_neg, 2))])
    return X, np.repeat([1, -1], [n_pos, n_neg])


def _spiral_arm(m, delta):
    r = np.linspace(0, RADIUS, m)
    t = 1.75 * np.linspace(0, 2 * np.pi, m) + delta
    return np.stack([r * np.sin(t), r * np.cos(t)], axis=1)


def _spiral(n, noise, rng):
    n_pos, n_neg = _halves(n)
    X = np.concatenate([_spiral_arm(n_pos, 0.0), _spiral_arm(n_neg, np.pi)])
    return X + rng.uniform(-1, 1, size=X.shape) * noise, np.repeat([1, -1], [n_pos, n_neg])


_GENERATORS = {
    **{name: partial(_with_label_noise, *fns) for name, fns in _LABEL_NOISE.items()},
    "two_gaussians": _two_gaussians,
    "spiral": _spiral,
}


def generate(name, n, noise, rng_or_seed):
    """Draw ``n`` points: X float32 (n, 2); y float32 targets or int64 {0, 1} labels.

    ``rng_or_seed`` is an int seed or a ``np.random.Generator`` (advanced in place)."""
    check_dataset(name)
    n, noise = _check_int(n, "n", 2), _check_noise(noise)
    X, y = _GENERATORS[name](n, noise, np.random.default_rng(rng_or_seed))
    return X.astype(np.float32), y.astype(np.float32) if TASKS[name].kind == "regression" else (y > 0).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Split:
    """One dataset's training and validation draws (arrays as ``generate`` returns them) and its task."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: Task


def make_split(name, n_train=500, n_val=500, noise=None, seed=2024) -> Split:
    """Independent train and validation draws from one Generator (train first).

    ``task`` is ``TASKS[name]`` with ``noise`` set to the noise actually used."""
    task = TASKS[check_dataset(name)]
    noise = task.noise if noise is None else _check_noise(noise)
    rng = np.random.default_rng(seed)
    return Split(*generate(name, n_train, noise, rng), *generate(name, n_val, noise, rng), replace(task, noise=noise))


# --- Bayes ceilings ---

def _label_noise_ceiling(name, noise, n, mc, rng):
    """Mean over x of max(p, 1-p) (classification) or Var(target | x) (regression)."""
    sample, target = _LABEL_NOISE[name]
    X = sample(n, rng)
    total = 0.0
    for start in range(0, n, _CHUNK):
        x = X[start:start + _CHUNK, None, :]
        t = target(x + rng.uniform(-RADIUS, RADIUS, size=(len(x), mc, 2)) * noise)
        if TASKS[name].kind == "regression":
            total += t.var(axis=1, ddof=1).sum()
        else:
            p = (t > 0).mean(axis=1)
            total += np.maximum(p, 1 - p).sum()
    return total / n


def _two_gaussians_ceiling(noise, n, rng):
    X, _ = _two_gaussians(n, noise, rng)
    llr = 2 * X.sum(1) * 2 / (6 * noise + 0.5)  # log N(x;(2,2)) - log N(x;(-2,-2))
    return float(np.mean(1 / (1 + np.exp(-np.abs(llr)))))


def _spiral_ceiling(noise, n, rng):
    """Posterior from counts of +1 / -1 jitter boxes (half-width noise) covering x."""
    m = _SPIRAL_ARM_POINTS
    centres = np.concatenate([_spiral_arm(m, 0.0), _spiral_arm(m, np.pi)])
    X = centres[rng.integers(0, 2 * m, n)] + rng.uniform(-1, 1, size=(n, 2)) * noise
    # Boxes whose x-range covers x are a contiguous run of the centres sorted by x.
    order = np.argsort(centres[:, 0])
    cx, cy, positive = centres[order, 0], centres[order, 1], order < m
    lo = np.searchsorted(cx, X[:, 0] - noise, "left")
    hi = np.searchsorted(cx, X[:, 0] + noise, "right")
    idx = lo[:, None] + np.arange((hi - lo).max())
    in_run, idx = idx < hi[:, None], np.minimum(idx, 2 * m - 1)
    covers = in_run & (np.abs(cy[idx] - X[:, 1:]) <= noise)
    pos, total = (covers & positive[idx]).sum(1), covers.sum(1)
    return float(np.mean(np.maximum(pos, total - pos) / total))


def bayes_ceiling(name, noise=None, n=20000, mc=256, seed=0) -> float:
    """Best achievable score of the noisy generator, by Monte-Carlo over ``n`` points.

    Classification: Bayes-optimal accuracy E_x[max(p(+1|x), 1 - p(+1|x))].
    Regression: the irreducible MSE floor E_x[Var(target | x)].
    ``mc`` label-noise draws per point are used for plane, gaussian, circle and xor.
    """
    task = TASKS[check_dataset(name)]
    noise = task.noise if noise is None else _check_noise(noise)
    n, mc = _check_int(n, "n", 2), _check_int(mc, "mc", 2)
    rng = np.random.default_rng(seed)
    if name == "two_gaussians":
        return _two_gaussians_ceiling(noise, n, rng)
    if noise == 0:  # labels / targets are then a function of the stored point
        return 0.0 if task.kind == "regression" else 1.0
    if name == "spiral":
        return _spiral_ceiling(noise, n, rng)
    return float(_label_noise_ceiling(name, noise, n, mc, rng))


def grid(lim=6.5, n=100):
    """Square evaluation grid: xx, yy (n, n) and points float32 (n * n, 2)."""
    ticks = np.linspace(-lim, lim, n, dtype=np.float32)
    xx, yy = np.meshgrid(ticks, ticks)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)
