import pytest
import torch

from nbhelpers.models import toy


@pytest.mark.parametrize("name, n_out, expected", [
    ("heads", 1, 33), ("mlp", 1, 105), ("relu_mlp", 1, 33), ("heads", 2, 42), ("mlp", 2, 114), ("relu_mlp", 2, 42),
])
def test_parameter_counts(name, n_out, expected):
    assert toy.count_params(toy.build(name, n_out, n_embd=8)) == expected


@pytest.mark.parametrize("name", toy.MODELS)
def test_output_and_hidden_shapes(name):
    model = toy.build(name, 2)
    x = torch.randn(7, 2)
    assert model(x).shape == (7, 2)
    for h in model.hidden(x).values():
        assert h.shape[0] == 7 and h.ndim == 2


def test_heads_rejects_indivisible_embedding():
    with pytest.raises(ValueError, match="n_embd .*n_head"):
        toy.Heads(n_embd=8, n_head=3)


def test_heads_attention_is_a_softmax_over_slices():
    model = toy.Heads(n_embd=8, n_head=4)
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
    m = toy.Heads(n_embd=512, n_head=8)
    assert abs(m.embed.weight.std().item() - 0.02) < 0.003 and m.embed.bias.abs().max() == 0


def test_unknown_model_name():
    with pytest.raises(ValueError, match="heads, mlp, relu_mlp"):
        toy.build("transformer", 1)


# ---------------------------------------------------------------- chapter 1 experiment helpers (toy.py)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nbhelpers.data import playground as pg  # noqa: E402
from nbhelpers.experiments import toy as tx  # noqa: E402


def _small_split(name="xor", n=96):
    return pg.make_split(name, n_train=n, n_val=n)


def test_stacked_heads_trains_each_seed_exactly_as_train_one():
    split = _small_split()
    stack = tx.train_heads_stack(split, [3, 4], n_embd=8, n_head=2, epochs=3)
    for i, seed in enumerate((3, 4)):
        run = tx.train_one(split, "heads", seed, epochs=3, n_embd=8, n_head=2)
        assert stack["metric"][i] == pytest.approx(run.metric, abs=1e-6)
        xt, yt, xv, yv = tx.tensors(split)
        with torch.no_grad():
            full = float(torch.nn.functional.cross_entropy(run.model(xv), yv))
            # 96 points = one batch of 64 and one of 32: the original's batch mean differs from the full mean
            halves = [float(torch.nn.functional.cross_entropy(run.model(xv[a:b]), yv[a:b])) for a, b in ((0, 64), (64, 96))]
        assert stack["val_loss"][i] == pytest.approx(np.mean(halves), rel=1e-4)
        assert np.mean(halves) != pytest.approx(full, rel=1e-6)


def test_original_sizes_have_the_parameter_counts_its_logs_printed():
    # the original printed "number of parameters: 0.000082 M" (heads8_e16, heads4_e16) and 0.000022 M (heads2_e4)
    counts = {d: tx.heads_params(e, h) for d, (h, e) in tx.ORIGINAL_SIZE.items()}
    assert counts["spiral"] == counts["xor"] == counts["two_gaussians"] == 82 and counts["circle"] == 22
    assert tx.heads_params(8, 4, n_out=1) == 33


def test_logged_verdict_flips_with_the_numbers():
    assert tx.logged_verdict([0.05, 0.06, 0.04], 0.05).startswith("consistent")
    assert tx.logged_verdict([0.15, 0.16, 0.17], 0.05).startswith("ours higher")
    assert tx.logged_verdict([0.01, 0.012, 0.011], 0.05).startswith("ours lower")
    assert tx.logged_verdict([0.05], 0.05) == "cannot be judged with one seed"
    assert tx.logged_verdict([0.05, 0.06], None) == "no logged number"


def test_reach_word_flips_at_the_tolerance():
    assert tx.reach_word(tx.reach([98.5, 98.7], 99.0, 1.0)).startswith("reaches")
    assert tx.reach_word(tx.reach([97.5, 97.9], 99.0, 1.0)).startswith("falls short")
    assert tx.reach_word(tx.reach([97.5, 97.9], 99.0, 2.0)).startswith("reaches")
    assert tx.reach([99.5], 99.0, 1.0)["ok"]          # above the ceiling on a finite set still reaches it


def test_ceiling_grid_keeps_valid_configs_within_the_parameter_budget():
    grid = tx.ceiling_grid([4, 8, 32, 64], [2, 3, 8], [0.03], [1, 2])
    assert grid and all(c.n_embd % c.n_head == 0 and c.n_head <= c.n_embd for c in grid)
    assert all(tx.heads_params(c.n_embd, c.n_head) <= tx.MAX_PARAMS for c in grid)
    assert not any(c.n_embd == 64 for c in grid) and not any(c.n_head == 3 for c in grid)
    assert not any(c.n_embd == 4 and c.n_head == 8 for c in grid)


def test_best_config_is_chosen_on_validation_and_judged_on_test():
    study = pd.DataFrame([
        {"dataset": "circle", "config": "a", "params": 22, "val": [97.0, 97.2], "test": [95.0, 95.2]},
        {"dataset": "circle", "config": "b", "params": 82, "val": [96.0, 96.2], "test": [97.0, 97.2]},
        {"dataset": "circle", "config": "c", "params": 322, "val": [99.0, 99.2], "test": [99.0, 99.2]},
    ])
    best = tx.best_configs(study, {"circle": 0.97}).iloc[0]
    assert best["best config"] == "a"                 # best validation within the budget (c is over it)
    assert not best.ok and best.verdict.startswith("falls short")   # judged on test: 95.1 vs 97.0
    study.loc[0, "test"] = [96.5, 96.7]
    assert tx.best_configs(study, {"circle": 0.97}).iloc[0].ok


def test_ceiling_study_runs_on_a_tiny_grid():
    splits = {"circle": _small_split("circle", 64), "plane": _small_split("plane", 64)}
    configs = tx.ceiling_grid([4], [2], [0.03], [1])
    study = tx.ceiling_study(splits, [0, 1], configs, epochs_scale=0.05, n_test=100, progress=False)
    assert list(study.dataset) == ["circle"] and len(study.val[0]) == len(study.test[0]) == 2
    pivot = tx.ceiling_pivot(study)
    assert list(pivot.columns) == ["config", "params", "circle"]


def test_training_gifs_are_filled_contours_wide_enough_and_small(tmp_path):
    """Chapter 1's GIFs draw banded surfaces (plots.bands: filled contours, no interpolation), so a frame holds a
    few dozen colours and the file stays small; each is at least 320 px wide."""
    from conftest import gif_frames
    from nbhelpers.viz import plots

    split = _small_split("gaussian", n=64)
    run = tx.train_one(split, "heads", 0, epochs=2, frames=5, n_embd=8, n_head=2)
    out = tx.output_gif(run, split, tmp_path / "out.gif")
    hid = tx.hidden_gif(run, tmp_path / "hid.gif")
    for path in (out, hid):
        frames = gif_frames(path)
        assert frames.shape[2] >= 320 and path.stat().st_size <= 1_500_000
    # the surfaces handed to the GIF writer are quantised to the 21 bands' mid-points (filled contours)
    seen = {}
    real = tx.animate.surface_gif
    tx.animate.surface_gif = lambda surfaces, *a, **k: seen.setdefault("s", surfaces) and real(surfaces, *a, **k)
    try:
        tx.output_gif(run, split, tmp_path / "again.gif")
    finally:
        tx.animate.surface_gif = real
    mids = set(np.round(plots.bands(np.linspace(-1, 1, 401), 21, -1.0, 1.0), 5))
    assert set(np.round(np.concatenate([np.ravel(s) for s in seen["s"]]), 5)) <= mids
