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


# ---------------------------------------------------------------- profiles, re-runs and the parameters cell

SPECS = dict(profile=params.Choice("full", "quick", "smoke"), seed=params.Int(0, 9), seeds=params.Int(1, 20),
             n_train=params.Int(0, 10**6))
CELL = 'profile: str = "{profile}"\nseed: int = 0\nseeds: int = {seeds}\nn_train: int = 500'


@pytest.fixture
def chapter(tmp_path, monkeypatch):
    """A fake chapter 'xx' whose full size is seeds 5, n_train 500 and whose quick profile is seeds 3, n_train 64."""
    (tmp_path / "full.yml").write_text("xx: {profile: full, seed: 0, seeds: 5, n_train: 500}\n")
    (tmp_path / "quick.yml").write_text("xx: {seeds: 3, n_train: 64}\n")
    (tmp_path / "smoke.yml").write_text("{}\n")
    monkeypatch.setattr(params, "PROFILE_DIR", tmp_path)
    return "xx"


def notebook(*cells):
    """A namespace as IPython leaves it after running ``cells`` (the last one is the check cell)."""
    space = {"In": ["", *cells, "P = params.check(...)"], "Out": {}}
    for c in cells:
        exec(c, {}, space)
    return space


def test_the_profile_fills_what_the_user_did_not_set(chapter):
    space = notebook(CELL.format(profile="quick", seeds=5))             # Colab: only profile edited
    out = params.check(space, chapter, **SPECS)
    assert (out["seeds"], out["n_train"]) == (3, 64) and space["seeds"] == 3
    assert params.last_origins == {"profile": "set", "seed": "default", "seeds": "profile quick",
                                   "n_train": "profile quick"}
    space = notebook(CELL.format(profile="quick", seeds=2))             # the user's own seeds win
    out = params.check(space, chapter, **SPECS)
    assert (out["seeds"], out["n_train"]) == (2, 64) and params.last_origins["seeds"] == "set"


def test_papermill_values_win_over_the_profile(chapter):
    injected = '# Parameters\nprofile = "quick"\nseeds = 5\n'              # -p seeds 5: equal to full, still set
    out = params.check(notebook(CELL.format(profile="full", seeds=5), injected), chapter, **SPECS)
    assert (out["seeds"], out["n_train"]) == (5, 64) and params.last_origins["seeds"] == "set"
    out = params.check(notebook(CELL.format(profile="full", seeds=5)), chapter, **SPECS)
    assert (out["seeds"], out["n_train"]) == (5, 500)                   # full: the cell's defaults


def test_rerunning_the_check_cell_works_and_a_typo_is_still_caught(chapter):
    space = notebook(CELL.format(profile="quick", seeds=5))
    params.check(space, chapter, **SPECS)
    space.update(DATASETS=["spiral"], SEEDS=[0, 1], res=object(), P={})   # what later cells make
    space["In"] += ["DATASETS = ['spiral']", "P = params.check(...)"]
    assert params.check(space, chapter, **SPECS)["seeds"] == 3
    typo = notebook(CELL.format(profile="quick", seeds=5) + "\nsedds: int = 2")
    with pytest.raises(ValueError, match="sedds .did you mean 'seeds'"):
        params.check(typo, chapter, **SPECS)
    with pytest.raises(ValueError, match="unknown parameter.*n_trian"):
        params.check(notebook(CELL.format(profile="full", seeds=5), "# Parameters\nn_trian = 3\n"), chapter, **SPECS)


def test_old_names_are_refused_with_their_new_name():
    with pytest.raises(ValueError, match=r"dataset \(renamed datasets\)"):
        params.check(ns(datasets="all", dataset="spiral"), datasets=params.Choice("all", "spiral"))


def test_full_profile_is_every_notebooks_parameters_cell_and_every_parameter_is_typed():
    import ast
    from pathlib import Path

    import nbformat
    import papermill
    import yaml

    full = yaml.safe_load((params.PROFILE_DIR / "full.yml").read_text())
    notebooks = sorted(Path(__file__).resolve().parents[1].glob("notebooks/*.ipynb"))
    assert notebooks and set(full) == {p.stem for p in notebooks}
    for path in notebooks:
        cell = next(c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", []))
        body = ast.parse(cell.source).body
        untyped = [ast.unparse(n) for n in body if not isinstance(n, ast.AnnAssign)]
        assert not untyped, f"{path.name}: give every parameter a type annotation (papermill --help-notebook)"
        values = {n.target.id: ast.literal_eval(n.value) for n in body}
        seen = papermill.inspect_notebook(str(path))             # what --help-notebook shows
        assert set(seen) == set(values), f"{path.name}: papermill cannot read {set(values) - set(seen)}"
        assert all(p["inferred_type_name"] not in ("None", "Unknown type") for p in seen.values()), path.name
        assert values == full[path.stem], f"{path.stem}: nbhelpers/profiles/full.yml differs from the parameters cell"
        for profile in ("quick", "smoke"):
            extra = set(params.profile_values(profile, path.stem)) - set(values)
            assert not extra, f"{profile}.yml sets {extra}, which {path.stem} does not declare"
