"""Tiny helper to write an output-free notebook from (kind, source[, tags]) cells: used to author chapters."""
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]  # the one place it is kept


def write(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    for i, cell in enumerate(cells):
        kind, src, *tags = cell
        c = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(src.strip("\n"))
        if tags:
            c.metadata["tags"] = list(tags[0])
        c["id"] = f"c{i:02d}"
        nb.cells.append(c)
    nbformat.validator.normalize(nb)
    nbformat.write(nb, path)


COLAB = ("code", f'''
# Colab set-up: installs nbhelpers from the book's repository when running in Google Colab (no-op elsewhere).
import sys
if "google.colab" in sys.modules:
    %pip install -q "nbhelpers @ git+{REPO_URL}"
''', ["colab-setup"])
