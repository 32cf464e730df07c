import numpy as np
import pytest
import torch

from nbhelpers.data import images
from nbhelpers.experiments import vision as E
from nbhelpers.models import vision as V

MNIST, CIFAR = (28, 28, 1), (32, 32, 3)


@pytest.mark.parametrize("name, shape, classes, expected", [
    ("cnn", MNIST, 10, 1_199_882), ("cnn", CIFAR, 10, 1_626_442), ("cnn", CIFAR, 100, 1_638_052),
    ("vit", MNIST, 10, 1_614_866), ("vit", CIFAR, 10, 1_812_106), ("vit", CIFAR, 100, 1_823_716),
])
def test_bug_compatible_parameter_counts_match_the_original(name, shape, classes, expected):
    assert V.count_params(V.build(name, shape, classes, bug_compatible=True)) == expected


@pytest.mark.parametrize("name, shape, bug, tokens", [
    ("vit", MNIST, True, 4), ("vit", CIFAR, True, 4), ("deepvit", CIFAR, True, 4), ("hybrid", MNIST, True, 4),
    ("vit", MNIST, False, 49), ("vit", CIFAR, False, 64), ("deepvit", MNIST, False, 49),
    ("hybrid", MNIST, False, 36), ("hybrid", CIFAR, False, 49),
])
def test_token_counts(name, shape, bug, tokens):
    assert V.num_tokens(V.build(name, shape, 10, bug_compatible=bug), shape) == tokens


def test_corrected_models_run_and_stay_in_budget():
    x = torch.randn(2, 3, 32, 32)
    for name in V.MODELS:
        m = V.build(name, CIFAR, 100, bug_compatible=False)
        assert m(x).shape == (2, 100) and V.count_params(m) <= 1_800_000


def test_sqrt_d_switch_changes_attention_only_by_scale():
    torch.manual_seed(0)
    m = V.build("vit", MNIST, 10, bug_compatible=False).eval()
    x = torch.randn(2, 1, 28, 28)
    before = m(x)
    assert V.set_attention_scale(m, scaled=False) == 6
    assert all(a.scale == 1.0 for a in m.modules() if hasattr(a, "to_qkv"))
    assert not torch.allclose(before, m(x))
    V.set_attention_scale(m, scaled=True)
    torch.testing.assert_close(before, m(x))


def test_train_model_on_tiny_synthetic_data():
    rng = np.random.default_rng(0)
    data = images.ImageData("mnist", rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 64),
                            rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 32),
                            [str(i) for i in range(10)])
    run = E.train_model(data, "vit", E.REPAIRED, 2, "cpu", bug_compatible=False)
    assert list(run.curve.epoch) == [1, 2] and run.curve.test_acc.between(0, 1).all() and run.tokens == 49
    E.time_runs([run], {"mnist": data}, "cpu", n=8, reps=1)
    assert run.timing["ms_per_1000"] > 0
    att = E.cls_attention(run.model, torch.randn(3, 1, 28, 28))
    assert att.shape == (3, 7, 7)


def test_all_datasets_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NBHELPERS_DATA", str(tmp_path))
    monkeypatch.setattr(images, "load", lambda name, **kw: (_ for _ in ()).throw(images.DataUnavailable(name)))
    with pytest.raises(images.DataUnavailable, match="NBHELPERS_DATA"):
        E.load_datasets("all")
