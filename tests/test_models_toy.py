import pytest
import torch

from nbhelpers.models import toy


@pytest.mark.parametrize("name, n_out, expected", [
    ("heads", 1, 33), ("mlp", 1, 105), ("relu_mlp", 1, 33), ("heads", 2, 42), ("mlp", 2, 114), ("relu_mlp", 2, 42),
])
def test_parameter_counts(name, n_out, expected):
    assert toy.count_params(toy.build(name, n_out, n_embd=8)) == expected


@pytest.mark.parametrize("name", toy.MODELS)
def test_output_and_hidden_shapes(name):
    model = toy.build(name, 2)
    x = torch.randn(7, 2)
    assert model(x).shape == (7, 2)
    for h in model.hidden(x).values():
        assert h.shape[0] == 7 and h.ndim == 2


def test_heads_rejects_indivisible_embedding():
    with pytest.raises(ValueError, match="n_embd .*n_head"):
        toy.Heads(n_embd=8, n_head=3)


def test_heads_attention_is_a_softmax_over_slices():
    model = toy.Heads(n_embd=8, n_head=4)
    att = model.attention(torch.randn(5, 2))
    assert att.shape == (5, 4, 4)
    torch.testing.assert_close(att.sum(-1), torch.ones(5, 4))
    # no projections: Q = K = V = the slice, so the forward equals attention @ slices by hand
    x = torch.randn(3, 2)
    t = model.embed(x).view(3, 4, 2)
    mixed = (torch.softmax(t @ t.transpose(1, 2) / 2 ** 0.5, -1) @ t).flatten(1)
    torch.testing.assert_close(model(x), model.out(mixed))


def test_init_is_small_normal_with_zero_bias():
    torch.manual_seed(0)
    m = toy.Heads(n_embd=512, n_head=8)
    assert abs(m.embed.weight.std().item() - 0.02) < 0.003 and m.embed.bias.abs().max() == 0


def test_unknown_model_name():
    with pytest.raises(ValueError, match="heads, mlp, relu_mlp"):
        toy.build("transformer", 1)
