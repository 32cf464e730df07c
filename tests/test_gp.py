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
