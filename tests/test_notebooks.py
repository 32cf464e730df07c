"""Committed notebooks are clean sources; the smoke run of every chapter produces a complete book."""
import hashlib
import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO_URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def _digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


SOURCE_DIGEST = _digest(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_an_output_free_source(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and not c.get("execution_count") for c in code)
    assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]) == 1
    first = "".join(code[0]["source"])
    assert "colab-setup" in code[0]["metadata"].get("tags", []) and f"git+{REPO_URL}@" in first, \
        "first code cell must be the set-up cell (tools/nbbuild.py COLAB)"
    assert 'BOOK_REF = "main"' in first and "check=True" in first      # pinned by the runner; fails loudly


def test_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text()
    for p in NOTEBOOKS:
        assert f"notebooks/{p.stem}" in toc


def test_smoke_book_is_complete(smoke_book):
    out, proc = smoke_book
    html = out / "html"
    assert (html / "index.html").exists()
    assert "Book built: open" in proc.stdout
    for nb in NOTEBOOKS:
        page = html / "notebooks" / f"{nb.stem}.html"
        text = page.read_text()
        assert "Run header" in text and "profile <b>smoke</b>" in text
        # every image the page references exists (GIFs included) and is non-empty
        srcs = re.findall(r'<img[^>]+src="([^"]+)"', text)
        assert srcs
        for src in srcs:
            if not src.startswith(("http", "data:")):
                target = (page.parent / src).resolve()
                assert target.exists() and target.stat().st_size > 0, src
        # the Colab button opens the committed source notebook of the configured repository
        colab = REPO_URL.replace("https://github.com/", "https://colab.research.google.com/github/")
        assert f"{colab}/blob/main/notebooks/{nb.name}" in text


def test_parameter_reference_page_lists_every_declared_parameter(smoke_book):
    import papermill

    text = (smoke_book[0] / "html" / "book" / "parameters.html").read_text()
    for nb in NOTEBOOKS:
        assert nb.name in text
        for name in papermill.inspect_notebook(str(nb)):
            literal = f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{name}</span></code>"
            assert literal in text, name


def test_front_page_results_come_from_every_chapters_metrics(smoke_book):
    out = smoke_book[0]
    spec = yaml.safe_load((ROOT / "book" / "headlines.yml").read_text())
    assert {c["chapter"] for c in spec} == {nb.stem for nb in NOTEBOOKS}
    for ch in spec:
        values = json.loads((out / "book" / "notebooks" / f"{ch['chapter']}.metrics.json").read_text())["values"]
        for row in ch["rows"]:
            for col in ("faithful", "repaired", "anchor"):
                assert row[col]["key"] in values, f"{ch['chapter']}: headline key {row[col]['key']} was not glued"
    text = (out / "html" / "book" / "results.html").read_text()
    assert "not run" not in text and text.count("<tr") >= 1 + sum(len(c["rows"]) for c in spec)


def test_parameters_cells_parse_completely():
    """papermill must see every assignment of the parameters cell (its parser skips lines it cannot read)."""
    import papermill

    for nb in NOTEBOOKS:
        cell = next(c for c in json.loads(nb.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
        assigned = [re.match(r"^(\w+)", line).group(1) for line in "".join(cell["source"]).splitlines()
                    if re.match(r"^\w+ *(:[^=]*)?=", line)]
        assert list(papermill.inspect_notebook(str(nb))) == assigned, nb.name


def test_smoke_chapter1_outputs(smoke_book):
    out, _ = smoke_book
    stage = out / "book" / "notebooks"
    metrics = json.loads((stage / "01_toy_attention.metrics.json").read_text())
    assert metrics["run"]["profile"] == "smoke" and metrics["run"]["device"] == "cpu"
    nb_text = (stage / "01_toy_attention.ipynb").read_text()
    for key in re.findall(r"\{glue:text\}`([a-z0-9_]+)", nb_text):  # every key the prose uses was glued
        assert key in metrics["values"], key
    assert metrics["values"]["params_heads_reg"] == 33 and metrics["values"]["params_mlp_reg"] == 105
    rows = metrics["tables"]["results_table"]
    assert {r["dataset"] for r in rows} == {"plane", "gaussian", "two_gaussians", "spiral", "circle", "xor"}
    assert all(0 < r["Bayes"] <= 100 for r in rows if r["task"] == "classification")
    gifs = sorted((stage / "figures" / "01").glob("*.gif"))
    assert len(gifs) == 8 and all(0 < g.stat().st_size <= 2_000_000 for g in gifs)


def test_sources_untouched_by_runs(smoke_book):
    assert _digest(NOTEBOOKS) == SOURCE_DIGEST
    status = subprocess.run(["git", "status", "--porcelain", "notebooks", "book"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    assert status == ""


def test_every_chapter_opens_with_its_cost_from_the_data_file():
    import nbformat
    import yaml

    sys.path.insert(0, str(ROOT / "tools"))
    from compute_lines import line

    costs = yaml.safe_load((ROOT / "book" / "compute.yml").read_text())
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        first = next(c for c in nbformat.read(path, 4).cells if c.cell_type == "markdown")
        assert first.source.endswith(line(costs[path.stem])), f"{path.name}: run python tools/compute_lines.py"


CITE = re.compile(r"\{cite(?::[pt])?\}`([^`]+)`")


def test_every_chapter_has_the_same_reader_frame():
    """Each chapter opens with what the reader will learn and cites its original where it first names it, closes
    with a 'What we learned' section whose claims are glued, and hides the Colab set-up cell in the book (the cell
    stays in the notebook)."""
    import nbformat

    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    for path in NOTEBOOKS:
        nb = nbformat.read(path, 4)
        md = [c for c in nb.cells if c.cell_type == "markdown"]
        assert "**What you will learn:**" in md[0].source, f"{path.name}: no 'What you will learn' in its opening"
        assert any(k.startswith("orig-") for k in CITE.findall(md[0].source)), f"{path.name}: opening cites no original"
        learned = next((c.source for c in md if "## What we learned" in c.source), None)
        assert learned, f"{path.name}: no 'What we learned' section"
        assert "{glue:text}" in learned.split("## What we learned")[1], f"{path.name}: 'What we learned' glues nothing"
        setup = next(c for c in nb.cells if "colab-setup" in c.metadata.get("tags", []))
        assert "remove-cell" in setup.metadata["tags"], f"{path.name}: the Colab cell shows in the book"
        for c in md:
            for cited in CITE.findall(c.source):
                for key in cited.split(","):
                    assert key.strip() in keys, f"{path.name}: cites {key!r}, which book/references.bib does not have"


def test_compute_page_reads_this_books_run_headers(smoke_book):
    out = smoke_book[0]
    text = re.sub(r"<[^>]+>", " ", (out / "html" / "book" / "compute.html").read_text())
    text = " ".join(text.split())
    costs = yaml.safe_load((ROOT / "book" / "compute.yml").read_text())
    for nb in NOTEBOOKS:
        run = json.loads((out / "book" / "notebooks" / f"{nb.stem}.metrics.json").read_text())["run"]
        assert f"{nb.stem} smoke {run['device']} {run['machine']}" in text, nb.stem
        for profile, cost in costs[nb.stem].items():
            assert cost["cpu"] in text, (nb.stem, profile)
    bib = (out / "html" / "book" / "bibliography.html").read_text()
    for key in ("holestine/Attention", "oremnirv/attention", "db171fa"):
        assert key in bib
