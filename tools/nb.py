"""Normalise the chapter notebooks after editing them: ``make nb`` (the pre-commit hook runs ``--check``).

For every notebook (or the ones named):
- outputs, execution counts and run metadata (papermill's, execution timings) are stripped;
- the first code cell is the set-up cell, regenerated from ``tools/nbbuild.py``'s ``COLAB`` (tags included);
- result-table cells are tagged ``full-width`` (``nbbuild.wide_tables``); every cell has an id;
- the opening "what a rerun costs" line is rewritten from ``book/compute.yml`` (``compute_lines``);
and ``nbhelpers/profiles/full.yml`` is rewritten from the parameters cells (``full_profile``).

    python tools/nb.py                       # normalise every notebook (what `make nb` runs)
    python tools/nb.py notebooks/05_*.ipynb  # only these
    python tools/nb.py --check               # change nothing; exit 1 naming what is not normalised
"""
import argparse
import sys
import uuid
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).parent))
import compute_lines  # noqa: E402
import full_profile  # noqa: E402
import nbbuild  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_METADATA = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")


def normalised(path: Path) -> str:
    """The notebook's text in normal form."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup_kind, setup_source, setup_tags = nbbuild.COLAB
    setup_source = setup_source.strip("\n")
    if code and "colab-setup" in code[0].metadata.get("tags", []):
        code[0].source = setup_source
    else:   # a new chapter: insert it before the first code cell
        cell = nbformat.v4.new_code_cell(setup_source)
        nb.cells.insert(nb.cells.index(code[0]) if code else len(nb.cells), cell)
        code.insert(0, cell)
    code[0].metadata["tags"] = list(setup_tags)
    for c in nb.cells:
        for key in RUN_METADATA:
            c.metadata.pop(key, None)
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
        if not c.get("id"):
            c["id"] = uuid.uuid4().hex[:8]
    nbbuild.wide_tables(nb)
    compute_lines.apply(nb, path.stem)
    nbformat.validator.normalize(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is not normalised")
    a = ap.parse_args(argv)
    paths = a.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    stale = []
    for path in paths:
        text = normalised(path)
        if text != path.read_text():
            stale.append(str(path))
            if not a.check:
                path.write_text(text)
    profile = full_profile.render()
    if profile != full_profile.TARGET.read_text():
        stale.append(str(full_profile.TARGET))
        if not a.check:
            full_profile.TARGET.write_text(profile)
    for s in stale:
        print(("not normalised: " if a.check else "normalised: ") + s)
    if a.check and stale:
        print("run `make nb` (python tools/nb.py)", file=sys.stderr)
    return 1 if a.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
