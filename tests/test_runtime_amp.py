"""Mixed precision that fits the device: runtime.amp_for's choice (device capabilities faked) and train.fit's fp16
path with a gradient scaler (run on CPU, where fp16 autocast and torch.amp.GradScaler("cpu") exist)."""
import math
import warnings

import pytest
import torch
from torch import nn

from nbhelpers import runtime, train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and share a busy machine best, on one thread."""
    with runtime.threads(1):
        yield


def fake_cuda(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


@pytest.mark.parametrize("capability, dtype", [
    ((9, 0), torch.bfloat16),   # H100
    ((8, 0), torch.bfloat16),   # A100
    ((8, 9), torch.bfloat16),   # L4
    ((7, 5), torch.float16),    # T4 (Colab's free GPU): fp16 tensor cores, bf16 only emulated
    ((7, 0), torch.float16),    # V100
    ((6, 0), None),             # P100: no tensor cores
])
def test_amp_for_cuda_follows_compute_capability(monkeypatch, capability, dtype):
    fake_cuda(monkeypatch, capability)
    assert runtime.amp_for("cuda") is dtype
    assert runtime.amp_for(torch.device("cuda", 0)) is dtype
    assert (runtime.amp_for("cuda") is torch.bfloat16) == (dtype is torch.bfloat16)


def test_amp_for_cuda_absent_is_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.amp_for("cuda") is None and runtime.amp_for("cuda") is not torch.bfloat16


@pytest.mark.parametrize("amx, dtype", [(True, torch.bfloat16), (False, None)])
def test_amp_for_cpu_needs_amx(monkeypatch, amx, dtype):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert runtime.amp_for("cpu") is dtype and (runtime.amp_for("cpu") is torch.bfloat16) == amx


def test_amp_for_cpu_without_the_feature_check(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert runtime.amp_for("cpu") is None


def test_amp_for_mps_is_fp32():
    assert runtime.amp_for("mps") is None and runtime.amp_for("mps") is not torch.bfloat16


def _data(scale=1.0, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return [(x[i:i + 16], scale * x[i:i + 16].sum(1, keepdim=True)) for i in range(0, n, 16)]


def test_fp16_fit_scales_the_loss_and_skips_overflowing_steps():
    """Targets ~300x: at the scaler's initial scale (65536) the fp16 gradients overflow, so the first steps are
    skipped (no update, scale halved each time) without counting as NaN or divergence; then training proceeds.
    The scheduler keeps the step clock (StepLR every 5 steps) and torch's 'scheduler before optimizer' warning is
    not raised."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    weights = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hist = train.fit(model, opt, _data(300.0), nn.functional.mse_loss, epochs=10, scheduler=sched,
                         amp_dtype=torch.float16, diverge_factor=100, progress=False,
                         on_step=lambda s, m: weights.append(m.weight.detach().clone()))
    df = hist.df
    assert hist.ok and hist.stopped_at is None and len(df) == 40
    assert df.train_loss.map(math.isfinite).all()
    assert df.skipped.iloc[0] and 0 < hist.skipped == df.skipped.sum() < 20
    assert not df.skipped.iloc[-10:].any()                       # the scale settled
    assert (df.loss_scale.diff().dropna()[df.skipped.iloc[:-1].to_numpy()] < 0).all()  # halved after each skip
    for s in df.step[df.skipped]:                                 # a skipped step changes no weight
        before = weights[s - 1] if s else None
        if before is not None:
            assert torch.equal(weights[s], before)
    assert list(df.lr) == [1e-3 * 0.5 ** (s // 5) for s in range(40)]
    assert df.train_loss.iloc[-4:].mean() < df.train_loss.iloc[:4].mean()


def test_fp16_fit_on_an_easy_problem_matches_fp32():
    torch.manual_seed(0)
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    b.load_state_dict(a.state_dict())
    kw = dict(epochs=20, progress=False)
    h32 = train.fit(a, torch.optim.Adam(a.parameters(), lr=0.1), _data(), nn.functional.mse_loss, **kw)
    h16 = train.fit(b, torch.optim.Adam(b.parameters(), lr=0.1), _data(), nn.functional.mse_loss,
                    amp_dtype=torch.float16, **kw)
    assert h16.ok and h16.df.train_loss.map(math.isfinite).all()
    assert h16.df.train_loss.iloc[-1] < 0.05 * h16.df.train_loss.iloc[0]
    assert abs(h16.df.train_loss.iloc[-1] - h32.df.train_loss.iloc[-1]) < 0.05
    assert "skipped" not in h32.df and "loss_scale" not in h32.df      # fp32 and bf16 rows are unchanged


class NaNGrad(nn.Module):
    """Finite output, NaN gradient after ``after`` calls (0 * sqrt(0): inf * 0 in the backward pass)."""

    def __init__(self, after=3):
        super().__init__()
        self.lin, self.calls, self.after = nn.Linear(2, 1), 0, after

    def forward(self, x):
        self.calls += 1
        y = self.lin(x)
        return y if self.calls <= self.after else y + 0 * torch.sqrt(y * 0)


def test_fp16_gradients_that_stay_nan_still_stop_the_run():
    model = NaNGrad(after=3)
    hist = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), _data(), nn.functional.mse_loss,
                     epochs=20, amp_dtype=torch.float16, progress=False)
    assert hist.status == "nan" and hist.stopped_at == 3 + train.FP16_MAX_SKIPS - 1
    assert "NaN/inf" in hist.reason and "fp16" in hist.reason
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())


def test_bf16_fit_uses_no_scaler():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    hist = train.fit(model, torch.optim.Adam(model.parameters(), lr=0.1), _data(), nn.functional.mse_loss,
                     epochs=5, amp_dtype=torch.bfloat16, progress=False)
    assert hist.ok and hist.skipped == 0 and "skipped" not in hist.df
