"""Chapter 2: GP pair generator, the exact-posterior oracle, the models' causality and the loss functions."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from nbhelpers.chapters.ch02_gp_sequences import data as gp


def _pair(n_points=40, noise=0.1, kernel="rbf", seed=3):
    return gp.make_pairs(4, n_points, kernel_name=kernel, noise=noise, seed=seed)


def test_generator_distinct_x_permuted_offsets_and_flag_convention():
    p = gp.make_pairs(200, 20, seed=0)
    assert p.x.shape == p.y.shape == p.s.shape == (200, 20)
    assert all(len(np.unique(row)) == 20 for row in p.x)  # no two points of one example share an x
    assert (p.s.sum(1) == 10).all()                       # 10 points per series...
    assert len({tuple(r) for r in p.s}) > 150             # ...in a random order per example (interleaved)
    assert (p.c[:, 1] <= p.c[:, 0]).all()                 # flag 1 = the smaller offset
    assert ((p.x >= 5) & (p.x < 15)).all()
    srt = p.sorted
    assert 0.3 < srt.mean() < 0.7
    assert (np.diff(p.x[srt], axis=1) >= 0).all()
    assert (np.diff(p.x[~srt], axis=1) < 0).any(axis=1).all()
    # noise-free: y - c_s is one smooth curve f shared by both series (neighbours in x, either series, agree)
    big = gp.make_pairs(50, 400, seed=1)
    f = big.y - np.where(big.s == 1, big.c[:, 1:2], big.c[:, 0:1])
    order = np.argsort(big.x, axis=1)
    fs, xs, ss = (np.take_along_axis(a, order, 1) for a in (f, big.x, big.s))
    cross = ss[:, 1:] != ss[:, :-1]
    step = np.abs(np.diff(fs, axis=1)[cross])
    assert np.median(step) < 0.05 and step.max() < 1.0
    ys = np.take_along_axis(big.y, order, 1)  # ...while y jumps by the offset gap between series
    jumps = np.array([np.median(np.abs(np.diff(ys[i]))[cross[i]]) for i in range(50)])
    np.testing.assert_allclose(jumps, big.c[:, 0] - big.c[:, 1], atol=0.2)


def test_inference_layout_is_the_originals():
    p = gp.make_pairs(30, 40, seed=4)
    lay = gp.inference_layout(p, context_p=5, pool=12, seed=0)
    n, first = 20, lay.first
    assert first == 25
    for i in range(30):
        assert sorted(zip(lay.x[i], lay.y[i])) == sorted(zip(p.x[i], p.y[i]))  # same points
        s, x = lay.s[i], lay.x[i]
        assert (s[:n] == 1).all() and (s[n:] == 0).all()
        assert (np.diff(x[:n]) > 0).all() and (np.diff(x[n:first]) > 0).all() and (np.diff(x[first:]) > 0).all()
        low = np.sort(x[n:])[:12]
        assert np.isin(x[n:first], low).all()  # the context: 5 of the 12 lowest series-0 points
    picks = {tuple(np.round(r[n:first], 6)) for r in lay.x}
    assert len(picks) == 30  # picked at random per example
    with pytest.raises(ValueError, match="context_p"):
        gp.inference_layout(p, context_p=13, pool=12)


def test_generator_statistics():
    p = gp.make_pairs(3000, 8, seed=1)
    assert abs(p.c.std() - 2.0) < 0.15
    f = p.y - np.where(p.s == 1, p.c[:, 1:2], p.c[:, 0:1])
    assert abs(f.var() - 1.0) < 0.1  # f has unit variance
    noisy = gp.make_pairs(3000, 8, noise=0.1, seed=1)
    assert abs((noisy.y - p.y).std() - 0.1) < 0.01  # same draws, plus N(0, 0.1²)
    with pytest.raises(ValueError, match="kernel"):
        gp.make_pairs(2, 8, kernel_name="nope")
    with pytest.raises(ValueError, match="n_points"):
        gp.make_pairs(2, 7)


@pytest.mark.parametrize("kernel", gp.KERNELS)
def test_kernels_are_unit_variance_psd(kernel):
    x = np.linspace(5, 15, 30)
    K = gp.kernel(kernel, x, x)
    np.testing.assert_allclose(np.diag(K), 1.0)
    assert np.linalg.eigvalsh(K + 1e-9 * np.eye(30)).min() > -1e-8


def test_posterior_equals_dense_solve():
    p = _pair()
    x, s, y = p.x[0], p.s[0], p.y[0]
    obs = np.zeros(40, bool)
    obs[:25] = True
    mean, cov = gp.posterior(x, s, y, obs, noise=0.1)
    # direct dense formulas with explicit inverses
    d = np.abs(x[:, None] - x[None, :])
    K = np.exp(-0.5 * d ** 2) + 4.0 * (s[:, None] == s[None, :]) + (0.01 + gp.JITTER) * np.eye(40)
    Ki = np.linalg.inv(K[:25, :25])
    np.testing.assert_allclose(mean, K[25:, :25] @ Ki @ y[:25], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(cov, K[25:, 25:] - K[25:, :25] @ Ki @ K[:25, 25:], atol=1e-8)
    # log-likelihood = log N(y_t; mean, cov)
    from scipy.stats import multivariate_normal
    ll = gp.log_likelihood(x, s, y, obs, noise=0.1)
    assert ll == pytest.approx(multivariate_normal(mean, cov).logpdf(y[25:]), rel=1e-9)


def test_posterior_matches_sklearn_on_one_series():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    p = _pair()
    one = p.s[1] == 1
    x, s, y = p.x[1, one], p.s[1, one], p.y[1, one]  # series 1 alone: k + 4 (its offset) + noise
    obs = np.zeros(20, bool)
    obs[::2] = True
    mean, cov = gp.posterior(x, s, y, obs, noise=0.1, jitter=0.0)
    k = RBF(1.0, "fixed") + ConstantKernel(4.0, "fixed") + WhiteKernel(0.01, "fixed")
    gpr = GaussianProcessRegressor(k, optimizer=None, alpha=1e-12, normalize_y=False).fit(x[obs, None], y[obs])
    m_sk, sd_sk = gpr.predict(x[~obs, None], return_std=True)
    np.testing.assert_allclose(mean, m_sk, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), sd_sk, atol=1e-6)  # WhiteKernel: noisy predictive


def test_order_violation_is_small_when_the_gap_is_seen():
    p = gp.inference_layout(gp.make_pairs(1, 40, seed=5), context_p=5, pool=10)
    obs = np.zeros(40, bool)
    obs[:25] = True  # all of series 1 and 5 points of series 0: the gap c0 - c1 is known
    prob, bound = gp.order_violation(p.x[0], p.s[0], p.y[0], obs)
    assert 0 <= prob < 1e-6 and 0 <= bound < 1e-6
    obs[:] = False
    prob, _ = gp.order_violation(p.x[0], p.s[0], p.y[0], obs | (np.arange(40) == 0))
    assert 0.01 < prob < 0.99  # one point of series 1 says little about the gap: the order is uncertain


# ---------------------------------------------------------------- models and losses

from nbhelpers.chapters.ch02_gp_sequences import experiment as ch  # noqa: E402
from nbhelpers.chapters.ch02_gp_sequences import models  # noqa: E402


def _inp(n_points=24, seed=0):
    p = gp.make_pairs(3, n_points, seed=seed)
    return torch.tensor(np.stack([p.x, p.s, p.y], -1), dtype=torch.float32)


MODELS = {
    "faithful": lambda: models.Faithful(embed=16),
    "faithful_4_heads": lambda: models.Faithful(embed=16, heads=4),
    "series_qk_no_relu": lambda: models.Faithful(embed=16, series_qk=True, no_relu=True),
    "residual": lambda: models.Faithful(embed=16, residual=True),
    "repaired": lambda: models.Repaired(width=16, heads=2, layers=2, n_freq=4),
    "repaired_on_baseline": lambda: models.Repaired(width=16, heads=2, layers=2, n_freq=4, on_baseline=True),
    "repaired_on_interpolation": lambda: models.Repaired(width=16, heads=2, layers=2, n_freq=4, on_baseline=True,
                                                         smooth=False),
}


@pytest.mark.parametrize("name", MODELS)
def test_changing_a_later_y_never_changes_an_earlier_prediction(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    inp = _inp()
    base = model(inp)
    assert base.shape == (3, 24, 2) and torch.isfinite(base).all()
    for u in (0, 7, 12, 23):
        changed = inp.clone()
        changed[:, u, 2] += 3.0
        out = model(changed)
        assert torch.equal(out[:, :u + 1], base[:, :u + 1]), f"prediction <= {u} saw y_{u}"
        if u < 23:
            assert not torch.allclose(out[:, u + 1:], base[:, u + 1:])  # later rows do use it
    att = model.attention(inp)
    assert att.shape == (3, 24, 24)
    assert torch.all(att.triu() == 0)  # row t only weighs points j < t
    total = att[:, 1:].sum(-1).detach().numpy()
    if name.startswith("repaired"):  # the rest of its weight sits on the learned "nothing seen yet" token
        assert (total <= 1 + 1e-5).all()
    else:
        np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_self_feed_trains_on_own_predictions_and_stays_causal():
    torch.manual_seed(0)
    model = models.Repaired(width=16, heads=2, layers=1, n_freq=4, self_feed=True).train()
    inp = _inp()

    def run(x, seed=1):
        torch.manual_seed(seed)  # the same random cut for both calls
        return model(x)

    base = run(inp)
    assert not torch.allclose(base, model.eval()(inp))  # training mode replaced some series-0 values
    model.train()
    for u in (5, 12, 20):
        changed = inp.clone()
        changed[:, u, 2] += 3.0
        assert torch.equal(run(changed)[:, :u + 1], base[:, :u + 1]), f"training row <= {u} saw y_{u}"
    series1 = inp.clone()
    series1[..., 1] = 1.0  # no series-0 points: nothing to replace
    torch.manual_seed(1)
    np.testing.assert_allclose(model(series1).detach(), model.eval()(series1).detach(), rtol=1e-6)


def test_rollout_is_causal_and_feeds_back_predictions():
    torch.manual_seed(0)
    model = models.Faithful(embed=16).eval()
    inp = _inp()
    pred, sd = ch.rollout(model, inp, first=16)
    assert pred.shape == sd.shape == (3, 8)
    changed = inp.clone()
    changed[:, 16:, 2] = 99.0  # the truth after `first` must not matter
    np.testing.assert_allclose(ch.rollout(model, changed, first=16)[0], pred, rtol=1e-6)
    tf = ch.teacher_forced(model, inp)
    np.testing.assert_allclose(pred[:, 0], tf[:, 16, 0], rtol=1e-5)  # first step = teacher-forced


def test_x_index_matches_the_original_grid():
    grid = np.arange(1, 15.1, 0.05)  # the original: 200 + the first grid position with x <= grid value
    x = np.array([5.01, 10.013, 14.99, 1.0, 1.02, 15.07, 20.0, 7.3333])
    want = [200 + (np.where(v <= grid)[0][0] if v <= grid.max() else len(grid) - 1) for v in x]
    assert models.x_index(torch.tensor(x)).tolist() == want


def test_same_weights_with_1_and_32_heads_give_different_outputs():
    """The original trained a 1-head model and rebuilt it with 32 heads for inference from the same weights."""
    torch.manual_seed(0)
    one = models.Faithful(embed=64, heads=1).eval()
    many = models.Faithful(embed=64, heads=32).eval()
    many.load_state_dict(one.state_dict())  # identical parameter shapes: only the reshape differs
    inp = _inp(24)
    out1, out32 = one(inp), many(inp)
    assert not torch.allclose(out1, out32, atol=1e-4)
    one.heads = 32  # the attribute the chapter flips for inference does the same
    assert torch.allclose(one(inp), out32)
    with pytest.raises(ValueError, match="heads"):
        models.Faithful(embed=20, heads=32)


def test_twin_baseline_is_the_parameter_free_baseline_in_the_inference_layout():
    cfg = ch.Config(n_points=40, context=4, context_p=5, pool=12)
    test = gp.inference_layout(gp.make_pairs(6, 40, seed=1), cfg.context_p, cfg.pool, seed=0)
    base = ch.baseline(test, cfg)
    tb = models.twin_baseline(ch.to_tensor(test))[:, cfg.first].numpy()
    np.testing.assert_allclose(tb, base["mean"][:, 0], atol=1e-5)
    assert base["rollout_rmse"] < 0.5 * np.std(test.y[:, cfg.first:])  # it is a real prediction


def test_smoothers_are_weighted_local_linear_fits_and_smooth_noise_away():
    cfg = ch.Config()  # the original's geometry: 400 points, 50 context points among the lowest 120
    test = gp.inference_layout(gp.make_pairs(8, 400, noise=0.1, seed=4), cfg.context_p, cfg.pool, seed=0)
    inp = ch.to_tensor(test)
    b = models.baselines(inp).numpy()
    assert b.shape == (8, 400, 1 + len(models.SMOOTH_BANDWIDTHS))
    np.testing.assert_array_equal(b[..., 0], models.twin_baseline(inp).numpy())
    n, t = cfg.n_points // 2, cfg.first  # the first target: series 1 all seen, then the context
    x, y = test.x.astype(np.float64), test.y.astype(np.float64)
    for k, h in enumerate(models.SMOOTH_BANDWIDTHS, 1):  # float64 reference: weighted least squares at x_t
        for i in range(3):
            def fit(u):  # series 1 smoothed at x[i, u] (series 1 is the first n points)
                w = np.sqrt(np.exp(-0.5 * ((x[i, :n] - x[i, u]) / h) ** 2))
                A = np.stack([np.ones(n), x[i, :n] - x[i, u]], 1) * w[:, None]
                return np.linalg.lstsq(A, y[i, :n] * w, rcond=None)[0][0]
            level = np.mean([y[i, j] - fit(j) for j in range(n, t)])  # the context's mean offset from the fit
            assert b[i, t, k] == pytest.approx(fit(t) + level, abs=1e-5)
    err = b[:, t:] - test.y[:, t:, None]
    rmse = np.sqrt((err ** 2).mean((0, 1)))
    assert rmse[1:].min() < 0.9 * rmse[0]  # noisy pairs: smoothing beats interpolating the noise
    clean = gp.inference_layout(gp.make_pairs(8, 400, seed=4), cfg.context_p, cfg.pool, seed=0)
    err = models.baselines(ch.to_tensor(clean)).numpy()[:, t:] - clean.y[:, t:, None]
    rmse = np.sqrt((err ** 2).mean((0, 1)))
    assert rmse[0] < rmse[1:].min()  # noise-free: interpolation beats every smoother


def test_repaired_blend_starts_on_the_interpolation():
    torch.manual_seed(0)
    inp = _inp()
    model = models.Repaired(width=16, heads=2, layers=1, n_freq=4, on_baseline=True)
    w = model.blend_weights(inp)
    np.testing.assert_allclose(w[..., 0].detach().numpy(), math.exp(2) / (math.exp(2) + 3), rtol=1e-5)
    expected = (w * models.baselines(inp)).sum(-1)  # the correction starts at zero: μ is the blend
    torch.testing.assert_close(model(inp)[..., 0], expected)
    plain = models.Repaired(width=16, heads=2, layers=1, n_freq=4, on_baseline=True, smooth=False)
    torch.testing.assert_close(plain(inp)[..., 0], models.twin_baseline(inp))
    with pytest.raises(ValueError, match="no blend"):
        plain.blend_weights(inp)
    with pytest.raises(ValueError, match="square root of a whole number"):
        models.baselines(inp, (0.1, 0.25))


def test_nearest_same_series_uses_earlier_points_only():
    inp = torch.tensor([[[5.0, 1, 1.0], [6.0, 0, 2.0], [5.9, 1, 3.0], [6.1, 0, 4.0], [5.0, 0, 5.0]]])
    assert models.nearest_same_series(inp)[0].tolist() == [0.0, 0.0, 1.0, 2.0, 2.0]


def test_losses_on_hand_computed_values():
    mu, log_sigma, y = torch.tensor([1.0]), torch.tensor([math.log(2.0)]), torch.tensor([3.0])
    # original: ½((y−μ)²/(σ²+1e-3) + log σ) = ½(4/4.001 + log 2)
    assert models.original_loss(mu, log_sigma, y).item() == pytest.approx(0.5 * (4 / 4.001 + math.log(2)), rel=1e-6)
    # exact: ½ log 2π + log σ + ½ (r/σ)² = ½ log 2π + log 2 + ½
    assert models.gaussian_nll(mu, log_sigma, y).item() == pytest.approx(
        0.5 * math.log(2 * math.pi) + math.log(2) + 0.5, rel=1e-6)
    # the original loss is minimised at σ² ≈ 2 r², the exact NLL at σ² = r²
    grid = torch.linspace(-3, 3, 6001)
    r = torch.tensor(1.5)
    best_orig = grid[models.original_loss(torch.zeros(()), grid, r).argmin()]
    best_exact = grid[models.gaussian_nll(torch.zeros(()), grid, r).argmin()]
    assert math.exp(2 * best_orig) == pytest.approx(2 * 1.5 ** 2, rel=0.01)
    assert math.exp(2 * best_exact) == pytest.approx(1.5 ** 2, rel=0.01)
    # masking: only target points count
    out = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    tgt = torch.tensor([[[1.0, 0.0], [2.0, 1.0]]])
    assert models.masked_loss("exact")(out, tgt).item() == pytest.approx(0.5 * math.log(2 * math.pi) + 2.0)


def test_training_regimes_follow_the_original():
    p = gp.make_pairs(16, 24, seed=0)
    cfg = ch.Config(n_points=24, context=3, context_p=4, pool=8, batch=8)
    raw = ch.to_tensor(p)[:8]
    # shuffle: ONE permutation of the columns for the whole batch, targets after `context`
    inp, first = ch.arrange(raw, "shuffle", cfg, torch.Generator().manual_seed(0))
    perm = [int((raw[0, :, 0] == v).nonzero()) for v in inp[0, :, 0]]
    assert torch.equal(inp, raw[:, perm]) and (first == 3).all()
    # full_infer: sorted, the lowest 2*context of both series, then the seen series, then the other (targets)
    seen_counts = set()
    for seed in range(6):
        inp, first = ch.arrange(raw, "full_infer", cfg, torch.Generator().manual_seed(seed))
        for i in range(8):
            x, s, f = inp[i, :, 0], inp[i, :, 1], int(first[i])
            assert (x[:6].diff() > 0).all() and (x[6:f].diff() > 0).all() and (x[f:].diff() > 0).all()
            assert len(set(s[6:f].tolist())) <= 1 and len(set(s[f:].tolist())) == 1
            assert x[:6].max() < x[6:].min()
        seen_counts.add(int(inp[0, -1, 1]))  # the target series, drawn once per batch
        assert len(set(inp[:, -1, 1].tolist())) == 1
    assert seen_counts == {0, 1}
    # infer: the inference layout with fresh random context picks
    inp, first = ch.arrange(raw, "infer", cfg, torch.Generator().manual_seed(0))
    assert (first == 16).all() and (inp[:, :12, 1] == 1).all() and (inp[:, 12:, 1] == 0).all()
    # half_half: all four layouts appear over batches
    kinds = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        inp, first = ch.arrange(raw, "half_half", cfg, gen)
        kinds.add("seen_then_rest" if (first != 3).any() else "raw" if torch.equal(inp, raw) else "shuffle")
    assert kinds == {"seen_then_rest", "raw", "shuffle"}
    b = ch.Batches(p, "full_infer", cfg, 2, seed=0)
    inp, tgt = next(iter(b))
    assert inp.shape == (8, 24, 3) and torch.equal(tgt[..., 0], inp[..., 2])
    assert set(tgt[..., 1].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="regime"):
        ch.arrange(raw, "nope", cfg, torch.Generator())


def test_first_step_stats_see_a_copy_of_the_seen_series():
    test = gp.inference_layout(gp.make_pairs(200, 40, seed=2), 5, 12, seed=0)
    first = 25
    copy = ch.seen_at(test, test.x[:, first:first + 1])[:, 0]  # predict the seen series' value: a full drop
    st = ch.first_step_stats(copy, test, first)
    assert st["toward"] == 1.0 and st["first_step"] < -1.0
    assert st["gap_slope"] == pytest.approx(-1.0, abs=0.1) and st["gap_corr"] < -0.95
    exact = ch.first_step_stats(test.y[:, first] + 0.01, test, first)
    assert exact["first_abs"] == pytest.approx(0.01) and abs(exact["gap_slope"]) < 1e-9


def _summ(rows):
    df = pd.DataFrame(rows).set_index("key")
    for m in ch.METRICS:
        df[m] = df.get(m, 0.0)
        df[f"{m}_sd"] = df.get(f"{m}_sd", 0.0)
    df["model"] = df.index
    df["cause"] = "x"
    return df


def test_verdicts_follow_the_numbers():
    summ = _summ([
        {"key": "faithful", "first_abs": 1.0, "first_abs_sd": 0.05, "n_seeds": 3, "gap_slope": -0.5,
         "gap_slope_sd": 0.05, "gap_corr": -0.6},
        {"key": "series_qk", "first_abs": 0.3, "first_abs_sd": 0.05, "n_seeds": 3},    # removes most
        {"key": "no_relu", "first_abs": 0.8, "first_abs_sd": 0.05, "n_seeds": 3},      # some
        {"key": "exact_nll", "first_abs": 1.02, "first_abs_sd": 0.1, "n_seeds": 3},    # noise
        {"key": "residual", "first_abs": 1.5, "first_abs_sd": 0.05, "n_seeds": 3},     # worse
        {"key": "heads", "first_abs": 0.2, "first_abs_sd": 0.0, "n_seeds": 1},         # one seed
        {"key": "oracle", "first_abs": 0.0, "n_seeds": 0},
    ])
    table = ch.causes_table(summ).set_index("key")
    assert table.loc["series_qk", "verdict"] == "explains most of the error"
    assert table.loc["no_relu", "verdict"].startswith("matters, but")
    assert table.loc["exact_nll", "verdict"].startswith("does not matter")
    assert table.loc["residual", "verdict"] == "makes it worse"
    assert table.loc["heads", "verdict"].startswith("cannot be decided")
    assert table.loc["series_qk", "share of excess removed"] == pytest.approx(0.7)
    assert ch.drop_verdict(summ).startswith("a steady drop towards the seen series")
    summ.loc["faithful", "gap_slope_sd"] = 0.6  # the slope is within seed noise of zero
    assert ch.drop_verdict(summ).startswith("no steady drop")
    summ.loc["faithful", "n_seeds"] = 1
    assert "single seed" in ch.drop_verdict(summ)


def test_load_and_glue_keys():
    from nbhelpers import results

    cfg = ch.Config(n_points=24, context=3, context_p=3, pool=6)
    train, val, test = ch.load(cfg, 20, 5, seed=7, noise=0.1)
    assert (len(train.x), len(val.x), len(test.x)) == (16, 4, 5) and test.first == cfg.first
    np.testing.assert_array_equal(val.y, gp.make_pairs(4, 24, noise=0.1, seed=8).y)
    np.testing.assert_array_equal(test.y, gp.inference_layout(gp.make_pairs(5, 24, noise=0.1, seed=9), 3, 6, seed=9).y)
    assert test.head(2).x.shape == (2, 24) and test.head(2).first == cfg.first
    res = results.Results("99_test")  # every metric and its sd of every row, NaN as '—'
    ch.glue(res, _summ([{"key": "faithful", "first_abs": 0.5, "n_seeds": 2},
                         {"key": "oracle", "loglik": float("nan"), "n_seeds": 0}]).assign(kernel="rbf"),
             "ood_{kernel}_{key}")
    assert len(res.values) == 2 * 2 * len(ch.METRICS)
    assert res.values["ood_rbf_faithful_first_abs"] == 0.5 and res.values["ood_rbf_oracle_loglik_sd"] == 0.0
    assert res.values["ood_rbf_oracle_loglik"] == "—"

def test_parallel_training_gives_the_same_models():
    cfg = ch.Config(n_points=24, context=3, context_p=3, pool=6, embed=32, width=16, layers=1, steps=6, evals=2)
    tr, va = gp.make_pairs(40, 24, seed=0), gp.make_pairs(10, 24, seed=1)
    keys = ["faithful", "teacher_forced", "repaired"]
    from nbhelpers import runtime

    with runtime.threads(1):  # the workers run one thread each; sums split over threads round differently
        one = ch.run_grid(keys, tr, va, cfg, [0, 1], progress=False)
        two = ch.run_grid(keys, tr, va, cfg, [0, 1], progress=False, workers=2)
    for s in (0, 1):
        assert set(one[s]) == set(two[s]) == {"faithful", "repaired"}  # rows that do not train are not trained
        for k in one[s]:
            a, b = one[s][k].model.state_dict(), two[s][k].model.state_dict()
            assert all(torch.equal(a[n], b[n]) for n in a), (s, k)
    assert not torch.equal(one[0]["faithful"].model.q.weight, one[1]["faithful"].model.q.weight)  # seeds differ


def test_repair_words_and_the_originals_slope():
    base = pd.Series({"rollout_rmse": 0.10, "rollout_rmse_sd": 0.0, "n_seeds": 0})  # a reference row: exact
    better = pd.Series({"rollout_rmse": 0.05, "rollout_rmse_sd": 0.01, "n_seeds": 3})
    same = pd.Series({"rollout_rmse": 0.101, "rollout_rmse_sd": 0.01, "n_seeds": 3})
    assert ch.beats(ch.compare(base, better, "rollout_rmse"), "the baseline") == "beats the baseline"
    assert ch.beats(ch.compare(base, same, "rollout_rmse"), "the baseline").startswith("does no better")
    assert ch.beats(ch.compare(better, base, "rollout_rmse"), "x") == "is worse than x"
    one = pd.Series({"rollout_rmse": 0.05, "rollout_rmse_sd": 0.0, "n_seeds": 1})
    assert "one seed" in ch.beats(ch.compare(base, one, "rollout_rmse"), "the baseline")
    ll = pd.Series({"loglik": 0.5, "loglik_sd": 0.01, "n_seeds": 3, "loglik_n": 3})
    ll_up = pd.Series({"loglik": 0.8, "loglik_sd": 0.01, "n_seeds": 3, "loglik_n": 3})
    assert ch.beats(ch.compare(ll, ll_up, "loglik", higher_is_better=True), "x") == "beats x"  # higher is better
    assert ch.beats(ch.compare(ll_up, ll, "loglik", higher_is_better=True), "x") == "is worse than x"
    assert ch.compare(ll, ll_up, "loglik", floor=1.0, higher_is_better=True)["share"] == pytest.approx(0.6)
    one_noisy = ll_up.copy()
    one_noisy["loglik_n"] = 1  # three seeds, but only one trained on noisy pairs
    assert "one seed" in ch.beats(ch.compare(ll, one_noisy, "loglik", higher_is_better=True), "x")
    assert ch.slope_word(-0.5) == "a slope close to"
    assert ch.slope_word(-0.05) == "a shallower slope than"
    assert ch.slope_word(-1.0) == "a steeper slope than"
    assert ch.slope_word(0.1).startswith("no slope")


def test_head_majority_is_the_originals_vote():
    w = np.zeros((3, 10, 10))
    w[:, 9, :9] = np.arange(9)          # every head's top 5 at row 9: points 8, 7, 6, 5, 4
    w[2, 9, :9] = np.arange(9)[::-1]    # one head disagrees: 0, 1, 2, 3, 4
    top = ch.head_majority(w, 9, k=5, top=3)
    assert top[0] == 4 and set(top[1:]) <= {5, 6, 7, 8}  # 4 is in all three heads' top 5


def test_training_gif_frames_leave_training_unchanged_and_survive_forked_workers(tmp_path):
    """The rollout snapshots of the first seed's faithful and repaired rows: the same histories and weights as a
    run without them (bit for bit), the expected frames (step 0 to the last), none elsewhere; the GIF is written."""
    from PIL import Image

    from nbhelpers import runtime, train

    cfg = ch.Config(n_points=24, context=3, context_p=3, pool=6, embed=32, width=16, layers=1, steps=6, evals=2)
    tr, va = gp.make_pairs(40, 24, seed=0), gp.make_pairs(10, 24, seed=1)
    test = gp.inference_layout(gp.make_pairs(6, 24, seed=2), 3, 6, seed=2)
    pick = ch.example_pair(test)
    snap = ch.snap_spec(test, pick, 3, seed=0)
    keys = ["faithful", "repaired"]
    with runtime.threads(1):
        off = ch.run_grid(keys, tr, va, cfg, [0, 1], progress=False)
        on = ch.run_grid(keys, tr, va, cfg, [0, 1], progress=False, workers=2, snap=snap)
    for s in (0, 1):
        for k in keys:
            pd.testing.assert_frame_equal(on[s][k].history.df, off[s][k].history.df, check_exact=True)
            a, b = on[s][k].model.state_dict(), off[s][k].model.state_dict()
            assert all(torch.equal(a[n], b[n]) for n in a), (s, k)
            assert off[s][k].snapshots is None and (on[s][k].snapshots is None) == (s != 0)
            assert (on[s][k].label, on[s][k].seed) == (k, s)
    sn = on[0]["faithful"].snapshots
    pred, sd = (np.stack(f) for f in zip(*sn.frames))
    assert sn.at == train.even_steps(6, 3) == [0, 3, 6]
    assert pred.shape == sd.shape == (3, 24 - cfg.first)
    assert on[0]["faithful"].model.heads == cfg.train_heads   # the probe's inference heads were put back
    final = ch.for_row(on[0], "faithful", cfg)                  # the last frame is the trained model's rollout
    np.testing.assert_allclose(pred[-1], ch.rollout(final, ch.to_tensor(test)[pick:pick + 1], cfg.first)[0][0],
                               rtol=1e-5, atol=1e-6)
    path = ch.rollout_gif(on[0], test, cfg, ch.oracle(test, cfg), pick, tmp_path / "rollout.gif")
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.size[0] >= 320
