"""The incremental book: a chapter is executed again only when its inputs changed (input_key), and a prose-only
edit reaches the staged copy without executing. A one-chapter book with a tiny notebook, its own stand-in for the
nbhelpers package (book.PACKAGE) and its own data folder ($NBHELPERS_DATA), run in-process through book.main."""
import contextlib
import io
import json
import os
import shutil
import signal
from pathlib import Path

import nbformat
import pytest

from nbhelpers import book

STEM = "01_tiny"
NONCE = ("import json, uuid\n"
         "nonce = uuid.uuid4().hex  # a new value on every execution\n"
         "print(nonce)\n"
         f"json.dump({{'run': {{'profile': 'smoke'}}, 'values': {{'scale': scale, 'nonce': nonce}}}}, "
         f"open('{STEM}{book.METRICS_SUFFIX}', 'w'))")


def _notebook(prose="Prose one.", code=NONCE):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# Tiny\n\n{prose}"),
                nbformat.v4.new_code_cell("scale = 1  # a number", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(code),
                nbformat.v4.new_markdown_cell("The end.")]
    return nb


def _layout(base: Path) -> Path:
    """base/repo (a book with one chapter), base/pkg (the helper package), base/data; returns base."""
    repo = base / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "profiles").mkdir(parents=True)
    (repo / "book").mkdir()
    (repo / "_config.yml").write_text("title: tiny\nexecute:\n  execute_notebooks: 'off'\n")
    (repo / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: Chapters\n"
                                   f"    chapters:\n      - file: notebooks/{STEM}\n")
    (repo / "book" / "intro.md").write_text("# Intro\n")
    (repo / "book" / "headlines.yml").write_text("[]\n")
    (repo / "profiles" / "smoke.yml").write_text(f"{STEM}:\n  scale: 2\n")
    (repo / "profiles" / "quick.yml").write_text("{}\n")
    nbformat.write(_notebook(), repo / "notebooks" / f"{STEM}.ipynb")
    (base / "pkg").mkdir()
    (base / "pkg" / "helper.py").write_text("def f():\n    return 1\n")
    (base / "pkg" / "table.csv").write_text("a,b\n1,2\n")  # package data counts too
    (base / "data" / "MNIST" / "raw").mkdir(parents=True)
    (base / "data" / "MNIST" / "raw" / "train.gz").write_bytes(b"\x00" * 64)
    (base / "data" / "cifar10.npz").write_bytes(b"\x01" * 128)
    return base


def run(base: Path, *args):
    """python -m nbhelpers.book --profile smoke --no-build ARGS in base/repo; (exit code, stdout + stderr)."""
    buf = io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        mp.chdir(base / "repo")
        mp.setattr(book, "PACKAGE", base / "pkg")
        mp.setenv("NBHELPERS_DATA", str(base / "data"))
        mp.setenv("NBHELPERS_PROFILES", str(base / "repo" / "profiles"))
        for k, v in {**book.KERNEL_MALLOC, "PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg"}.items():
            mp.setenv(k, v)  # main() sets these for its kernels; restored afterwards
        try:
            rc = book.main(["--profile", "smoke", "--no-build", *args])
        finally:
            signal.signal(signal.SIGTERM, handler)
    return rc, buf.getvalue()


def staged(base: Path) -> Path:
    return base / "repo" / "_build" / "book" / "notebooks"


def nonce(base: Path) -> str:
    return json.loads((staged(base) / f"{STEM}{book.METRICS_SUFFIX}").read_text())["values"]["nonce"]


@pytest.fixture(scope="module")
def executed_once(tmp_path_factory):
    """The tiny book executed once (the only execution the tests share)."""
    base = _layout(tmp_path_factory.mktemp("incremental") / "first")
    rc, out = run(base)
    assert rc == 0, out
    assert f"[{STEM}] running" in out and (staged(base) / f"{STEM}{book.KEY_SUFFIX}").exists()
    return base


@pytest.fixture
def book_copy(executed_once, tmp_path):
    """A copy of the executed tiny book, mtimes kept (the key names no path); it skips when nothing changes."""
    base = tmp_path / "copy"
    shutil.copytree(executed_once, base, symlinks=True)
    before = nonce(base)
    rc, out = run(base)
    assert rc == 0 and f"[{STEM}] skipped (unchanged since " in out, out
    assert nonce(base) == before
    return base


# ------------------------------------------------------------------ through the runner

def test_unchanged_inputs_skip_and_the_summary_says_since_when(book_copy):
    record = json.loads((staged(book_copy) / f"{STEM}{book.KEY_SUFFIX}").read_text())
    before = (staged(book_copy) / f"{STEM}.ipynb").read_bytes()
    rc, out = run(book_copy)
    assert rc == 0
    summary = out[out.index("chapter "):]
    assert f"{STEM}" in summary and f"skipped (unchanged since {record['executed']})" in summary
    assert (staged(book_copy) / f"{STEM}.ipynb").read_bytes() == before  # not even rewritten


def _executed_again(base, *args):
    before = nonce(base)
    rc, out = run(base, *args)
    assert rc == 0, out
    assert f"[{STEM}] running" in out and "skipped" not in out
    assert nonce(base) != before
    rc, out = run(base, *args)  # and the new key is recorded: the same inputs skip again
    assert rc == 0 and "skipped (unchanged since" in out, out


def test_a_changed_parameter_executes(book_copy):
    _executed_again(book_copy, "-p", "scale", "3")


def test_a_changed_profile_value_executes(book_copy):
    (book_copy / "repo" / "profiles" / "smoke.yml").write_text(f"{STEM}:\n  scale: 5\n")
    _executed_again(book_copy)
    assert json.loads((staged(book_copy) / f"{STEM}{book.METRICS_SUFFIX}").read_text())["values"]["scale"] == 5


def test_a_changed_helper_module_executes(book_copy):
    (book_copy / "pkg" / "helper.py").write_text("def f():\n    return 2\n")
    _executed_again(book_copy)


def test_a_changed_data_file_executes(book_copy):
    path = book_copy / "data" / "cifar10.npz"
    path.write_bytes(b"\x02" * 128)  # same size, new content: the mtime tells
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _executed_again(book_copy)


def test_force_executes(book_copy):
    before = nonce(book_copy)
    rc, out = run(book_copy, "--force")
    assert rc == 0 and f"[{STEM}] running" in out and "skipped" not in out
    assert nonce(book_copy) != before


def test_prose_only_edit_updates_markdown_without_executing(book_copy):
    src = book_copy / "repo" / "notebooks" / f"{STEM}.ipynb"
    nb = _notebook(prose="Prose two, rewritten.")
    nb.cells.insert(2, nbformat.v4.new_markdown_cell("A new paragraph between code cells."))
    nbformat.write(nb, src)
    before_nonce = nonce(book_copy)
    rc, out = run(book_copy)
    assert rc == 0 and f"[{STEM}] skipped (unchanged since " in out and "running" not in out, out
    assert "; its prose refreshed" in out    # the summary says the edit reached the page
    assert nonce(book_copy) == before_nonce
    done = nbformat.read(staged(book_copy) / f"{STEM}.ipynb", as_version=4)
    kinds = [(c.cell_type, c.metadata.get("tags", [])) for c in done.cells]
    assert kinds == [("markdown", ["run-header"]), ("markdown", []), ("code", ["parameters"]),
                     ("code", ["injected-parameters"]), ("markdown", []), ("code", []), ("markdown", [])]
    assert "Prose two, rewritten." in done.cells[1].source and "Prose one" not in json.dumps(done)
    assert done.cells[4].source == "A new paragraph between code cells."
    assert done.cells[5].outputs[0]["text"].strip() == before_nonce  # the executed outputs are kept
    assert "scale = 2" in done.cells[3].source
    # a code edit is an input: it executes
    nb.cells[3].source = NONCE + "\nprint('more')"
    nbformat.write(nb, src)
    _executed_again(book_copy)


# ------------------------------------------------------------------ failures leave no key

def _chapter(base):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBHELPERS_DATA", str(base / "data"))
        mp.setenv("NBHELPERS_PROFILES", str(base / "repo" / "profiles"))
        ch = book.plan(base / "repo", "smoke")[0]
        return ch, book.input_key(ch, "smoke", package=base / "pkg")


@pytest.mark.parametrize("how", ["failed", "interrupted"])
def test_a_failed_or_interrupted_execution_leaves_no_key(book_copy, monkeypatch, how):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    ch, key = _chapter(book_copy)
    stage = staged(book_copy).parent
    assert book.unchanged_since(ch, stage, key)

    def fake(source, out, **kw):
        Path(out).write_text("{}")
        if how == "failed":
            raise PapermillExecutionError(2, 1, "x", "ValueError", "boom", [])
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", fake)
    if how == "failed":
        book.execute(ch, stage, key=key)
        assert ch.status == "failed"
    else:
        with pytest.raises(KeyboardInterrupt):
            book.execute(ch, stage, key=key)
    assert not (stage / "notebooks" / f"{STEM}{book.KEY_SUFFIX}").exists()
    assert book.unchanged_since(ch, stage, key) is None


def test_a_missing_metrics_file_or_executed_copy_is_not_unchanged(book_copy):
    ch, key = _chapter(book_copy)
    stage = staged(book_copy).parent
    assert book.unchanged_since(ch, stage, key)
    (stage / "notebooks" / f"{STEM}{book.METRICS_SUFFIX}").unlink()
    assert book.unchanged_since(ch, stage, key) is None


# ------------------------------------------------------------------ the key itself

def test_key_covers_each_input_and_not_the_prose(executed_once, tmp_path, monkeypatch):
    base = tmp_path / "k"
    shutil.copytree(executed_once, base)
    ch, key = _chapter(base)

    def key_now(**kw):
        return book.input_key(ch, kw.pop("profile", "smoke"), package=base / "pkg", data=base / "data")

    assert key_now() == key == book.input_key(ch, "smoke", package=base / "pkg", data=base / "data")
    src = base / "repo" / "notebooks" / f"{STEM}.ipynb"
    nbformat.write(_notebook(prose="Other words."), src)
    assert key_now() == key  # markdown is not an input
    assert key_now(profile="quick") != key
    ch.params = {**ch.params, "scale": 3}
    assert key_now() != key
    ch.params["scale"] = 2
    assert key_now() == key
    (base / "pkg" / "table.csv").write_text("a,b\n1,3\n")
    assert key_now() != key
    (base / "pkg" / "table.csv").write_text("a,b\n1,2\n")
    (base / "pkg" / "__pycache__").mkdir()
    (base / "pkg" / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"x")
    assert key_now() == key  # bytecode caches are not
    (base / "data" / "MNIST" / "raw" / "new.gz").write_bytes(b"")
    assert key_now() != key
    (base / "data" / "MNIST" / "raw" / "new.gz").unlink()
    assert key_now() == key
    monkeypatch.setattr(book.sys, "version", "3.99.0 (other)")
    assert key_now() != key
    monkeypatch.undo()
    monkeypatch.setattr(book.importlib.metadata, "version", lambda name: "0.0" if name == "torch" else "1")
    assert key_now() != key


def test_a_pinned_set_up_cell_still_pairs_with_its_source(tmp_path):
    """The runner writes the commit into the executed copy's set-up cell; that must not force a re-execution."""
    setup = 'BOOK_REF = "main"\nimport sys'
    src = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup, metadata={"tags": ["colab-setup"]}),
                                          nbformat.v4.new_markdown_cell("new prose")])
    done = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup, metadata={"tags": ["colab-setup"]}),
                                           nbformat.v4.new_markdown_cell("old prose")])
    book.pin_book_ref(done, "0123abc")
    assert 'BOOK_REF = "0123abc"' in done.cells[0].source
    (tmp_path / "notebooks").mkdir()
    nbformat.write(src, tmp_path / "x.ipynb")
    nbformat.write(done, tmp_path / "notebooks" / "x.ipynb")
    ch = book.Chapter("x", tmp_path / "x.ipynb", {})
    assert book.refresh_prose(ch, tmp_path)
    refreshed = nbformat.read(tmp_path / "notebooks" / "x.ipynb", 4)
    assert refreshed.cells[1].source == "new prose" and 'BOOK_REF = "0123abc"' in refreshed.cells[0].source
