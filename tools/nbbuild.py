"""Tiny helper to write an output-free notebook from (kind, source[, tags]) cells: used to author chapters."""
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]  # the one place it is kept


def write(path, cells, gpu: bool = False):
    """``gpu``: ask Colab for a GPU runtime (its accelerator metadata) when the notebook is opened there."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    if gpu:
        nb.metadata |= {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}
    for i, cell in enumerate(cells):
        kind, src, *tags = cell
        c = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(src.strip("\n"))
        if tags:
            c.metadata["tags"] = list(tags[0])
        c["id"] = f"c{i:02d}"
        nb.cells.append(c)
    nbformat.validator.normalize(nb)
    nbformat.write(nb, path)


# The set-up cell: in Colab, or a Jupyter outside this repository, it installs nbhelpers pinned to BOOK_REF (the
# runner writes the commit it executed into the book's copies) and fails loudly if that does not work.
COLAB = ("code", f'''
# Set-up: make nbhelpers importable. Inside the repository (pip install -e .) this does nothing; in Colab or any
# other Jupyter it installs the package from the book's repository at BOOK_REF, and stops here if that fails.
BOOK_REF = "main"  # the commit or tag the book was built from (the book's own copies carry the exact commit)
import importlib.util, subprocess, sys
if importlib.util.find_spec("nbhelpers") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"nbhelpers @ git+{REPO_URL}@{{BOOK_REF}}"], check=True)
    importlib.invalidate_caches()
    import nbhelpers  # noqa: F401  (raises now, not ten cells later, if the install did not work)
''', ["colab-setup", "remove-cell"])  # hidden in the book (remove-cell), kept in the notebook


def wide_tables(nb) -> list[str]:
    """Tag every result-table cell full-width (its output spans the margin too), so no table scrolls sideways at
    1280 px (the browser test checks). A table cell: one that records a table or ends by showing a styled one."""
    out = []
    for c in nb.cells:
        last = c.source.strip().splitlines()[-1] if c.cell_type == "code" and c.source.strip() else ""
        if c.cell_type == "code" and ("res.table(" in c.source or "styled" in last or ".style" in last):
            tags = c.metadata.get("tags", [])
            if "full-width" not in tags:
                c.metadata["tags"] = tags + ["full-width"]
            out.append(c.get("id"))
    return out


def figure(nb, match: str, alt: str, caption: str) -> None:
    """Alt text and a caption (myst-nb's cell metadata) for the figure drawn by the code cell whose source
    contains ``match``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and match in c.source]
    if len(cells) != 1:
        raise ValueError(f"{len(cells)} code cells contain {match!r}: expected exactly one")
    cells[0].metadata["mystnb"] = {"image": {"alt": alt}, "figure": {"caption": caption}}
