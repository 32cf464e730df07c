import pytest
import math

import torch
from torch import nn

from nbhelpers import train


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return [(x[i:i + 16], x[i:i + 16].sum(1, keepdim=True)) for i in range(0, n, 16)]


def test_fit_learns_and_records_history():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    hist = train.fit(model, torch.optim.Adam(model.parameters(), lr=0.1), _data(), nn.functional.mse_loss,
                     epochs=20, evaluate=lambda m: {"val": 1.0}, progress=False)
    df = hist.df
    assert hist.ok and len(df) == 80 and list(df.step) == list(range(80))
    assert df.train_loss.iloc[-1] < 0.05 * df.train_loss.iloc[0]
    assert df.val.notna().sum() == 20  # evaluated once per epoch
    assert hist.wall_s > 0 and hist.samples == 20 * 64


class Planted(nn.Module):
    """A linear model that goes bad after ``after`` forward passes: ``nan`` makes the output (so the loss) NaN;
    ``grad`` keeps the output finite but makes the gradient NaN (0 * sqrt(0): inf * 0 in the backward pass)."""

    def __init__(self, after: int, kind: str):
        super().__init__()
        self.lin, self.calls, self.after, self.kind = nn.Linear(2, 1), 0, after, kind

    def forward(self, x):
        self.calls += 1
        y = self.lin(x)
        if self.calls <= self.after:
            return y
        return y * float("nan") if self.kind == "nan" else y + 0 * torch.sqrt(y * 0)


def test_nan_guard_stops_and_says_why():
    model = Planted(after=5, kind="nan")
    seen = []
    hist = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), _data(), nn.functional.mse_loss,
                     epochs=10, on_step=lambda s, m: seen.append(s), progress=False)
    assert hist.status == "nan" and hist.stopped_at == 5
    assert "step 5" in hist.reason and "nan" in hist.reason
    assert seen == [1, 2, 3, 4, 5]  # no optimiser step was taken on the NaN loss
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())


def test_divergence_guard():
    model = nn.Linear(2, 1)
    hist = train.fit(model, torch.optim.SGD(model.parameters(), lr=10.0), _data(), nn.functional.mse_loss,
                     epochs=50, diverge_factor=100, progress=False)
    assert hist.status in ("diverged", "nan") and hist.stopped_at is not None and hist.reason


class Spike(nn.Module):
    """A linear model whose output is multiplied by 1000 for steps 3-5 only (a loss spike it recovers from)."""

    def __init__(self):
        super().__init__()
        self.lin, self.calls = nn.Linear(2, 1), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x) * (1000.0 if 3 <= self.calls <= 5 else 1.0)


def test_divergence_reported_not_stopped_trains_on():
    torch.manual_seed(0)
    model = Spike()
    hist = train.fit(model, torch.optim.SGD(model.parameters(), lr=1e-9), _data(), nn.functional.mse_loss,
                     epochs=3, diverge_factor=100, on_diverge="report", progress=False)
    assert hist.status == "diverged" and hist.diverged_at == 2 and hist.stopped_at is None
    assert "went on" in hist.reason and hist.df.epoch.max() == 2          # all three epochs ran
    torch.manual_seed(0)
    stopped = train.fit(Spike(), torch.optim.SGD(model.parameters(), lr=1e-9), _data(), nn.functional.mse_loss,
                        epochs=3, diverge_factor=100, progress=False)
    assert stopped.stopped_at == 2 and stopped.diverged_at == 2 and len(stopped.rows) == 3
    with pytest.raises(ValueError, match="on_diverge"):
        train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), nn.functional.mse_loss, epochs=1,
                  on_diverge="ignore", progress=False)


def test_snapshots_record_requested_steps():
    model = nn.Linear(2, 1)
    snaps = train.Snapshots(lambda m: m.weight.detach().clone(), steps=[2, 4])
    snaps.record(0, model)
    train.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), _data(), nn.functional.mse_loss, epochs=1,
              on_step=snaps, progress=False)
    assert snaps.at == [0, 2, 4] and len(snaps.frames) == 3
    assert not torch.equal(snaps.frames[0], snaps.frames[2])


def test_nonfinite_gradient_stops_before_the_step():
    model = Planted(after=3, kind="grad")
    hist = train.fit(model, torch.optim.SGD(model.parameters(), lr=0.01), _data(), nn.functional.mse_loss,
                     epochs=5, progress=False)
    assert hist.status == "nan" and hist.stopped_at == 3 and "gradient" in hist.reason
    assert all(math.isfinite(p.detach().sum().item()) for p in model.parameters())
