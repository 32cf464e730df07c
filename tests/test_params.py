import pytest

from nbhelpers import params


def ns(**kw):
    return {"In": [], "Out": {}, "get_ipython": print, "sys": params, **kw}


def test_valid_values_pass_and_are_cleaned():
    space = ns(dataset="spiral", n=3, lr=1, flag=True)
    out = params.check(space, dataset=params.Choice("all", "spiral", many=True),
                       n=params.Int(1, 5), lr=params.Float(0, 2), flag=params.Bool())
    assert out == {"dataset": ["spiral"], "n": 3, "lr": 1.0, "flag": True}
    # written back: a notebook that loops over the parameter itself sees the list, not the string's letters
    assert space["dataset"] == ["spiral"] and space["lr"] == 1.0


@pytest.mark.parametrize("value, spec, fragment", [
    ("nope", params.Choice("plane", "spiral"), "'plane', 'spiral'"),
    (["spiral", "nope"], params.Choice("spiral", "xor", many=True), "'spiral', 'xor'"),
    ([], params.Choice("spiral", many=True), "one of"),  # empty only where a notebook allows it (empty=True)
    ("3", params.Int(1, 5), "integer in [1, 5]"),
    (True, params.Int(0, 5), "integer"),
    (9, params.Int(1, 5), "integer in [1, 5]"),
    (2.5, params.Int(1, 5), "integer"),
    ("x", params.Float(0, 1), "number in [0, 1]"),
    (float("nan"), params.Float(0, 1), "number"),
    (-1.0, params.Float(0, 1), "number in [0, 1]"),
    ("yes", params.Bool(), "True or False"),
])
def test_bad_values_name_the_parameter_and_what_is_allowed(value, spec, fragment):
    with pytest.raises(ValueError) as e:
        params.check(ns(p=value), p=spec)
    assert "parameter p=" in str(e.value) and fragment in str(e.value)


def test_choice_suggests_close_match():
    with pytest.raises(ValueError, match="did you mean 'spiral'"):
        params.check(ns(d="spirl"), d=params.Choice("spiral", "circle"))


def test_unknown_injected_name_is_rejected():
    with pytest.raises(ValueError, match="unknown parameter.*datset.*accepts: dataset"):
        params.check(ns(dataset="spiral", datset="xor"), dataset=params.Choice("spiral", "xor"))


def test_common_parameters():
    out = params.check(ns(profile="quick", seed=3, device="cpu"), **params.common())
    assert out["seed"] == 3
    with pytest.raises(ValueError, match="device"):
        params.check(ns(profile="quick", seed=3, device="tpu"), **params.common())


def test_an_empty_list_only_where_the_notebook_allows_it():
    assert params.Choice("a", "b", many=True, empty=True)("rows", []) == []
    with pytest.raises(ValueError, match="or a list of them"):
        params.Choice("a", "b", many=True)("rows", [])
