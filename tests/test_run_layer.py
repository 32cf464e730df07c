"""The run layer every chapter shares: the opening call, optimiser/schedule factories, eval mode, the per-epoch
curve, the grid loop and glue key patterns."""
import json

import pandas as pd
import pytest
import torch

from nbhelpers import chapter, params, results, train


def test_optimizer_and_schedule_refuse_unknown_names():
    w = [torch.zeros(2, requires_grad=True)]
    assert isinstance(train.optimizer("adamw", w, lr=0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer='adamx' is not allowed; choose one of adam, adamw, sgd"):
        train.optimizer("adamx", w, lr=0.1)
    opt = train.optimizer("sgd", w, lr=1.0)
    with pytest.raises(ValueError, match="schedule='one-cycle' is not allowed"):
        train.schedule("one-cycle", opt, 10)
    assert train.schedule("none", opt, 10) == (None, "step")
    sched, unit = train.schedule("triangle", opt, 100)
    assert unit == "step" and opt.param_groups[0]["lr"] == pytest.approx(0.2)
    for _ in range(23):
        opt.step(), sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    assert train.schedule("step", opt, 10)[1] == "epoch"


@pytest.mark.parametrize("mode", [True, False])
def test_evaluating_restores_the_previous_mode_even_after_an_error(mode):
    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).train(mode)
    with pytest.raises(RuntimeError), train.evaluating(model) as m:
        assert m is model and not model.training
        raise RuntimeError
    assert model.training is mode


def test_epoch_curve_and_grid():
    h = train.History(rows=[{"epoch": e, "step": i, "train_loss": float(i)} for i, e in enumerate([0, 0, 1, 1])])
    curve = train.epoch_curve(h, train_loss=("train_loss", "mean"), last=("step", "last"))
    assert curve.to_dict("list") == {"epoch": [1, 2], "train_loss": [0.5, 2.5], "last": [1, 3]}
    assert list(train.epoch_curve(train.History(), x=("x", "mean")).columns) == ["epoch", "x"]
    assert train.epoch_curve(h, acc=("test_acc", "last")).acc.isna().all()   # never evaluated: NaN, not KeyError
    assert train.grid([(1, 2), (3, 4)], lambda a, b: a * b, progress=False) == [2, 12]
    assert train.grid([5], lambda a: -a, progress=False) == [-5]


def test_glue_rows_declares_the_pattern_once_and_records_its_keys(tmp_path):
    res = results.Results("99_test")
    df = pd.DataFrame({"dataset": ["spiral", "xor"], "model": ["heads", "mlp"], "acc": [98.5, 97.0]})
    keys = res.glue_rows(df, "{dataset}_{model}_acc", "acc")
    assert keys == ["spiral_heads_acc", "xor_mlp_acc"] and res.values["xor_mlp_acc"] == 97.0
    res.glue_rows(df.set_index("dataset"), "{dataset}_word", lambda r: "high" if r.acc > 98 else None)
    assert res.values["spiral_word"] == "high" and "xor_word" not in res.values
    saved = json.loads(res.save(tmp_path).read_text())
    assert saved["patterns"] == {"{dataset}_{model}_acc": keys, "{dataset}_word": ["spiral_word"]}
    with pytest.raises(ValueError, match="used twice"):
        res.glue_rows(df, "{dataset}_{model}_acc", "acc")


def test_chapter_name_comes_from_the_package():
    assert chapter.name_of("nbhelpers.chapters.ch05_activations.experiment") == "05_activations"
    assert chapter.name_of("nbhelpers.chapters.ch01_toy_attention") == "01_toy_attention"
    with pytest.raises(ValueError, match="not a chapter module"):
        chapter.name_of("nbhelpers.train")


def test_start_checks_validates_before_seeding_then_opens_the_run(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(chapter.runtime, "seed_everything", lambda seed: calls.append(("seed", seed)))
    ns = {"profile": "full", "seed": 3, "device": "cpu", "seeds": 2, "lr": 0.1}

    def validate(p):
        calls.append(("validate", p["lr"]))

    book = chapter.start(ns, "nbhelpers.chapters.ch05_activations.experiment", validate=validate,
                         seeds=params.Int(1, 9), lr=params.Float(0, 1))
    assert calls == [("validate", 0.1), ("seed", 3)]
    assert (book.name, book.seeds, book.res.chapter, book.run.seed) == ("05_activations", [3, 4], "05_activations", 3)
    assert "Run: profile full" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown parameter"):
        chapter.start({**ns, "lrr": 1}, "nbhelpers.chapters.ch05_activations", seeds=params.Int(1, 9),
                      lr=params.Float(0, 1))


def test_checking_only_stops_after_the_parameters_pass(monkeypatch):
    monkeypatch.setattr(chapter.runtime, "start", lambda *a: pytest.fail("start seeded a run while checking only"))
    ns = {"profile": "full", "seed": 0, "device": "cpu"}
    with pytest.raises(chapter.Checked), chapter.checking_only():
        chapter.start(ns, "nbhelpers.chapters.ch05_activations")
    import ast
    assert chapter.is_opening(ast.parse("book = ch.start(globals(), n=params.Int(1, 2))").body[0])
    assert chapter.is_opening(ast.parse("P = params.check(globals(), 'x')").body[0])
    assert not chapter.is_opening(ast.parse("run = runtime.start(profile, seed)").body[0])
