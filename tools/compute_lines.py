"""Write each chapter's "what a rerun costs" line (in its first markdown cell) from book/compute.yml.

    python tools/compute_lines.py   # after editing book/compute.yml (tools/ch03_notebook.py calls it for chapter 3)
"""
import re
import textwrap
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- cost: from book/compute.yml (tools/compute_lines.py) -->", "<!-- /cost -->"


def line(costs: dict) -> str:
    parts = []
    for profile in ("smoke", "quick", "full"):
        c = costs[profile]
        parts.append(f"**{profile}** {c['cpu']}" + (f"; Colab T4: {c['t4']}" if "t4" in c else ""))
    text = ("What a rerun costs (on a 2-core CPU, measured; on a Colab T4, derived): " + " · ".join(parts)
            + ". Choose the size in the parameters cell: `profile: str = \"quick\"`.")
    return f"{START}\n" + textwrap.fill(text, 116) + f"\n{END}"


def apply(nb, stem: str) -> None:
    """Put (or replace) the cost line at the end of the notebook's first markdown cell."""
    costs = yaml.safe_load((ROOT / "book" / "compute.yml").read_text())[stem]
    cell = next(c for c in nb.cells if c.cell_type == "markdown")
    text = re.sub(re.escape(START) + r".*?" + re.escape(END), "", cell.source, flags=re.S).rstrip()
    cell.source = f"{text}\n\n{line(costs)}"


def main() -> None:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, 4)
        apply(nb, path.stem)
        nbformat.write(nb, path)
        print(f"wrote the cost line of {path.name}")


if __name__ == "__main__":
    main()
