"""Chapter 1 (notebooks/01_toy_attention.ipynb): the playground data generators and the toy models."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.chapters.ch01_toy_attention import models
from nbhelpers.chapters.ch01_toy_attention.data import (DATASETS, TASKS, Split, Task, bayes_ceiling, check_dataset,
                                                        generate, grid, make_split)
from nbhelpers.train import Run, count_params

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
    assert isinstance(split, Split)
    assert split.x_train.shape == split.x_val.shape == (500, 2)
    assert split.task == TASKS["circle"] and isinstance(split.task, Task)
    assert not np.array_equal(split.x_train, split.x_val)
    # train first, then val, from one Generator seeded with `seed`
    rng = np.random.default_rng(2024)
    np.testing.assert_array_equal(split.x_train, generate("circle", 500, 0.1, rng)[0])
    np.testing.assert_array_equal(split.x_val, generate("circle", 500, 0.1, rng)[0])
    again = make_split("circle")
    np.testing.assert_array_equal(split.y_val, again.y_val)
    other = make_split("circle", n_train=10, n_val=20, noise=0.0, seed=1)
    assert len(other.x_train) == 10 and len(other.y_val) == 20
    assert other.task.noise == 0.0


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


@pytest.mark.parametrize("name, n_out, expected", [
    ("heads", 1, 33), ("mlp", 1, 105), ("relu_mlp", 1, 33), ("heads", 2, 42), ("mlp", 2, 114), ("relu_mlp", 2, 42),
])
def test_parameter_counts(name, n_out, expected):
    assert count_params(models.build(name, n_out, n_embd=8)) == expected


@pytest.mark.parametrize("name", models.MODELS)
def test_output_and_hidden_shapes(name):
    model = models.build(name, 2)
    x = torch.randn(7, 2)
    assert model(x).shape == (7, 2)
    for h in model.hidden(x).values():
        assert h.shape[0] == 7 and h.ndim == 2


def test_heads_rejects_indivisible_embedding():
    with pytest.raises(ValueError, match="n_embd .*n_head"):
        models.Heads(n_embd=8, n_head=3)


def test_heads_attention_is_a_softmax_over_slices():
    model = models.Heads(n_embd=8, n_head=4)
    att = model.attention(torch.randn(5, 2))
    assert att.shape == (5, 4, 4)
    torch.testing.assert_close(att.sum(-1), torch.ones(5, 4))
    # no projections: Q = K = V = the slice, so the forward equals attention @ slices by hand
    x = torch.randn(3, 2)
    t = model.embed(x).view(3, 4, 2)
    mixed = (torch.softmax(t @ t.transpose(1, 2) / 2 ** 0.5, -1) @ t).flatten(1)
    torch.testing.assert_close(model(x), model.out(mixed))


def test_init_is_small_normal_with_zero_bias():
    torch.manual_seed(0)
    m = models.Heads(n_embd=512, n_head=8)
    assert abs(m.embed.weight.std().item() - 0.02) < 0.003 and m.embed.bias.abs().max() == 0


def test_unknown_model_name():
    with pytest.raises(ValueError, match="heads, mlp, relu_mlp"):
        models.build("transformer", 1)


# ---------------------------------------------------------------- chapter 1 experiment helpers (experiment.py)

import pandas as pd  # noqa: E402

from nbhelpers.chapters.ch01_toy_attention import data as pg  # noqa: E402
from nbhelpers.chapters.ch01_toy_attention import experiment as ch  # noqa: E402


def _small_split(name="xor", n=96):
    return pg.make_split(name, n_train=n, n_val=n)


def test_stacked_heads_trains_each_seed_exactly_as_train_one():
    split = _small_split()
    stack = ch.train_heads_stack(split, [3, 4], n_embd=8, n_head=2, epochs=3)
    for i, seed in enumerate((3, 4)):
        run = ch.train_one(split, "heads", seed, epochs=3, n_embd=8, n_head=2)
        assert isinstance(run, Run) and (run.label, run.dataset, run.seed, run.params) == ("heads", "xor", seed, 42)
        assert stack["metric"][i] == pytest.approx(run.metric, abs=1e-6)
        xt, yt, xv, yv = ch.tensors(split)
        with torch.no_grad():
            full = float(torch.nn.functional.cross_entropy(run.model(xv), yv))
            # 96 points = one batch of 64 and one of 32: the original's batch mean differs from the full mean
            halves = [float(torch.nn.functional.cross_entropy(run.model(xv[a:b]), yv[a:b]))
                      for a, b in ((0, 64), (64, 96))]
        assert stack["val_loss"][i] == pytest.approx(np.mean(halves), rel=1e-4)
        assert np.mean(halves) != pytest.approx(full, rel=1e-6)


def test_validate_refuses_indivisible_sizes_and_an_empty_ceiling_grid():
    ok = {"n_embd": 8, "n_head": 4, "ceiling_widths": [8], "ceiling_heads": [2], "ceiling_lrs": [0.03],
          "ceiling_epochs": [1]}
    ch._validate(ok)
    with pytest.raises(ValueError, match="n_embd .*n_head"):
        ch._validate({**ok, "n_head": 3})
    with pytest.raises(ValueError, match=r"ceiling_widths=\[4\] and ceiling_heads=\[8\] allow no Heads configuration"):
        ch._validate({**ok, "ceiling_widths": [4], "ceiling_heads": [8]})


def test_original_sizes_have_the_parameter_counts_its_logs_printed():
    # the original printed "number of parameters: 0.000082 M" (heads8_e16, heads4_e16) and 0.000022 M (heads2_e4)
    counts = {d: ch.heads_params(e, h) for d, (h, e) in ch.ORIGINAL_SIZE.items()}
    assert counts["spiral"] == counts["xor"] == counts["two_gaussians"] == 82 and counts["circle"] == 22
    assert ch.heads_params(8, 4, n_out=1) == 33


def test_logged_verdict_flips_with_the_numbers():
    assert ch.logged_verdict([0.05, 0.06, 0.04], 0.05).startswith("consistent")
    assert ch.logged_verdict([0.15, 0.16, 0.17], 0.05).startswith("ours higher")
    assert ch.logged_verdict([0.01, 0.012, 0.011], 0.05).startswith("ours lower")
    assert ch.logged_verdict([0.05], 0.05) == "cannot be judged with one seed"
    assert ch.logged_verdict([0.05, 0.06], None) == "no logged number"


def test_reach_word_flips_at_the_tolerance():
    assert ch.reach_word(ch.reach([98.5, 98.7], 99.0, 1.0)).startswith("reaches")
    assert ch.reach_word(ch.reach([97.5, 97.9], 99.0, 1.0)).startswith("falls short")
    assert ch.reach_word(ch.reach([97.5, 97.9], 99.0, 2.0)).startswith("reaches")
    assert ch.reach([99.5], 99.0, 1.0)["ok"]          # above the ceiling on a finite set still reaches it


def test_ceiling_grid_keeps_valid_configs_within_the_parameter_budget():
    grid = ch.ceiling_grid([4, 8, 32, 64], [2, 3, 8], [0.03], [1, 2])
    assert grid and all(c.n_embd % c.n_head == 0 and c.n_head <= c.n_embd for c in grid)
    assert all(ch.heads_params(c.n_embd, c.n_head) <= ch.MAX_PARAMS for c in grid)
    assert not any(c.n_embd == 64 for c in grid) and not any(c.n_head == 3 for c in grid)
    assert not any(c.n_embd == 4 and c.n_head == 8 for c in grid)


def test_best_config_is_chosen_on_validation_and_judged_on_test():
    study = pd.DataFrame([
        {"dataset": "circle", "config": "a", "params": 22, "val": [97.0, 97.2], "test": [95.0, 95.2]},
        {"dataset": "circle", "config": "b", "params": 82, "val": [96.0, 96.2], "test": [97.0, 97.2]},
        {"dataset": "circle", "config": "c", "params": 322, "val": [99.0, 99.2], "test": [99.0, 99.2]},
    ])
    best = ch.best_configs(study, {"circle": 0.97}).iloc[0]
    assert best["best config"] == "a"                 # best validation within the budget (c is over it)
    assert not best.ok and best.verdict.startswith("falls short")   # judged on test: 95.1 vs 97.0
    study.loc[0, "test"] = [96.5, 96.7]
    assert ch.best_configs(study, {"circle": 0.97}).iloc[0].ok


def test_ceiling_study_runs_on_a_tiny_grid():
    splits = {"circle": _small_split("circle", 64), "plane": _small_split("plane", 64)}
    configs = ch.ceiling_grid([4], [2], [0.03], [1])
    study = ch.ceiling_study(splits, [0, 1], configs, epochs_scale=0.05, n_test=100, progress=False)
    assert list(study.dataset) == ["circle"] and len(study.val[0]) == len(study.test[0]) == 2
    pivot = ch.ceiling_pivot(study)
    assert list(pivot.columns) == ["config", "params", "circle"]


def test_training_gifs_are_filled_contours_wide_enough_and_small(tmp_path):
    """Chapter 1's GIFs draw banded surfaces (plots.bands: filled contours, no interpolation), so a frame holds a
    few dozen colours and the file stays small; each is at least 320 px wide."""
    from conftest import gif_frames
    from nbhelpers.viz import plots

    split = _small_split("gaussian", n=64)
    run = ch.train_one(split, "heads", 0, epochs=2, frames=5, n_embd=8, n_head=2)
    out = ch.output_gif(run, split, tmp_path / "out.gif")
    hid = ch.hidden_gif(run, tmp_path / "hid.gif")
    for path in (out, hid):
        frames = gif_frames(path)
        assert frames.shape[2] >= 320 and path.stat().st_size <= 1_500_000
    # the surfaces handed to the GIF writer are quantised to the 21 bands' mid-points (filled contours)
    seen = {}
    real = ch.animate.surface_gif
    ch.animate.surface_gif = lambda surfaces, *a, **k: seen.setdefault("s", surfaces) and real(surfaces, *a, **k)
    try:
        ch.output_gif(run, split, tmp_path / "again.gif")
    finally:
        ch.animate.surface_gif = real
    mids = set(np.round(plots.bands(np.linspace(-1, 1, 401), 21, -1.0, 1.0), 5))
    assert set(np.round(np.concatenate([np.ravel(s) for s in seen["s"]]), 5)) <= mids
