import math

import numpy as np
import pandas as pd
import pytest
import torch

from nbhelpers import lr_range, train
from nbhelpers.data import images
from nbhelpers.chapters.ch04_ultimus import experiment as ch
from nbhelpers.chapters.ch04_ultimus import models as U


def _data(n=64, n_test=32):
    rng = np.random.default_rng(0)
    return images.ImageData("cifar10", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n),
                            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test),
                            [f"c{i}" for i in range(10)])


def test_faithful_has_exactly_25488_parameters():
    m = U.build("faithful")
    assert train.count_params(m) == U.PARAMS_FAITHFUL == 25_488
    assert all(c.bias is None for c in m.modules() if isinstance(c, (torch.nn.Conv2d, torch.nn.Linear)))
    assert not any(isinstance(c, (torch.nn.BatchNorm2d, torch.nn.ReLU)) for c in m.modules())  # linear stack
    assert train.count_params(U.build("tokens")) == train.count_params(U.build("sqrt8_after")) == 25_488
    assert train.count_params(U.build("repaired")) <= 26_000 and train.count_params(U.build("fixed_spec")) <= 26_000


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
    assert train.count_params(m) <= 26_000
    x = torch.randn(2, 3, 32, 32)
    assert m.features(x).shape == (2, 48, 8, 8) and m.embed(x).shape == (2, 64, 48)  # 64 tokens of 48
    seps = [b for b in m.modules() if isinstance(b, U.Separable)]
    assert [b.residual for b in seps] == [False, False, True, True, False]
    dw = seps[0].body[0]
    assert dw.groups == dw.in_channels == 16 and dw.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="backbone='resnet'"):
        U.Ultimus(backbone="resnet")


def test_working_recipe_drops_only_the_erasing():
    w, o = ch.working(), ch.original()
    assert o.augment == ch.AUGMENT and o.augment.erase_p == 0.5 and o.optimizer == "adam"
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
    T = torch.randn(2, 13 * 13, 48)
    for softmax, axis in (("q", 1), ("k", 2)):
        tok = U.UltimusBlock(48, 8, softmax=softmax)
        am = tok.attention(T)
        assert am.shape == (2, 169, 169) and tok(T).shape == (2, 169, 48)
        torch.testing.assert_close(am.sum(axis), torch.ones(2, 169))  # normalised over the chosen index
        z = torch.einsum("bij,bid->bjd", am, tok.v(T)) if softmax == "q" else am @ tok.v(T)
        torch.testing.assert_close(tok(T), tok.out(z), atol=1e-5, rtol=1e-4)  # the fused kernel = the formula
    assert U.build("tokens").embed(torch.randn(2, 3, 32, 32)).shape == (2, 26 * 26, 48)  # the spec's own grid
    with pytest.raises(ValueError, match="inside, after"):
        U.UltimusBlock(scale="before")
    with pytest.raises(ValueError, match="q, k"):
        U.UltimusBlock(softmax="j")


def test_softmax_over_the_other_index_and_the_no_attention_controls():
    torch.manual_seed(0)
    X = torch.randn(5, 48)
    blk = U.UltimusBlock(48, 8, softmax="k")
    torch.testing.assert_close(blk.attention(X).sum(2), torch.ones(5, 8))
    assert train.count_params(U.build("softmax_k")) == U.PARAMS_FAITHFUL
    x = torch.randn(2, 3, 32, 32)
    for model, control in (("fixed_spec", "fixed_noattn"), ("repaired", "repaired_noattn")):
        m, c = U.build(model).eval(), U.build(control).eval()
        assert len(c.blocks) == 0 and train.count_params(m) - train.count_params(c) == 4 * (3 * 48 * 8 + 8 * 48)
        c.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("blocks.")})
        X = c.embed(x)
        torch.testing.assert_close(c(x), c.fc(X.mean(1) if X.dim() == 3 else X))  # FC on the pooled X
        assert not torch.allclose(m(x), c(x))  # the blocks do something in the model


def test_augmentation_crop_flip_and_mean_erase():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    out = images.random_crop(x, 4, g, mode="reflect")  # the spec's reflect-pad 4 + crop 32
    padded = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, r:r + 32, c:c + 32]) for r in range(9) for c in range(9))
    flipped = images.random_flip(x, 1.0, g)
    assert torch.equal(flipped, x.flip(-1))
    mean = torch.tensor(ch.STATS[0])
    erased = images.Augment(erase_size=16, erase_p=1.0)(x, mean, g)
    hole = (erased != x).any(1)
    assert hole.any(-1).any(-1).all() and hole.sum((1, 2)).max() <= 256
    torch.testing.assert_close(erased.permute(0, 2, 3, 1)[hole], mean.expand(int(hole.sum()), 3))
    # through the batcher: a mean-filled hole normalises to exactly 0, and un-normalising gives pixels in [0, 1]
    b = images.DeviceBatches(_data().x_train, np.zeros(64), 64, stats=ch.STATS,
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
    b = ch.train_batches(data, 8, "cpu")
    model = _BlowUp()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    hist = train.fit(model, opt, b, ch.Tally(), epochs=3, diverge_factor=20, progress=False)
    assert hist.status == "diverged" and hist.stopped_at == 3 and "step 3" in hist.reason
    assert len(hist.rows) == 4 and all(math.isfinite(r["train_loss"]) for r in hist.rows)
    # and on the real model: an absurd peak learning rate is stopped and reported as a row, not trained through
    run = ch.train_one(data, "faithful", ch.original(max_lr=1e4, batch_size=16), 2, "cpu")
    assert not run.history.ok and run.history.stopped_at is not None
    row = ch.summarise({"f": [run]}).iloc[0]
    assert row["stopped by the guard"] == "1 of 1"


def test_faithful_rows_train_through_or_stop_and_the_verdicts_follow_the_numbers():
    """The same seed and recipe twice: the unguarded row trains on past the crossing (as the original did), the
    guarded one stops there; up to the crossing the two are the same run."""
    data = _data()
    rows = ch.faithful_rows(0.3, 16)  # too high a peak: the loss crosses 1.5x its first value at step 4
    groups = ch.run_grid(data, rows, [0], 2, "cpu", diverge_factor=1.5)
    through, guarded = groups["faithful"][0], groups["guarded"][0]
    assert through.history.diverged_at == guarded.history.diverged_at is not None
    assert through.history.stopped_at is None and guarded.history.stopped_at == guarded.history.diverged_at
    assert list(through.curve.epoch) == [1, 2] and through.diverged_epoch == guarded.diverged_epoch
    n = guarded.history.stopped_at
    np.testing.assert_allclose(through.history.df.train_loss[:n], guarded.history.df.train_loss[:n])
    assert "trained on to the end" in ch.outcome(groups["faithful"])
    assert "stopped it" in ch.outcome(groups["guarded"])
    assert "not comparable" in ch.faithful_verdict(groups["faithful"], ch.comparable(64, 2, 16, 0.3))
    assert ch.comparable(0, 24, 512, ch.ORIGINAL_MAX_LR) and not ch.comparable(3000, 24, 512, ch.ORIGINAL_MAX_LR)


def _fake(label, accs, variant="repaired"):
    runs = []
    for a in accs:
        curve = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "train_acc": [0.3, 0.5],
                              "test_loss": [2.0, 1.0], "test_acc": [a / 200, a / 100]})
        runs.append(ch.UltimusRun(label=label, variant=variant, recipe=ch.working(), params=25_000,
                                  history=train.History(), curve=curve))
    return runs


def test_attention_and_target_verdicts_are_computed_from_the_seeds():
    close = {"repaired": _fake("r", [80.0, 81.0, 82.0]), "repaired_noattn": _fake("c", [80.5, 81.5, 79.5])}
    far = {"repaired": _fake("r", [86.0, 87.0, 86.5]), "repaired_noattn": _fake("c", [80.5, 81.5, 79.5])}
    one = {"repaired": _fake("r", [86.0]), "repaired_noattn": _fake("c", [80.0])}
    assert "does no better than the same network without attention" in ch.attention_adds(close, "repaired")
    assert ch.attention_adds(far, "repaired").startswith("beats the same network without attention by 6.00 points")
    assert "cannot be told apart" in ch.attention_adds(one, "repaired")
    assert "meets ≥ 80 %" in ch.target_sentence(far, "repaired", 80, 5) and "meets ≥ 5 points" in \
        ch.target_sentence(far, "repaired", 80, 5)
    assert "misses ≥ 5 points" in ch.target_sentence(close, "repaired", 80, 5)
    assert "misses ≥ 90 %" in ch.target_sentence(far, "repaired", 90)
    assert ch.faithful_verdict(_fake("f", [12.0, 14.0]), True).startswith("within noise")
    assert ch.faithful_verdict(_fake("f", [18.0, 19.0]), True).startswith("not within")
    groups = {"faithful": _fake("f", [12.0, 13.0]), "low_lr": _fake("l", [24.0, 25.0]),
              "bn_relu": _fake("b", [40.0, 41.0])}
    text = ch.diagnosis_text(groups)
    assert "helps by 12.00 points" in text and "helps by 16.00 points" in text
    assert ch.summarise(groups)["final test acc %"].tolist() == ["12.50 ± 0.71", "24.50 ± 0.71", "40.50 ± 0.71"]


def test_train_runs_and_records_curves():
    data = _data()
    run = ch.train_one(data, "repaired", ch.working(batch_size=32), 2, "cpu", label="rep")
    assert run.history.ok and list(run.curve.epoch) == [1, 2]
    assert run.curve[["train_acc", "test_acc"]].stack().between(0, 1).all() and (run.curve.test_loss > 0).all()
    sched = ch.schedule(ch.original(), 24 * 98)
    peak = int(sched.lr.idxmax())
    assert abs(peak - 5 / 24 * 24 * 98) <= 2 and sched.lr.max() == pytest.approx(ch.ORIGINAL_MAX_LR)
    assert sched.lr.iloc[0] == pytest.approx(ch.ORIGINAL_MAX_LR / 10)
    assert sched.lr.iloc[-1] == pytest.approx(ch.ORIGINAL_MAX_LR / 100, rel=0.05)
    assert isinstance(ch.summarise({"rep": [run]}), pd.DataFrame)
    for name in ch.ABLATIONS:  # every ablation row runs at the lower peak and names one change
        row = ch.ablation(name, 0.02, 512, 0.1)
        assert row.recipe.max_lr == pytest.approx(0.002) and row.variant in U.VARIANTS and row.label
        assert row.key == name and row.on_diverge == "stop"


def test_a_guarded_row_reuses_its_twin_only_when_the_twin_never_crossed():
    data = _data()
    calm = ch.run_grid(data, ch.faithful_rows(1e-3, 16), [0], 1, "cpu", diverge_factor=20)
    assert calm["guarded"][0].history is calm["faithful"][0].history  # the same run, relabelled
    assert calm["guarded"][0].label != calm["faithful"][0].label
    wild = ch.run_grid(data, ch.faithful_rows(0.3, 16), [0], 1, "cpu", diverge_factor=1.5)
    assert wild["guarded"][0].history is not wild["faithful"][0].history
    assert wild["guarded"][0].history.stopped_at is not None


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_result(tmp_path, monkeypatch):
    data = _data(64)
    args = (data, "fixed_spec", ch.working(batch_size=16), 2, "cpu")
    straight = ch.train_one(*args, seed=3)
    calls, real = {"n": 0}, ch.Tally.__call__

    def interrupted(self, out, y):            # a Colab disconnect in epoch 2, after its first checkpoint
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, out, y)

    monkeypatch.setattr(ch.Tally, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ch.train_one(*args, seed=3, checkpoints=str(tmp_path))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    calls["n"] = -100                          # count the steps the resumed run trains
    resumed = ch.train_one(*args, seed=3, checkpoints=str(tmp_path))
    assert calls["n"] + 100 == 4               # only epoch 2's 4 steps: epoch 1 came from the checkpoint
    monkeypatch.undo()
    pd.testing.assert_frame_equal(resumed.curve, straight.curve)
    other = ch.train_one(*args, seed=4, checkpoints=str(tmp_path))     # another seed is another run: its own file
    assert len(list(tmp_path.glob("*.pt"))) == 2 and not other.curve.equals(straight.curve)


def test_prediction_snapshots_leave_training_unchanged_and_make_the_gif(tmp_path):
    """The training GIF's snapshots (the first seed's faithful run through its blow-up, and the repaired run with
    its BatchNorm): the same histories as without them (bit for bit), the expected frames, and the GIF."""
    from PIL import Image

    data = _data()
    rows = ch.faithful_rows(0.3, 16) + ch.repair_rows(0.01, 16, 0.02, 16, which=["repaired"])[:1]   # 4 steps each
    snap = ch.prediction_snapshots(data, 0, 3, n=24)
    on = ch.run_grid(data, rows, [0], 1, "cpu", diverge_factor=1.5, on_step=snap)
    off = ch.run_grid(data, rows, [0], 1, "cpu", diverge_factor=1.5)
    for key in on:
        pd.testing.assert_frame_equal(on[key][0].history.df, off[key][0].history.df, check_exact=True)
        assert off[key][0].snapshots is None
    assert on["faithful"][0].history.diverged_at is not None                     # it goes over the edge
    assert on["guarded"][0].snapshots is None                                      # retrained: not recorded
    for key in ("faithful", "repaired"):
        snaps = on[key][0].snapshots
        assert snaps.at == train.even_steps(4, 3) == [0, 2, 4]
        assert all(f.shape == (24,) and f.dtype == np.uint8 and f.max() < 10 for f in snaps.frames)
    assert ch.steps_per_epoch(64, 16, "cpu") == 4 and ch.steps_per_epoch(70, 16, "cpu") == 5
    assert ch.steps_per_epoch(70, 16, "cpu", fast=True) == 4                        # compiled: the last batch dropped
    path = ch.training_gif(on, data, tmp_path / "training.gif", diverge_factor=1.5)
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.size[0] >= 320


def test_an_unknown_optimiser_name_is_refused_not_replaced_by_adam():
    import pytest

    with pytest.raises(ValueError, match="optimizer='adamw_' is not allowed"):
        ch.Recipe("typo", optimizer="adamw_")
    assert type(ch.working().optimizer_for([torch.nn.Parameter(torch.zeros(1))])) is torch.optim.AdamW
    assert type(ch.original().optimizer_for([torch.nn.Parameter(torch.zeros(1))])) is torch.optim.Adam


def test_glue_declares_each_key_pattern_once_and_fills_the_rows_that_did_not_run():
    from nbhelpers import results, seeds as S

    res = results.Results("04_ultimus")
    ch.glue(res, {"repaired": _fake("r", [80.0, 82.0])}, ch.repair_rows(0.01, 512, 0.02, 256, which=["repaired"]))
    v = res.values
    assert v["repaired_final"] == S.pm(ch.finals(_fake("r", [80.0, 82.0]))) and v["repaired_params"] == 25_000
    assert v["repaired_noattn_final"] == v["repaired_noattn_max"] == v["repaired_noattn_outcome"] == "—"
    assert math.isnan(v["repaired_noattn_final_mean"])
    assert v["repaired_noattn_params"] == train.count_params(U.build("repaired_noattn"))
    assert sorted(res.patterns) == sorted(f"{{key}}_{k}" for k in ("final", "final_mean", "max", "outcome", "params"))
    assert all(keys == [f"repaired_noattn_{p[6:]}", f"repaired_{p[6:]}"] for p, keys in res.patterns.items())


def test_the_range_tests_spans_are_validated():
    ok = {"range_start": 1e-6, "range_end": 0.1, "proper_range_end": 10.0}
    ch._validate(ok)
    for bad in ({"range_end": 1e-7}, {"proper_range_end": 1e-6}):
        with pytest.raises(ValueError, match="range_start < range_end and < proper_range_end"):
            ch._validate(ok | bad)
