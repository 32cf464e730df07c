"""Numbers typed in the chapters' prose (markdown cells), outside glue roles, inline code, math and link targets.

Used by tests/test_prose.py: every such number must be a fixed fact listed in tests/prose_facts.yml (the originals'
published numbers and settings from docs/originals.md, sizes, arithmetic); a result of our runs must be glued instead.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
CODE = re.compile(r"`[^`]*`")
MATH = re.compile(r"\$[^$]*\$")
LINK = re.compile(r"\]\([^)]*\)|https?://\S+")
HEADING_NUMBER = re.compile(r"^(#+\s*)\d+(\s*·)?")
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
# the opening "what a rerun costs" line is written from book/compute.yml (tests/test_notebooks.py checks it)
COST = re.compile(r"<!-- cost:.*?<!-- /cost -->", re.S)


def numbers(nb_path: Path) -> dict[str, list[str]]:
    """{number as typed (trailing comma/period dropped): [lines it appears on]} over the markdown cells."""
    cells = json.loads(Path(nb_path).read_text())["cells"]
    found: dict[str, list[str]] = {}
    for c in cells:
        if c["cell_type"] != "markdown":
            continue
        text = "".join(c["source"])
        for rx in (COST, GLUE, CODE, MATH, LINK):
            text = rx.sub(" ", text)
        for line in text.splitlines():
            line = HEADING_NUMBER.sub(r"\1", line)
            for m in NUMBER.finditer(line):
                found.setdefault(m.group().rstrip(",."), []).append(line.strip())
    return found
