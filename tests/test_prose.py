"""Book-wide rule: no result number is typed in a chapter's prose; each is glued from the run."""
import json
from pathlib import Path

import pytest
import yaml

from prose_scan import numbers

ROOT = Path(__file__).resolve().parents[1]
FACTS = yaml.safe_load((ROOT / "tests" / "prose_facts.yml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_typed_numbers_outside_the_fixed_facts(nb):
    allowed = {str(x) for x in FACTS.get(nb.stem, [])}
    typed = {n: lines for n, lines in numbers(nb).items() if n not in allowed}
    assert not typed, (f"{nb.name}: numbers typed in the prose — glue them from the run, or (only for a fixed fact "
                       f"such as an original's published number) list them in tests/prose_facts.yml: "
                       + "; ".join(f"{n!r} in {lines[0][:90]!r}" for n, lines in typed.items()))


def test_the_scan_sees_a_typed_result_and_ignores_glue_code_and_math(tmp_path):
    cell = {"cell_type": "markdown", "metadata": {}, "source": [
        "# 3 · A chapter\n", "The model reaches 93.4 % ({glue:text}`acc:.2f` glued), `lr = 0.5` in code, "
        "$e^{2.5}$ in math, [a link](https://x.org/v1.2).\n"]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": [cell]}))
    assert set(numbers(path)) == {"93.4"}
