import math

import numpy as np
import pytest

from nbhelpers.data.playground import (DATASETS, TASKS, Task, bayes_ceiling, check_dataset,
                                       generate, grid, make_split)

LABEL_NOISE = ("plane", "gaussian", "circle", "xor")
CLASSIFICATION = ("two_gaussians", "spiral", "circle", "xor")
CENTRES = [(-4, 2.5, 1), (0, 2.5, -1), (4, 2.5, 1), (-4, -2.5, -1), (0, -2.5, 1), (4, -2.5, -1)]


def phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_tasks_table():
    assert DATASETS == ("plane", "gaussian", "two_gaussians", "spiral", "circle", "xor")
    assert set(TASKS) == set(DATASETS)
    table = {"plane": (3, 0.2, 1e-2), "gaussian": (30, 0.01, 3e-2), "two_gaussians": (3, 0.5, 3e-2),
             "circle": (30, 0.1, 3e-2), "xor": (30, 0.1, 3e-2), "spiral": (300, 0.2, 3e-2)}
    for name, (epochs, noise, lr) in table.items():
        t = TASKS[name]
        assert (t.name, t.epochs, t.noise, t.lr) == (name, epochs, noise, lr)
        assert t.kind == ("classification" if name in CLASSIFICATION else "regression")
        assert t.n_out == (2 if name in CLASSIFICATION else 1)


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_and_dtypes(name):
    X, y = generate(name, 100, TASKS[name].noise, 0)
    assert X.shape == (100, 2) and X.dtype == np.float32
    assert y.shape == (100,)
    if name in CLASSIFICATION:
        assert y.dtype == np.int64 and set(np.unique(y)) <= {0, 1}
    else:
        assert y.dtype == np.float32
    assert np.isfinite(X).all() and np.isfinite(y).all()


@pytest.mark.parametrize("name", DATASETS)
def test_determinism(name):
    noise = TASKS[name].noise
    X1, y1 = generate(name, 200, noise, 7)
    X2, y2 = generate(name, 200, noise, np.random.default_rng(7))
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    X3, _ = generate(name, 200, noise, 8)
    assert not np.array_equal(X1, X3)


@pytest.mark.parametrize("name", LABEL_NOISE)
def test_label_noise_does_not_move_points(name):
    X0, y0 = generate(name, 1000, 0.0, 3)
    X1, y1 = generate(name, 1000, 0.5, 3)
    np.testing.assert_array_equal(X0, X1)
    assert not np.array_equal(y0, y1)


@pytest.mark.parametrize("name, noise", [("two_gaussians", 0.5), ("spiral", 0.2), ("circle", 0.0)])
def test_exact_class_balance(name, noise):
    _, y = generate(name, 500, noise, 1)
    assert y.sum() == 250


def test_odd_n_is_handled():
    for name in DATASETS:
        X, y = generate(name, 7, TASKS[name].noise, 0)
        assert len(X) == len(y) == 7


def test_xor():
    X, y = generate("xor", 2000, 0.0, 2)
    assert np.abs(X).min() >= 0.3 - 1e-6 and np.abs(X).max() <= 6.3 + 1e-6
    np.testing.assert_array_equal(y, (X[:, 0] * X[:, 1] >= 0).astype(np.int64))
    assert 0.45 < y.mean() < 0.55
    _, y_noisy = generate("xor", 2000, 0.1, 2)
    assert 0.45 < y_noisy.mean() < 0.55


def test_circle():
    X, y = generate("circle", 1000, 0.0, 4)
    r = np.linalg.norm(X, axis=1)
    assert (y[:500] == 1).all() and (y[500:] == 0).all()
    assert r[:500].min() >= 0 and r[:500].max() <= 3 + 1e-5
    assert r[500:].min() >= 4.2 - 1e-5 and r[500:].max() <= 6 + 1e-5
    # label noise flips some inner points near the boundary, never the outer ring at 0.1
    _, y_noisy = generate("circle", 1000, 0.1, 4)
    assert (y_noisy[500:] == 0).all() and 0 < (y_noisy[:500] == 0).sum() < 100


def test_spiral():
    noise = 0.2
    X, y = generate("spiral", 500, noise, 5)
    r = np.linspace(0, 6, 250)
    t = 1.75 * np.linspace(0, 2 * np.pi, 250)
    arms = [np.stack([r * np.sin(t + d), r * np.cos(t + d)], 1) for d in (0.0, np.pi)]
    centres = np.concatenate(arms)
    assert np.abs(X - centres).max() <= noise + 1e-5
    assert np.abs(X - centres).max() > noise / 2  # really jittered
    assert (y[:250] == 1).all() and (y[250:] == 0).all()
    X0, _ = generate("spiral", 500, 0.0, 5)
    np.testing.assert_allclose(X0, centres, atol=1e-5)
    assert np.linalg.norm(X0, axis=1).max() == pytest.approx(6, abs=1e-5)


def test_two_gaussians():
    noise = 0.5
    X, y = generate("two_gaussians", 4000, noise, 6)
    np.testing.assert_allclose(X[y == 1].mean(0), [2, 2], atol=0.15)
    np.testing.assert_allclose(X[y == 0].mean(0), [-2, -2], atol=0.15)
    assert X[y == 1].var(0) == pytest.approx([6 * noise + 0.5] * 2, rel=0.1)


def test_plane():
    noise = 0.2
    X, y = generate("plane", 2000, noise, 7)
    resid = y - X.sum(1) / 12
    assert np.abs(resid).max() <= 2 * 6 * noise / 12 + 1e-5
    assert resid.std() > 0.5 * noise / math.sqrt(6)
    X0, y0 = generate("plane", 100, 0.0, 7)
    np.testing.assert_allclose(y0, X0.sum(1) / 12, atol=1e-6)


def test_gaussian():
    X, y = generate("gaussian", 20000, 0.0, 8)
    X = X.astype(np.float64)
    d2 = np.stack([((X - (cx, cy)) ** 2).sum(1) for cx, cy, _ in CENTRES], 1)
    k = d2.argmin(1)
    signs = np.array([s for *_, s in CENTRES])
    np.testing.assert_allclose(y, signs[k] * (1 - 0.1 * d2.min(1)), atol=1e-5)
    for i, (cx, cy, sign) in enumerate(CENTRES):  # the point nearest each centre
        j = d2[:, i].argmin()
        assert y[j] == pytest.approx(sign, abs=0.01)


def test_validation_errors():
    with pytest.raises(ValueError) as err:
        check_dataset("moons")
    assert "moons" in str(err.value) and all(d in str(err.value) for d in DATASETS)
    assert check_dataset("xor") == "xor"
    for bad in (1, 0, -4, 2.5, True, "10"):
        with pytest.raises(ValueError, match="n must be"):
            generate("xor", bad, 0.1, 0)
    for bad in (-0.1, float("nan"), float("inf"), None):
        with pytest.raises(ValueError, match="noise"):
            generate("xor", 10, bad, 0)
    with pytest.raises(ValueError, match="moons"):
        generate("moons", 10, 0.1, 0)
    with pytest.raises(ValueError):
        make_split("moons")
    with pytest.raises(ValueError):
        bayes_ceiling("moons")


def test_make_split():
    split = make_split("circle")
    assert set(split) == {"x_train", "y_train", "x_val", "y_val", "task"}
    assert split["x_train"].shape == split["x_val"].shape == (500, 2)
    assert split["task"] == TASKS["circle"] and isinstance(split["task"], Task)
    assert not np.array_equal(split["x_train"], split["x_val"])
    # train first, then val, from one Generator seeded with `seed`
    rng = np.random.default_rng(2024)
    np.testing.assert_array_equal(split["x_train"], generate("circle", 500, 0.1, rng)[0])
    np.testing.assert_array_equal(split["x_val"], generate("circle", 500, 0.1, rng)[0])
    again = make_split("circle")
    np.testing.assert_array_equal(split["y_val"], again["y_val"])
    other = make_split("circle", n_train=10, n_val=20, noise=0.0, seed=1)
    assert len(other["x_train"]) == 10 and len(other["y_val"]) == 20
    assert other["task"].noise == 0.0


def test_grid():
    xx, yy, pts = grid(lim=2.0, n=5)
    assert xx.shape == yy.shape == (5, 5) and pts.shape == (25, 2) and pts.dtype == np.float32
    assert pts.min() == -2.0 and pts.max() == 2.0
    np.testing.assert_array_equal(pts[:, 0].reshape(5, 5), xx)
    np.testing.assert_array_equal(pts[:, 1].reshape(5, 5), yy)
    assert grid()[2].shape == (10000, 2)


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0])
def test_bayes_two_gaussians_analytic(noise):
    sigma = math.sqrt(6 * noise + 0.5)
    assert bayes_ceiling("two_gaussians", noise) == pytest.approx(phi(2 * math.sqrt(2) / sigma), abs=0.005)


@pytest.mark.parametrize("name", ["circle", "xor"])
def test_bayes_classification_ceilings(name):
    c = bayes_ceiling(name)
    assert 0.85 < c < 1.0
    assert bayes_ceiling(name, noise=0.0) == 1.0
    assert bayes_ceiling(name, noise=0.5) < c  # more noise, lower ceiling
    assert bayes_ceiling(name, seed=3) == bayes_ceiling(name, seed=3)


def test_bayes_xor_matches_exact_posterior():
    noise = 0.1
    u = np.linspace(-6, 6, 20001)
    u = (u[1:] + u[:-1]) / 2
    x = u + np.where(u >= 0, 0.3, -0.3)
    px = np.clip((x + 6 * noise) / (12 * noise), 0, 1)  # P(x + nx >= 0)
    a = px[(px > 0) & (px < 1)]
    w = len(a) / len(px)  # fraction of coordinates whose sign is uncertain
    p = np.outer(a, a) + np.outer(1 - a, 1 - a)
    exact = (w * w * np.maximum(p, 1 - p).mean() + 2 * w * (1 - w) * np.maximum(a, 1 - a).mean()
             + (1 - w) ** 2)
    assert bayes_ceiling("xor", noise) == pytest.approx(exact, abs=0.003)


def test_bayes_spiral():
    assert bayes_ceiling("spiral", noise=0.0) == 1.0
    c = bayes_ceiling("spiral")
    assert 0.95 < c < 1.0
    assert bayes_ceiling("spiral", noise=0.5) < c


def test_bayes_regression_floors():
    for noise in (0.2, 0.5):
        assert bayes_ceiling("plane", noise) == pytest.approx(2 * (12 * noise) ** 2 / 12 / 144, rel=0.02)
    assert bayes_ceiling("plane", 0.0) == 0.0
    g = bayes_ceiling("gaussian")
    assert 0 < g < 0.05
    assert bayes_ceiling("gaussian", 0.1) > g
