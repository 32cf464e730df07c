import math

import numpy as np
import pandas as pd
import pytest
import torch

from nbhelpers import lr_range, train
from nbhelpers.data import images
from nbhelpers.experiments import ultimus as E
from nbhelpers.models import ultimus as U


def _data(n=64, n_test=32):
    rng = np.random.default_rng(0)
    return images.ImageData("cifar10", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n),
                            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test),
                            [f"c{i}" for i in range(10)])


def test_faithful_has_exactly_25488_parameters():
    m = U.build("faithful")
    assert U.count_params(m) == U.PARAMS_FAITHFUL == 25_488
    assert all(c.bias is None for c in m.modules() if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear)))
    assert not any(isinstance(c, (torch.nn.BatchNorm2d, torch.nn.ReLU)) for c in m.modules())  # linear stack
    assert U.count_params(U.build("tokens")) == U.count_params(U.build("sqrt8_after")) == 25_488
    assert U.count_params(U.build("repaired")) <= 26_000 and U.count_params(U.build("fixed_spec")) <= 26_000


def test_spec_shapes_and_wiring():
    m = U.build("faithful").eval()
    x = torch.randn(3, 3, 32, 32)
    assert m.features(x).shape == (3, 48, 26, 26)  # 32 -> 30 -> 28 -> 26
    X = m.embed(x)
    assert X.shape == (3, 48) and m(x).shape == (3, 10)
    u = m.blocks[0](X)
    for b in m.blocks[1:]:
        u = b(X + u)
    torch.testing.assert_close(m(x), m.fc(u))


def test_repaired_backbone_separable_blocks_and_tokens():
    m = U.build("repaired").eval()
    assert U.count_params(m) <= 26_000
    x = torch.randn(2, 3, 32, 32)
    assert m.features(x).shape == (2, 48, 8, 8) and m.embed(x).shape == (2, 64, 48)  # 64 tokens of 48
    seps = [b for b in m.modules() if isinstance(b, U.Separable)]
    assert [b.residual for b in seps] == [False, False, True, True, False]
    dw = seps[0].body[0]
    assert dw.groups == dw.in_channels == 16 and dw.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="backbone='resnet'"):
        U.Ultimus(backbone="resnet")


def test_working_recipe_drops_only_the_erasing():
    w, o = E.working(), E.original()
    assert o.augment == E.AUGMENT and o.augment.erase_p == 0.5 and o.optimizer == "adam"
    assert w.augment.erase_p == 0 and (w.augment.crop_padding, w.augment.flip) == (4, True)
    assert w.optimizer == "adamw" and w.label_smoothing == 0.1


def test_block_softmax_is_over_the_q_index():
    torch.manual_seed(0)
    blk = U.UltimusBlock(48, 8)
    X = torch.randn(5, 48)
    am = blk.attention(X)
    assert am.shape == (5, 8, 8)
    torch.testing.assert_close(am.sum(1), torch.ones(5, 8))  # columns (summed over the Q index i) are 1
    q, k, v = blk.q(X), blk.k(X), blk.v(X)
    expected = torch.softmax(q[:, :, None] * k[:, None, :] / math.sqrt(8), dim=1)
    torch.testing.assert_close(am, expected)
    z = torch.einsum("bi,bij->bj", v, expected)  # Z_j = sum_i v_i AM[i, j]
    out = blk(X)
    assert out.shape == (5, 48)
    torch.testing.assert_close(out, blk.out(z))


def test_sqrt8_after_softmax_typo_and_token_attention():
    torch.manual_seed(0)
    typo = U.UltimusBlock(48, 8, scale="after")
    am = typo.attention(torch.randn(4, 48))
    torch.testing.assert_close(am.sum(1), torch.full((4, 8), 1 / math.sqrt(8)))
    tok = U.UltimusBlock(48, 8)
    T = torch.randn(2, 13 * 13, 48)
    am = tok.attention(T)
    assert am.shape == (2, 169, 169) and tok(T).shape == (2, 169, 48)
    torch.testing.assert_close(am.sum(-1), torch.ones(2, 169))
    assert U.build("tokens").embed(torch.randn(2, 3, 32, 32)).shape == (2, 169, 48)
    with pytest.raises(ValueError, match="inside, after"):
        U.UltimusBlock(scale="before")


def test_augmentation_crop_flip_and_mean_erase():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    out = images.random_crop(x, 4, g, mode="reflect")  # the spec's reflect-pad 4 + crop 32
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, r:r + 32, c:c + 32]) for r in range(9) for c in range(9))
    flipped = images.random_flip(x, 1.0, g)
    assert torch.equal(flipped, x.flip(-1))
    mean = torch.tensor(E.STATS[0])
    erased = images.Augment(erase_size=16, erase_p=1.0)(x, mean, g)
    hole = (erased != x).any(1)
    assert hole.any(-1).any(-1).all() and hole.sum((1, 2)).max() <= 256
    torch.testing.assert_close(erased.permute(0, 2, 3, 1)[hole], mean.expand(int(hole.sum()), 3))
    # through the batcher: a mean-filled hole normalises to exactly 0, and un-normalising gives pixels in [0, 1]
    b = images.DeviceBatches(_data().x_train, np.zeros(64), 64, stats=E.STATS,
                             augment=images.Augment(4, "reflect", True, 16, 1.0), seed=0)
    xb, _ = next(iter(b))
    assert xb.shape == (64, 3, 32, 32) and (xb == 0).all(1).any()
    px = b.denormalise(xb)
    assert px.min() >= 0 and px.max() <= 1


def test_lr_range_test_on_a_tiny_model():
    torch.manual_seed(0)
    X = torch.randn(256, 4)
    y = (X[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(X[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    df = lr_range.range_test(model, lambda p: torch.optim.SGD(p, lr=0.1), batches, torch.nn.functional.cross_entropy,
                             start_lr=1e-4, end_lr=1e3, steps=60)
    assert list(df.columns) == ["step", "lr", "loss", "smoothed"] and 5 < len(df) <= 60
    ratios = df.lr.values[1:] / df.lr.values[:-1]
    np.testing.assert_allclose(ratios, (1e3 / 1e-4) ** (1 / 59), rtol=1e-9)  # exponential ramp
    assert len(df) < 60  # stopped early once the loss blew up
    best = lr_range.loss_minimum(df)
    assert best == df.lr[df.smoothed.idxmin()] and 1e-4 < best < 1e3
    assert lr_range.steepest(df) <= best
    for k, v in model.state_dict().items():  # the test leaves the model as it was
        assert torch.equal(v, before[k])


class _BlowUp(torch.nn.Module):
    """A model whose outputs are multiplied by 1e6 from its 4th training call on: a planted divergence."""

    def __init__(self):
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(3, 10), 0

    def forward(self, x):
        self.calls += self.training
        return self.lin(x.mean((2, 3))) * (1e6 if self.training and self.calls > 3 else 1.0)


def test_divergence_guard_on_a_planted_blow_up():
    data = _data()
    b = E.train_batches(data, 8, "cpu")
    model = _BlowUp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    hist = train.fit(model, opt, b, E.Tally(), epochs=3, diverge_factor=20, progress=False)
    assert hist.status == "diverged" and hist.stopped_at == 3 and "step 3" in hist.reason
    assert len(hist.rows) == 4 and all(math.isfinite(r["train_loss"]) for r in hist.rows)
    # and on the real model: an absurd peak learning rate is stopped and reported as a row, not trained through
    run = E.train(data, "faithful", E.original(max_lr=1e4, batch_size=16), 2, "cpu")
    assert not run.history.ok and run.history.stopped_at is not None
    row = E.table([run]).iloc[0]
    assert row.status in ("diverged", "nan") and row["diverged at step"] == run.history.stopped_at


def test_train_runs_and_records_curves():
    data = _data()
    run = E.train(data, "repaired", E.working(batch_size=32), 2, "cpu", label="rep")
    assert run.history.ok and list(run.curve.epoch) == [1, 2]
    assert run.curve[["train_acc", "test_acc"]].stack().between(0, 1).all() and (run.curve.test_loss > 0).all()
    sched = E.schedule(E.original(), 24 * 98)
    peak = int(sched.lr.idxmax())
    assert abs(peak - 5 / 24 * 24 * 98) <= 2 and sched.lr.max() == pytest.approx(E.ORIGINAL_MAX_LR)
    assert sched.lr.iloc[0] == pytest.approx(E.ORIGINAL_MAX_LR / 10)
    assert sched.lr.iloc[-1] == pytest.approx(E.ORIGINAL_MAX_LR / 100, rel=0.05)
    assert isinstance(E.table([run]), pd.DataFrame)
    for name in E.ABLATIONS:  # every ablation row runs at the lower peak and names one change
        variant, recipe, label = E.ablation(name, 0.02, 512, 0.1)
        assert recipe.max_lr == pytest.approx(0.002) and variant in U.VARIANTS and label
