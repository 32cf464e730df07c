"""Write nbhelpers/profiles/full.yml from every notebook's parameters cell (run after changing a default).

The notebooks' parameters cells are the full-size defaults; the package ships them so that a notebook run
anywhere (Colab, plain papermill) knows which values the user changed (nbhelpers.params). A test checks the file.

    python tools/full_profile.py
"""
import ast
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
HEAD = ("# full: the original experiments at their own sizes — the defaults of every notebook's parameters cell.\n"
        "# Written by tools/full_profile.py from the notebooks; a test keeps the two equal.\n")


TARGET = ROOT / "nbhelpers" / "profiles" / "full.yml"


def render() -> str:
    """The file's text from the notebooks' parameters cells."""
    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cell = next(c for c in nbformat.read(path, 4).cells if "parameters" in c.metadata.get("tags", []))
        out[path.stem] = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
                          if isinstance(n, ast.AnnAssign)}
    return HEAD + yaml.safe_dump(out, sort_keys=False, width=120, default_flow_style=None)


def main() -> None:
    TARGET.write_text(render())
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
