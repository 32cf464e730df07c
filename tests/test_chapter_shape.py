"""Every chapter has the same shape: a notebook `notebooks/NN_<name>.ipynb`, its package
`nbhelpers/chapters/chNN_<name>/` with the same verbs, a run record built on `train.Run`, one opening call, and a
test file `tests/test_chNN_<name>.py`; the notebooks are normalised (`make nb`), the code passes ruff, and nothing
points at files outside the repository."""
import ast
import dataclasses
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbhelpers import train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
VERBS = ("start", "load", "train_one", "run_grid", "summarise", "glue")


def _opening_cell(path):
    cells = json.loads(path.read_text())["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    return "".join(next(c for c in cells[i + 1:] if c["cell_type"] == "code")["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_package_verbs_record_opening_and_tests(path):
    package = f"nbhelpers.chapters.ch{path.stem}"
    exp = importlib.import_module(f"{package}.experiment")
    missing = [v for v in VERBS if not callable(getattr(exp, v, None))]
    assert not missing, f"{package}.experiment lacks {missing}"
    records = [c for c in vars(exp).values() if isinstance(c, type) and c.__module__ == exp.__name__
               and dataclasses.is_dataclass(c) and issubclass(c, train.Run)]
    assert records, f"{package}.experiment has no run record built on train.Run"
    src = _opening_cell(path)
    assert f"from {package} import experiment as ch" in src
    assert any(isinstance(n, ast.Call) and ast.unparse(n.func) == "ch.start" and ast.unparse(n.args[0]) == "globals()"
               for n in ast.walk(ast.parse(src))), "the opening cell must call ch.start(globals(), ...)"
    for old in ("params.check(", "runtime.start(", "results.Results("):
        assert old not in src, f"the opening cell still calls {old}...) itself"
    assert (ROOT / "tests" / f"test_ch{path.stem}.py").is_file()


def test_every_chapter_package_has_its_notebook():
    packages = {p.name for p in (ROOT / "nbhelpers" / "chapters").glob("ch[0-9][0-9]_*") if p.is_dir()}
    assert packages == {f"ch{p.stem}" for p in NOTEBOOKS}


def test_notebooks_are_normalised(tmp_path):
    proc = subprocess.run([sys.executable, "tools/nb.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and a notebook saved from Jupyter with outputs and an edited set-up cell is put back in shape
    dirty = tmp_path / NOTEBOOKS[-1].name
    nb = json.loads(NOTEBOOKS[-1].read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code[0]["source"] = ["BOOK_REF = 'something else'\n"]
    code[1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    code[1]["execution_count"] = 3
    dirty.write_text(json.dumps(nb))
    check = subprocess.run([sys.executable, "tools/nb.py", "--check", str(dirty)], cwd=ROOT, capture_output=True,
                           text=True)
    assert check.returncode == 1 and "not normalised" in check.stdout
    subprocess.run([sys.executable, "tools/nb.py", str(dirty)], cwd=ROOT, check=True, capture_output=True)
    assert dirty.read_text() == NOTEBOOKS[-1].read_text()


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "--output-format", "concise"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_no_reference_to_files_outside_the_repository():
    outside = re.compile(r"DESIGN\.md|\bSPEC\b|\.\./shared/(?!data)")
    files = [*ROOT.glob("nbhelpers/**/*.py"), *NOTEBOOKS, *ROOT.glob("tools/*.py"), *ROOT.glob("bench/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("tests/*.yml"), ROOT / "README.md", *ROOT.glob("book/*.md")]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files if p != Path(__file__)
            for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, f"references to files outside the repository (use docs/originals.md): {hits[:10]}"
