"""Two moons (scikit-learn's ``make_moons``) as float32 tensors-to-be, and the plot grid around them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import make_moons


@dataclass(frozen=True)
class Moons:
    """The chapter's data (``experiment.load``): training and held-out moons, and the plot grid (``grid``)."""

    X: np.ndarray       # (n, 2) float32 training points
    y: np.ndarray       # (n,) float32 labels in {0, 1}
    X_test: np.ndarray  # the held-out draw
    y_test: np.ndarray
    xx: np.ndarray      # (grid_n, grid_n) grid coordinates
    yy: np.ndarray
    grid: np.ndarray    # (grid_n * grid_n, 2) float32: the grid's points
    extent: tuple       # (x0, x1, y0, y1)


def make(n: int = 100, noise: float = 0.1, random_state: int = 42):
    """X float32 (n, 2) and y float32 labels in {0, 1} (float for BCE-with-logits).

    The defaults are the original experiment's training set. Held-out moons: the same call with another
    ``random_state`` (an independent draw of the same distribution).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    X, y = make_moons(n_samples=int(n), noise=float(noise), random_state=random_state)
    return X.astype(np.float32), y.astype(np.float32)


def grid(X, n: int = 200, margin: float = 0.5):
    """An n x n grid spanning the data ±margin: xx, yy (n, n), points float32 (n * n, 2), extent (x0, x1, y0, y1)."""
    X = np.asarray(X)
    lo, hi = X.min(0) - margin, X.max(0) + margin
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], n, dtype=np.float32), np.linspace(lo[1], hi[1], n, dtype=np.float32))
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1), (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
