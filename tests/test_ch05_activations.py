"""Chapter 5: the variant registry, sort/permute semantics, every variant's forward/backward, the region counts and
the run bookkeeping (steps to fit, divergence recorded instead of a crash)."""
import dataclasses

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from conftest import gif_frames  # noqa: E402
from nbhelpers import chapter, params, results, runtime  # noqa: E402
from nbhelpers.chapters.ch05_activations import data as moons  # noqa: E402
from nbhelpers.chapters.ch05_activations import experiment as ch  # noqa: E402
from nbhelpers.chapters.ch05_activations import models  # noqa: E402
from nbhelpers.viz import plots  # noqa: E402

FIT = {"abs_abs", "exp_exp", "exp_cos", "sin_sin", "square", "relu", "sigmoid", "sort", "permute"}
FAIL = {"inv_inv", "tan_tan", "sgn"}


@pytest.fixture(scope="module")
def data():
    return ch.load(n=100, heldout_n=200, grid_n=30)


def test_registry_names_expectations_and_placement():
    assert set(models.NAMES) == FIT | FAIL and len(models.NAMES) == 12
    assert {n for n, v in models.VARIANTS.items() if v.expected == "fail"} == FAIL
    assert all(n.isascii() and n.replace("_", "").isalnum() for n in models.NAMES)  # used as file names
    # single-name entries apply their function at both places
    for name, act in {"relu": "relu", "sigmoid": "sigmoid", "square": "square", "sgn": "sgn"}.items():
        assert (models.VARIANTS[name].act1, models.VARIANTS[name].act2) == (act, act)
    assert (models.VARIANTS["exp_cos"].act1, models.VARIANTS["exp_cos"].act2) == ("exp", "cos")
    with pytest.raises(ValueError, match="abs_abs, exp_exp"):
        models.build("swish")


def _hand_net(name):
    """width 3: fc1 maps x = (1, 2) to h = (1, 2, -3); fc2 = diag(1, 2, -3); fc3 = (1, 10, 100); no biases."""
    net = models.MoonsNet(name, width=3)
    with torch.no_grad():
        for layer in (net.fc1, net.fc2, net.fc3):
            layer.bias.zero_()
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net.fc2.weight.copy_(torch.diag(torch.tensor([1.0, 2.0, -3.0])))
        net.fc3.weight.copy_(torch.tensor([[1.0, 10.0, 100.0]]))
    return net


def test_sort_semantics_by_hand():
    # h = (1, 2, -3) sorted ascending -> (-3, 1, 2); fc2 -> (-3, 2, -6); fc3 -> -3 + 20 - 600 = -583
    # (unsorted: 941; descending: 922)
    assert torch.equal(models.sort_features(torch.tensor([[1.0, 2.0, -3.0]])), torch.tensor([[-3.0, 1.0, 2.0]]))
    assert _hand_net("sort")(torch.tensor([[1.0, 2.0]])).item() == -583.0


def test_permute_semantics_by_hand():
    # h = (1, 2, -3): idx = argsort(h) = (2, 0, 1); fc2(h) = (1, 4, 9); out[j] = fc2(h)[idx[j]] = (9, 1, 4);
    # fc3 -> 9 + 10 + 400 = 419 (sorting fc2(h) instead: 941; scattering by idx, the inverse permutation: 194)
    assert torch.equal(models.permute_by(torch.tensor([[1.0, 4.0, 9.0]]), torch.tensor([[1.0, 2.0, -3.0]])),
                       torch.tensor([[9.0, 1.0, 4.0]]))
    assert _hand_net("permute")(torch.tensor([[1.0, 2.0]])).item() == 419.0


@pytest.mark.parametrize("name", models.NAMES)
def test_every_variant_forward_backward_on_a_batch(name):
    torch.manual_seed(0)
    net = models.build(name)
    x = torch.randn(64, 2)
    y = (torch.rand(64) > 0.5).float()
    out = net(x)
    assert out.shape == (64, 1) and torch.isfinite(out).all()
    ch.loss_fn(out, y).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    if name == "sgn":  # sign has zero derivative: nothing below the output layer can learn
        assert all(torch.count_nonzero(g) == 0 for n, g in grads.items() if not n.startswith("fc3"))
        assert torch.count_nonzero(grads["fc3.weight"]) > 0
    else:
        assert all(torch.count_nonzero(g) > 0 for n, g in grads.items())


@pytest.mark.parametrize("name", [n for n, v in models.VARIANTS.items() if v.piecewise])
def test_pattern_fixes_the_affine_piece(name):
    """Points with the same activation pattern get the same input gradient (one affine map, or a constant)."""
    torch.manual_seed(1)
    net = models.build(name)
    x = torch.randn(400, 2, requires_grad=True)
    net(x).sum().backward()
    ids = ch.pattern_ids(net.pattern(x).detach().numpy())
    assert len(set(ids)) > 1
    for i in set(ids):
        g = x.grad[ids == i]
        torch.testing.assert_close(g, g[:1].expand_as(g), atol=1e-5, rtol=1e-4)
    assert models.build("sigmoid").pattern(x) is None


def test_count_regions_by_hand():
    assert ch.count_regions(np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1]])) == 2
    assert ch.count_regions(np.array([[0, 1], [1, 0]])) == 4  # 4-neighbour: diagonals do not connect
    assert ch.count_regions(np.zeros((5, 7), int)) == 1
    assert list(ch.pattern_ids(np.array([[1, 0], [0, 1], [1, 0]]))) == [1, 0, 1]


def test_moons_data_and_grid():
    X, y = moons.make()
    assert X.shape == (100, 2) and X.dtype == np.float32 and set(np.unique(y)) == {0.0, 1.0} and y.sum() == 50
    xx, yy, pts, ext = moons.grid(X, n=20)
    assert xx.shape == (20, 20) and pts.shape == (400, 2)
    assert np.isclose(ext[0], X[:, 0].min() - 0.5) and np.isclose(ext[3], X[:, 1].max() + 0.5)
    with pytest.raises(ValueError, match="heldout_seed"):
        ch.load(data_seed=3, heldout_seed=3)


def test_start_refuses_heldout_moons_that_repeat_the_training_moons():
    ns = {"profile": "full", "seed": 0, "device": "cpu", "data_seed": 3, "heldout_seed": 3}
    specs = {"data_seed": params.Int(0, 9), "heldout_seed": params.Int(0, 9)}
    with pytest.raises(ValueError, match="heldout_seed=3 is not allowed"), chapter.checking_only():
        ch.start(ns, **specs)
    with pytest.raises(chapter.Checked), chapter.checking_only():
        ch.start({**ns, "heldout_seed": 4}, **specs)


def test_steps_to_fit_is_the_first_step_at_100_percent(data):
    run = ch.train_one(data, "square", 0, steps=150)
    assert run.steps_to_fit is not None and run.fitted and run.outcome == str(run.steps_to_fit)
    assert run.grad_norms.shape == (150, 3) and run.linear_regions is None and run.decision_regions >= 2
    k = run.steps_to_fit
    assert ch.train_one(data, "square", 0, steps=k).train_acc == 1.0
    if k > 1:
        assert ch.train_one(data, "square", 0, steps=k - 1).train_acc < 1.0


def test_divergence_is_recorded_not_raised(data):
    bad = dataclasses.replace(data, X=data.X.copy())
    bad.X[0, 0] = np.nan  # the loss is NaN from the first step on
    run = ch.train_one(bad, "relu", 0, steps=20, frames=5)
    assert run.diverged and run.history.stopped_at == 0 and run.outcome == "diverged at step 0"
    assert not run.fitted and run.snapshots.at == [0, 0]
    table = ch.summarise({("relu", 0): run, ("relu", 1): ch.train_one(data, "relu", 1, steps=5)})
    row = table.iloc[0]
    assert row.diverged == 1 and row.fitted == 0 and row.first_outcome == "diverged at step 0"
    shown = ch.display_table(table)
    assert shown.loc["relu", "steps to 100 % (seed 0)"] == "diverged at step 0"
    assert shown.loc["relu", "diverged"] == "1 (step 0)" and "never" in shown.loc["relu", "median steps to 100 %"]
    assert "relu (seed 0) at step 0" in ch.divergence_note({("relu", 0): run})


def test_sgn_trains_only_its_output_layer(data):
    run = ch.train_one(data, "sgn", 0, steps=10)
    assert (run.grad_norms[:, :2] == 0).all() and (run.grad_norms[:, 2] > 0).all()
    assert ch.gradient_stats({("sgn", 0): run}, 0)["sgn"]["grad_max"] == 0.0


def test_gifs_stay_under_the_byte_bound_by_dropping_frames(data, tmp_path):
    runs = {("tan_tan", 0): ch.train_one(data, "tan_tan", 0, steps=20, frames=12)}
    full = ch.write_gifs(runs, data, tmp_path / "a", seed=0)["tan_tan"]
    assert len(gif_frames(full)) == 12
    bound = full.stat().st_size // 2
    path = ch.write_gifs(runs, data, tmp_path / "b", seed=0, max_bytes=bound)["tan_tan"]
    frames = gif_frames(path)
    assert path.name == "tan_tan.gif" and path.stat().st_size <= bound
    assert 2 <= len(frames) < 12 and frames.shape[1:] == gif_frames(full).shape[1:]  # same resolution
    assert ch.write_gifs(runs, data, tmp_path, seed=1) == {}  # only the seed that recorded frames


def test_bands_quantise_to_contour_midpoints():
    z = np.array([0.0, 0.04, 0.05, 0.99, 1.0, 1.7, -0.2, np.nan])
    out = plots.bands(z, levels=21)
    np.testing.assert_allclose(out[:7], [0.025, 0.025, 0.075, 0.975, 0.975, 0.975, 0.025], atol=1e-6)
    assert np.isnan(out[7])


def test_threads_context_restores():
    before = torch.get_num_threads()
    with runtime.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- verdicts (synthetic loss curves: no training)
LINE = 0.89  # a best-straight-line accuracy for the synthetic runs below


def _curve(*pieces):
    return np.concatenate([np.asarray(p, dtype=float) for p in pieces])


def test_verdict_fits_fails_plateaus_and_flips_with_the_numbers():
    flat = np.full(200, 0.2)
    assert ch.verdict(flat, 1.0, False, LINE) == "fits"
    assert ch.verdict(flat, 1.0, True, LINE) == "fails"          # the guard stopped it: never "fits"
    assert ch.verdict(flat, 0.95, False, LINE) == "plateaus"     # above the line, loss no longer moving
    assert ch.verdict(flat, LINE, False, LINE) == "fails"        # no better than the best straight line
    assert ch.verdict(flat, 0.80, False, LINE) == "fails"
    assert ch.verdict(flat, 0.95, False, 0.96) == "fails"        # the same run against a better line
    # the plateau tolerance: a tail that still moves by more than FLAT_TOL (but not steadily down) is "unstable"
    wobble = _curve(np.full(190, 0.2), np.tile([0.2, 0.2 * (1 + 2 * ch.FLAT_TOL)], 5))
    assert ch.verdict(wobble, 0.95, False, LINE) == "unstable"


def test_verdict_still_learning_needs_a_steady_fall_without_jumps():
    falling = np.geomspace(0.7, 0.2, 200)                        # falls by a constant share on every step
    assert ch.verdict(falling, 0.80, False, LINE) == "still learning"   # below the line, but not done
    assert ch.verdict(falling, 0.95, False, LINE) == "still learning"
    assert ch.verdict(falling, 1.0, False, LINE) == "fits"
    # too slow a fall over the tail (less than STEADY_DROP) is not learning any more
    slow = np.concatenate([np.geomspace(0.7, 0.3, 180), np.linspace(0.3, 0.3 * (1 - ch.STEADY_DROP / 2), 21)[1:]])
    assert ch.verdict(slow, 0.80, False, LINE) == "fails"
    assert ch.verdict(slow, 0.95, False, LINE) == "plateaus"
    # a calm, falling stretch after a pole-crossing jump in the second half does not count as learning
    jumpy = falling.copy()
    jumpy[120:] *= 1 + 3 * ch.JUMP
    assert ch.verdict(jumpy, 0.80, False, LINE) == "fails"
    # a jump in the first half is forgotten
    early = falling.copy()
    early[40:] *= 1 + 3 * ch.JUMP
    assert ch.verdict(early, 0.80, False, LINE) == "still learning"
    # the tail is at least TAIL_MIN steps: a short run is judged on that many
    assert ch.verdict(np.geomspace(0.7, 0.3, ch.TAIL_MIN + 1), 0.80, False, LINE) == "still learning"


def test_verdict_phrases_and_agreement_with_the_original():
    assert ch.verdict_phrase(["fits"] * 3) == "fits at every seed"
    assert ch.verdict_phrase(["fits"]) == "fits (one seed)"
    assert ch.verdict_phrase(["fails", "fits", "fits"]) == "fits at 2 of 3 seeds and fails at 1"
    assert ch.verdict_phrase(["still learning", "plateaus"]) == "plateaus at 1 of 2 seeds and is still learning at 1"
    assert ch.agreement("fit", ["fits", "fits"]) == "every seed"
    assert ch.agreement("fit", ["fits", "plateaus"]) == "some seeds"
    assert ch.agreement("fit", ["fails", "plateaus"]) == "no seed"
    assert ch.agreement("fail", ["fails", "fails"]) == "every seed"
    assert ch.agreement("fail", ["still learning", "still learning"]) == "undecided"
    verdicts = {"relu": ["fits", "fails"], "sort": ["fits", "fits"], "sgn": ["fails", "fails"],
                "tan_tan": ["fits", "plateaus"], "square": ["still learning"] * 2}
    note = ch.agreement_note(verdicts)
    assert "at every seed for 2 of the 5 variants" in note and "some seeds only for relu;" in note
    assert "at no seed for tan × tan" in note and "not yet decided (every seed still learning) for x²" in note
    assert ch.agreement_counts(verdicts) == {"every seed": 2, "some seeds": 1, "no seed": 1, "undecided": 1}
    seeds = ch.seeds_note(verdicts)
    assert seeds.startswith("Seeds matter: relu fits at 1 of 2 seeds and fails at 1.")
    assert "1 fit at no seed of this run: x² (is still learning at every seed)" in seeds
    assert ch.seeds_note({"relu": ["fits"] * 2, "sgn": ["fails"] * 2}).startswith("Every variant the original")
    assert ch.group_names(verdicts, "fits") == "sort" and ch.group_names(verdicts, "unstable") == "none"


def test_best_line_is_exact_on_hand_made_points():
    # separable by a line: 100 %; one point of class 1 deep inside class 0 costs exactly one point
    X = np.array([[0, 0], [1, 0], [0, 1], [3, 3], [4, 3], [3, 4]], dtype=float)
    y = np.array([0, 0, 0, 1, 1, 1])
    assert ch.best_line(X, y)["train_acc"] == 1.0
    X2, y2 = np.vstack([X, [[0.3, 0.3]]]), np.append(y, 1)
    far = np.array([[-1, -1], [-0.5, 0], [5, 5], [4, 5]], dtype=float)  # fresh points well off any tied line
    line = ch.best_line(X2, y2, far, np.array([0, 0, 1, 1]))
    assert line["train_acc"] == pytest.approx(6 / 7) and line["heldout_acc"] == 1.0
    # XOR: no line gets more than 3 of 4
    assert ch.best_line(np.array([[0, 0], [1, 1], [0, 1], [1, 0]], float), np.array([0, 0, 1, 1]))["train_acc"] == 0.75


def test_the_moons_need_a_nonlinearity(data):
    line = ch.best_line(data.X, data.y, data.X_test, data.y_test)
    assert 0.8 < line["train_acc"] < 1.0 and 0.8 < line["heldout_acc"] < 1.0


def test_heldout_and_line_words_follow_seed_noise():
    assert ch.versus_line([90.0, 91.0, 89.0], 80.0) == "above"
    assert ch.versus_line([70.0, 71.0, 69.0], 80.0) == "below"
    assert ch.versus_line([70.0, 90.0], 80.0) == "level with"
    assert ch.rank_word({"a": 3.0, "b": 1.0, "c": 2.0}, "c") == "the 2nd largest"
    assert ch.rank_word({"a": 3.0, "b": 1.0}, "a") == "the largest"
    assert ch.regions_word(2.0) == "keeps 2 decision regions"
    assert ch.regions_word(104.5) == "shatters into 104 decision regions"
    assert ch.gradient_word(0.0) == "no gradient" and ch.gradient_word(1e-9) == "a gradient"
    assert [ch.poles_within(m) for m in (1.0, 1.6, 4.8, 9.05)] == [0, 2, 4, 6]


def _fake_run(variant, seed, heldout):
    hist = type("H", (), {"ok": True, "stopped_at": None, "df": None})()
    return ch.MoonsRun(label=variant, seed=seed, history=hist, steps=10, steps_to_fit=5, train_acc=1.0, train_loss=0.01,
                       heldout_acc=heldout, grad_norms=np.zeros((0, 3)), linear_regions=None, decision_regions=2)


def test_heldout_note_says_within_or_beyond_seed_noise():
    fits = {"relu": ["fits"] * 3, "sort": ["fits"] * 3, "sgn": ["fails"] * 3}
    close = {(v, s): _fake_run(v, s, h) for v, hs in {"relu": [0.99, 0.98, 1.0], "sort": [0.98, 1.0, 0.99],
                                                       "sgn": [0.7, 0.7, 0.7]}.items() for s, h in enumerate(hs)}
    assert "within seed noise" in ch.heldout_note(close, fits)
    apart = {(v, s): _fake_run(v, s, h) for v, hs in {"relu": [0.99, 0.98, 1.0], "sort": [0.90, 0.91, 0.89],
                                                       "sgn": [0.7, 0.7, 0.7]}.items() for s, h in enumerate(hs)}
    note = ch.heldout_note(apart, fits)
    assert "beyond seed noise" in note and "90.0 % (sort) to 99.0 % (relu)" in note
    assert ch.heldout_note(apart, {"relu": ["fits", "fails"], "sort": ["fits"] * 3}).startswith("Fewer than two")


def test_summary_table_carries_the_verdicts(data):
    runs = {("square", 0): ch.train_one(data, "square", 0, steps=150),   # fits (see above)
            ("square", 1): ch.train_one(data, "square", 1, steps=12)}    # far too short: still falling
    table = ch.summarise(runs, line_acc=0.89)
    row = table.iloc[0]
    assert row.verdict == "fits at 1 of 2 seeds and is still learning at 1"
    assert (row.fits, row["still learning"], row.fails) == (1, 1, 0)
    assert ch.display_table(table).loc["x²", "verdict (2 seeds)"] == row.verdict
    assert "verdict" not in ch.summarise(runs).columns   # without a line: no verdicts
    res = results.Results("05_activations")
    ch.glue(res, table)
    assert (res.values["square_verdict"], res.values["square_fit_rate"], res.values["square_fitted"]) == \
        (row.verdict, "1/2", 1)
    assert res.patterns["{variant}_outcome"] == ["square_outcome"] and len(res.values) == 11
    note = ch.loss_note(runs, 0, 0.89)
    assert note.startswith("fits: x² ")


def test_region_notes_compare_pole_variants_with_the_fitted_ones():
    import pandas as pd
    table = pd.DataFrame({"variant": ["relu", "sort", "inv_inv", "tan_tan", "sgn"],
                          "decision_regions": [2.0, 3.0, 40.0, 2.0, 5.0],
                          "linear_regions": [100.0, 300.0, np.nan, np.nan, 30.0]})
    fits = {"relu": ["fits"] * 2, "sort": ["fits"] * 2, "inv_inv": ["fails"] * 2, "tan_tan": ["fails"] * 2}
    assert "do not tell the pole failures apart" in ch.decision_note(table, fits)   # tan × tan has only 2
    table.loc[3, "decision_regions"] = 9.0
    assert "more than any of them" in ch.decision_note(table, fits)
    assert ch.decision_note(table, {"relu": ["plateaus"]}).startswith("No variant fits at every seed")
    assert ch.finest_note(table) == "From the most linear regions to the fewest: sort (300), relu (100)."
