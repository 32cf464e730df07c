"""Chapter 2: GP pair generator, the exact-posterior oracle, the models' causality and the loss functions."""
import math

import numpy as np
import pytest
import torch

from nbhelpers.data import gp


def _pair(n_points=40, noise=0.1, kernel="rbf", seed=3):
    return gp.make_pairs(4, n_points, kernel_name=kernel, noise=noise, seed=seed)


def test_generator_flag_convention_and_layout():
    p = gp.make_pairs(200, 20, seed=0)
    n = 10
    assert p["x"].shape == p["y"].shape == p["s"].shape == (200, 20)
    assert (p["s"][:, :n] == 1).all() and (p["s"][:, n:] == 0).all()  # series 1 block first
    assert (p["c"][:, 1] <= p["c"][:, 0]).all()                        # flag 1 = the smaller offset
    np.testing.assert_allclose(p["x"][:, :n], p["x"][:, n:])           # both series share the x values
    diff = p["y"][:, n:] - p["y"][:, :n]                               # noise-free: constant gap c0 - c1 >= 0
    np.testing.assert_allclose(diff, np.repeat(p["c"][:, :1] - p["c"][:, 1:], n, axis=1), atol=1e-9)
    assert ((p["x"] >= 5) & (p["x"] < 15)).all()
    srt = p["sorted"]
    assert 0.3 < srt.mean() < 0.7
    assert (np.diff(p["x"][srt, :n], axis=1) >= 0).all()
    assert (np.diff(p["x"][~srt, :n], axis=1) < 0).any()
    ps = gp.sort_by_x(p)
    assert (np.diff(ps["x"][:, :n], axis=1) >= 0).all() and (np.diff(ps["x"][:, n:], axis=1) >= 0).all()


def test_generator_statistics():
    p = gp.make_pairs(3000, 8, seed=1)
    assert abs(p["c"].std() - 2.0) < 0.15
    assert abs((p["y"][:, 0] - p["c"][:, 1]).var() - 1.0) < 0.1  # f has unit variance
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
    x, s, y = p["x"][0], p["s"][0], p["y"][0]
    obs = np.zeros(40, bool)
    obs[:25] = True
    mean, cov = gp.posterior(x, s, y, obs, noise=0.1)
    # direct dense formulas with explicit inverses
    d = np.abs(x[:, None] - x[None, :])
    K = np.exp(-0.5 * d ** 2) + 4.0 * (s[:, None] == s[None, :]) + (0.01 + gp.JITTER) * np.eye(40)
    Ki = np.linalg.inv(K[:25, :25])
    np.testing.assert_allclose(mean, K[25:, :25] @ Ki @ y[:25], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(cov, K[25:, 25:] - K[25:, :25] @ Ki @ K[:25, 25:], atol=1e-8)
    # log-likelihood = log N(y_t; mean, cov) = chain of the sequential one-step predictives
    from scipy.stats import multivariate_normal
    ll = gp.log_likelihood(x, s, y, obs, noise=0.1)
    assert ll == pytest.approx(multivariate_normal(mean, cov).logpdf(y[25:]), rel=1e-9)
    m_seq, sd_seq = gp.sequential_stats(x, s, y, 25, noise=0.1)
    seq = -0.5 * ((y[25:] - m_seq) / sd_seq) ** 2 - np.log(sd_seq) - 0.5 * math.log(2 * math.pi)
    assert seq.sum() == pytest.approx(ll, rel=1e-9)
    assert m_seq[0] == pytest.approx(mean[0], rel=1e-9)


def test_posterior_matches_sklearn_on_one_series():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    p = _pair()
    x, s, y = p["x"][1, :20], p["s"][1, :20], p["y"][1, :20]  # series 1 alone: k + 4 (its offset) + noise
    obs = np.zeros(20, bool)
    obs[::2] = True
    mean, cov = gp.posterior(x, s, y, obs, noise=0.1, jitter=0.0)
    k = RBF(1.0, "fixed") + ConstantKernel(4.0, "fixed") + WhiteKernel(0.01, "fixed")
    gpr = GaussianProcessRegressor(k, optimizer=None, alpha=1e-12, normalize_y=False).fit(x[obs, None], y[obs])
    m_sk, sd_sk = gpr.predict(x[~obs, None], return_std=True)
    np.testing.assert_allclose(mean, m_sk, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), sd_sk, atol=1e-6)  # WhiteKernel: noisy predictive


def test_order_violation_is_small_when_the_gap_is_seen():
    p = gp.make_pairs(1, 40, seed=5)
    obs = np.zeros(40, bool)
    obs[:25] = True  # all of series 1 and 5 points of series 0: the gap c0 - c1 is known
    prob, bound = gp.order_violation(p["x"][0], p["s"][0], p["y"][0], obs)
    assert 0 <= prob < 1e-6 and 0 <= bound < 1e-6
    obs[:] = False
    prob, _ = gp.order_violation(p["x"][0], p["s"][0], p["y"][0], obs | (np.arange(40) == 0))
    assert 0.01 < prob < 0.99  # one point of series 1 says little about the gap: the order is uncertain


# ---------------------------------------------------------------- models and losses

from nbhelpers.experiments import gp as gpx  # noqa: E402
from nbhelpers.models import gp as models  # noqa: E402


def _inp(n_points=24, seed=0):
    p = gp.make_pairs(3, n_points, seed=seed)
    return torch.tensor(np.stack([p["x"], p["s"], p["y"]], -1), dtype=torch.float32)


MODELS = {
    "faithful": lambda: models.Faithful(embed=16),
    "series_qk_no_relu": lambda: models.Faithful(embed=16, series_qk=True, no_relu=True),
    "repaired": lambda: models.Repaired(width=16, heads=2, layers=2, n_freq=4),
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
    if name == "repaired":  # the rest of its weight sits on the learned "nothing seen yet" token
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
    pred, sd = gpx.rollout(model, inp, first=16)
    assert pred.shape == sd.shape == (3, 8)
    changed = inp.clone()
    changed[:, 16:, 2] = 99.0  # the truth after `first` must not matter
    np.testing.assert_allclose(gpx.rollout(model, changed, first=16)[0], pred, rtol=1e-6)
    tf = gpx.teacher_forced(model, inp)
    np.testing.assert_allclose(pred[:, 0], tf[:, 16, 0], rtol=1e-5)  # first step = teacher-forced


def test_x_index_matches_the_original_grid():
    idx = models.x_index(torch.tensor([5.0, 10.0, 14.99, 1.0]))
    assert idx.tolist() == [280, 380, 479, 200]


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


def test_training_regimes():
    p = gp.make_pairs(8, 12, seed=0)
    cfg = gpx.Config(n_points=12, context=3, context_p=2, batch=4)
    for regime in gpx.REGIMES:
        b = gpx.Batches(p, regime, cfg, 2, seed=0)
        batches = list(b)
        assert len(batches) == 2
        inp, tgt = batches[0]
        assert inp.shape == (4, 12, 3) and tgt.shape == (4, 12, 2)
        assert (tgt[..., 1] == (torch.arange(12) >= 3).float()).all()
        assert torch.equal(tgt[..., 0], inp[..., 2])
        if regime == "full_infer":  # series 1 sorted, then series 0 sorted
            assert (inp[:, :6, 1] == 1).all() and (inp[:, :6, 0].diff(dim=1) >= 0).all()
    with pytest.raises(ValueError, match="regime"):
        gpx.arrange(b.raw[:2], b.srt[:2], "nope", torch.Generator())
