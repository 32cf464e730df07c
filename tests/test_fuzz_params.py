"""Parameter fuzzing: for every declared parameter of every notebook, a wrong type, an out-of-range value and a
misspelt name each fail in the notebook's own validation code (the cell after ``parameters``, up to and including
its ``params.check``), before any data loading or training, with a message naming the parameter."""
import ast
import json
from pathlib import Path

import pytest

from nbhelpers.chapter import checking_only, is_opening

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(nb_path):
    cells = json.loads(nb_path.read_text())["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    validation = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
    return "".join(cells[i]["source"]), "".join(validation["source"])


def _check_prefix(src: str) -> str:
    """The validation cell's statements up to and including the one that calls params.check."""
    tree = ast.parse(src)
    for k, stmt in enumerate(tree.body):
        if is_opening(stmt):
            return ast.unparse(ast.Module(body=tree.body[:k + 1], type_ignores=[]))
    raise AssertionError("the validation cell does not call params.check")


def _bad_values(default):
    """(wrong type, out of range) for a parameter's default."""
    if isinstance(default, bool):
        return "yes", 2
    if isinstance(default, int):
        return "many", -10**12
    if isinstance(default, float):
        return "lots", -1e12
    if isinstance(default, str):
        return 3.5, "no-such-value" if default else None   # "" is free text (a folder): only its type is checked
    if isinstance(default, list):
        return 3.5, ["no-such-value"]
    raise AssertionError(f"unexpected parameter type {type(default)}")


CASES = []
for nb in NOTEBOOKS:
    p_src, v_src = _cells(nb)
    defaults = {}
    exec(p_src, {}, defaults)
    for name, default in defaults.items():
        if name.startswith("_"):          # __annotations__ of the typed parameters cell
            continue
        wrong_type, out_of_range = _bad_values(default)
        CASES += [(nb, name, "wrong type", wrong_type)]
        CASES += [(nb, name, "out of range", out_of_range)] if out_of_range is not None else []
    CASES.append((nb, "misspelt", "misspelt name", None))


@pytest.mark.parametrize("nb, name, case, value", CASES, ids=[f"{c[0].stem}-{c[1]}-{c[2]}" for c in CASES])
def test_bad_parameter_fails_before_compute(nb, name, case, value):
    p_src, v_src = _cells(nb)
    namespace = {"__name__": "__fuzz__"}
    exec(p_src, namespace)
    if case == "misspelt name":
        first = next(k for k in namespace if not k.startswith("_"))
        name = first[:-1] + first[-1] * 2  # e.g. seed -> seedd
        namespace[name] = namespace[first]
    else:
        namespace[name] = value
    with pytest.raises(ValueError) as e, checking_only():   # a check that passed would raise Checked, not run on
        exec(_check_prefix(v_src), namespace)
    assert name in str(e.value), str(e.value)
    assert "expected" in str(e.value) or "accepts" in str(e.value)


def test_fuzz_covers_every_parameter():
    print(f"fuzzed {len(CASES)} cases over {len(NOTEBOOKS)} notebooks")
    assert len(CASES) >= 3 * len(NOTEBOOKS)
