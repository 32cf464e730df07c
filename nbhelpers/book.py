"""The book runner: execute chapters with papermill under a profile, then build the static HTML book.

    python -m nbhelpers.book                       # every chapter, profile quick, then the HTML book
    python -m nbhelpers.book --profile smoke --only 01 -p dataset spiral
    python -m nbhelpers.book --no-build            # execute only
    python -m nbhelpers.book --force               # execute even the chapters whose inputs did not change

Sources in ``notebooks/`` are never written to. Executed copies go to a staging tree ``<out>/book/`` that
mirrors the repository (``notebooks/NN_name.ipynb``), each with its ``NN_name.metrics.json`` beside it; the HTML
goes to ``<out>/html``. Every write is atomic (temporary file/folder, then rename), so an interrupted run leaves
the previous executed copies and the previous HTML in place.

Incremental: a chapter is executed only when its inputs changed since its executed copy was made. ``input_key``
hashes them: the source notebook's code cells (the ``parameters`` cell included; markdown is prose, not input), the
resolved parameters and profile, every file of the ``nbhelpers`` package, the names, sizes and mtimes of the files
under ``$NBHELPERS_DATA``, and the Python/torch/torchvision/numpy versions. The key is written beside the executed
copy (``NN_name.inputs.json``) after a successful execution only, and removed before an execution starts, so a
failed or interrupted run never leaves a key that would skip the chapter next time. A chapter whose key matches is
``skipped (unchanged since <time>)``; its executed copy gets the source's current markdown cells (code cells and
their outputs kept), so a prose edit reaches the book without executing anything. ``--force`` executes regardless.

Every input (profile files, ``-p`` values, ``--only`` names, ``_toc.yml``) is checked before anything runs; a problem
is one line ``error: <file>:<line>: ...`` and exit code 2. One runner at a time per output folder, through
``<out>/.runner.lock`` (an exclusive ``flock`` plus JSON naming the holder's pid and start time); a second runner
refuses with exit code 2, and a lock file left by a killed run is stale (its flock is gone) and is taken over.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .params import profile_dir

PROFILES = ("smoke", "quick", "full")
BOOK_ENV = "NBHELPERS_BOOK"   # set to 1 for the kernels the runner starts (viz.animate.show: GIFs are in the page)
METRICS_SUFFIX = ".metrics.json"
KEY_SUFFIX = ".inputs.json"  # the input_key an executed copy came from, beside it
PACKAGE = Path(__file__).resolve().parent  # nbhelpers: every file of it is an input of every chapter
VERSIONED = ("torch", "torchvision", "numpy")  # besides Python, the versions in the key
LOCK_NAME = ".runner.lock"
GENERATED_PAGES = ("book/results", "book/parameters", "book/compute")  # written into the staging tree by the runner
COMPUTE_DATA = "book/compute.yml"  # the measured cost of every chapter per profile (one data file)


class RunnerError(Exception):
    """A problem found before anything runs (bad profile, unknown parameter, unknown chapter)."""


@dataclass
class Chapter:
    stem: str
    source: Path
    params: dict
    status: str = "pending"
    wall_s: float = 0.0
    detail: str = ""


def find_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "_toc.yml").exists() and (p / "notebooks").is_dir():
            return p
    raise RunnerError(f"no book found at or above {here} (looked for _toc.yml and notebooks/)")


def _plain(v) -> bool:
    """A value papermill passes as written: YAML scalars, and lists and string-keyed mappings of them."""
    return isinstance(v, (str, int, float, bool, type(None))) or (isinstance(v, list) and all(map(_plain, v))) or (
        isinstance(v, dict) and all(isinstance(k, str) and _plain(x) for k, x in v.items()))


def check_overrides(pairs) -> dict:
    """The -p NAME VALUE pairs as a dict, each value papermill-style: YAML ('3' -> 3, '[a, b]' -> a list), anything
    YAML cannot read a string. A repeated or malformed name, or a value papermill cannot pass as written (a YAML
    date or timestamp, say), is a RunnerError naming the argument."""
    out = {}
    for i, (name, text) in enumerate(pairs, 1):
        where = f"-p {name} {text} (override {i})"
        if not name.isidentifier():
            raise RunnerError(f"{where}: {name!r} is not a parameter name")
        if name in out:
            raise RunnerError(f"{where}: {name} is given twice")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if not _plain(value):
            raise RunnerError(f"{where}: YAML reads this as a {type(value).__name__}; quote it to pass a string")
        out[name] = value
    return out


def read_yaml(path: Path):
    """(data, node) of a YAML file; a missing, unreadable or malformed file is a RunnerError naming file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RunnerError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise RunnerError(f"{path}{place}: not valid YAML: {' '.join(what.split())}") from None
    return data, node


def _line(node, *keys) -> int:
    """1-based line of the entry at ``keys`` in a composed YAML mapping (the key's line; the nearest enclosing
    entry found when a key is absent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in keys:
        found = [(k, v) for k, v in node.value if k.value == str(key)] if isinstance(node, yaml.MappingNode) else []
        if not found:
            break
        line, node = found[0][0].start_mark.line + 1, found[0][1]
    return line


def load_profile(root: Path, profile: str) -> dict:
    if profile not in PROFILES:
        raise RunnerError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "full":  # the notebooks' own defaults are the full experiment
        return {}
    path = profile_dir() / f"{profile}.yml"
    data, node = read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RunnerError(f"{path}:{_line(node)}: expected a mapping of notebook stem -> parameter mapping, "
                          f"got a {type(data).__name__}")
    for stem, params in data.items():
        if not isinstance(stem, str):
            raise RunnerError(f"{path}:{_line(node, stem)}: {stem!r} is not a notebook stem")
        if params is not None and not isinstance(params, dict):
            raise RunnerError(f"{path}:{_line(node, stem)}: {stem}: expected a mapping of parameter -> value, "
                              f"got a {type(params).__name__}")
        for name in params or {}:
            if not isinstance(name, str) or not name.isidentifier():
                raise RunnerError(f"{path}:{_line(node, stem, name)}: {stem}: {name!r} is not a parameter name")
    return {k: v or {} for k, v in data.items()}


def profile_line(root: Path, profile: str, *keys) -> str:
    """'<file>:<line>' of an entry of a profile that load_profile already read successfully."""
    path = profile_dir() / f"{profile}.yml"
    return f"{path}:{_line(read_yaml(path)[1], *keys)}"


def load_toc(root: Path) -> dict:
    """The repository's _toc.yml, checked: jb-book parts of chapters, every file present (generated pages aside)."""
    path = root / "_toc.yml"
    toc, node = read_yaml(path)
    if not isinstance(toc, dict) or not isinstance(toc.get("parts"), list) or not toc.get("root"):
        raise RunnerError(f"{path}:{_line(node)}: expected a mapping with 'root' and a list of 'parts'")
    parts = dict((k.value, v) for k, v in node.value)["parts"]
    for part, pnode in zip(toc["parts"], parts.value):
        if not isinstance(part, dict) or not isinstance(part.get("chapters"), list):
            raise RunnerError(f"{path}:{pnode.start_mark.line + 1}: each part needs a list of 'chapters'")
        cnodes = dict((k.value, v) for k, v in pnode.value)["chapters"].value
        for ch, cnode in zip(part["chapters"], cnodes):
            line = cnode.start_mark.line + 1
            if not isinstance(ch, dict) or not isinstance(ch.get("file"), str):
                raise RunnerError(f"{path}:{line}: each chapter needs a 'file'")
            f = ch["file"]
            if f not in GENERATED_PAGES and not any((root / f"{f}{ext}").exists() for ext in ("", ".md", ".ipynb")):
                raise RunnerError(f"{path}:{line}: {f} does not exist (no {f}.md or {f}.ipynb)")
    if toc["root"] not in GENERATED_PAGES and not any((root / f"{toc['root']}{e}").exists() for e in (".md", ".ipynb")):
        raise RunnerError(f"{path}:{_line(node, 'root')}: root page {toc['root']} does not exist")
    return toc


def declared_parameters(notebook: Path) -> dict:
    import papermill

    return papermill.inspect_notebook(str(notebook))


def plan(root: Path, profile: str, only=(), overrides: dict | None = None) -> list[Chapter]:
    """Resolve chapters and their parameters; every name is checked against the notebook's parameters cell."""
    sources = {p.stem: p for p in sorted((root / "notebooks").glob("*.ipynb"))}
    prof = load_profile(root, profile)
    stray = sorted(set(prof) - set(sources))
    if stray:
        raise RunnerError(f"{profile_line(root, profile, stray[0])}: profile {profile!r} names unknown notebook(s) "
                          f"{', '.join(stray)}; notebooks are: {', '.join(sources)}")
    chosen = []
    for key in only:
        match = [s for s in sources if s == key or s.split("_")[0] == key.zfill(2)]
        if not match:
            raise RunnerError(f"--only {key}: no chapter {key!r} in {root / 'notebooks'}; "
                              f"chapters are: {', '.join(sources)}")
        chosen += [m for m in match if m not in chosen]
    chapters = []
    for stem in chosen or list(sources):
        params = {**prof.get(stem, {}), **(overrides or {})}
        declared = declared_parameters(sources[stem])
        unknown = sorted(set(params) - set(declared))
        if unknown:
            in_profile = [u for u in unknown if u in prof.get(stem, {})]
            where = (f"profile {profile!r}, {profile_line(root, profile, stem, in_profile[0])}" if in_profile
                     else "the command line")
            raise RunnerError(f"{stem}: unknown parameter(s) {', '.join(unknown)} (from {where}); "
                              f"valid parameters: {', '.join(declared)}")
        if "profile" in declared:
            params["profile"] = profile
        chapters.append(Chapter(stem, sources[stem], params))
    return chapters


def _swap_in(new: Path, dst: Path) -> None:
    """Replace folder ``dst`` by ``new`` with renames only (the old one survives until the new one is in place)."""
    old = dst.with_name(f".{dst.name}-old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)


class OutputLocked(RunnerError):
    """Another runner holds the output folder."""


class OutputLock:
    """One runner per output folder: an exclusive, non-blocking ``flock`` on ``<out>/.runner.lock``, which holds
    JSON {pid, started, argv} naming the holder. The kernel drops the flock when its process dies, however it
    dies, so a lock file left by a killed run is stale by construction: the next runner takes it over (and says
    so). The file is removed on release."""

    def __init__(self, out: Path, log=None):
        self.path = Path(out) / LOCK_NAME
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.fd = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _alive(pid) -> bool:
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
        return True

    def acquire(self) -> "OutputLock":
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = self.holder()
                raise OutputLocked(
                    f"{self.path.parent} is in use by another runner: pid {h.get('pid', '?')}, started "
                    f"{h.get('started', '?')} (arguments: {' '.join(h.get('args', [])) or 'unknown'}); lock file "
                    f"{self.path}. Wait for it to finish or choose another --out.") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file between our open and our flock: try again
                os.close(fd)
                continue
            stale = self.holder()
            if stale.get("pid"):
                state = "is no longer running" if not self._alive(stale["pid"]) else "no longer holds it"
                self.log(f"note: taking over the stale lock {self.path} left by pid {stale['pid']} (started "
                         f"{stale.get('started', '?')}), which {state}")
            info = {"pid": os.getpid(), "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "args": sys.argv[1:]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self.fd = fd
            return self
        raise OutputLocked(f"could not take the lock {self.path} (it keeps being replaced)")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody can take the old inode meanwhile
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def clean_leftovers(out: Path) -> None:
    """Remove temporaries a killed run (SIGKILL, power loss) could not clean up itself."""
    for p in [*out.glob(".jb-*"), *out.glob(".html-old-*"), *out.glob("book/.book-*"),
              *out.glob("book/notebooks/.*.running.ipynb"), *out.glob("book/notebooks/.*.part")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _ignore_further_interrupts() -> None:
    """While an interrupted run reports and cleans up, a second Ctrl-C / SIGTERM (or a SIGINT that reaches the
    runner's process group while the kernel is being stopped) must not cut that short and kill the process by
    signal instead of exiting 130."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _type_name(p: dict) -> str:
    if p.get("inferred_type_name") not in (None, "None"):
        return p["inferred_type_name"]
    try:
        return type(ast.literal_eval(p["default"])).__name__
    except (ValueError, SyntaxError):
        return "expression"


def parameter_reference(root: Path) -> str:
    """Markdown page listing every notebook's papermill parameters (from its ``parameters`` cell): name, type,
    full default, the smoke/quick overrides, and the meaning/allowed values from the cell's comments."""
    profiles = {p: load_profile(root, p) for p in ("quick", "smoke")}
    out = ["# Parameter reference", "",
           "Every chapter is a papermill-parameterised notebook. The defaults below are the **full** experiment; the "
           "`quick` and `smoke` columns are the overrides of `nbhelpers/profiles/`. Pass your own with "
           "`make chapter NB=01 P=\"-p name value\"`, `python -m nbhelpers.book --only 01 -p name value` or "
           "`papermill in.ipynb out.ipynb -p name value`. Unknown names and bad values fail before any compute, "
           "with a message naming the parameter and what is allowed.", ""]
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        out += [f"## `{nb.name}`", "",
                "| parameter | type | full default | quick | smoke | meaning and allowed values |",
                "|---|---|---|---|---|---|"]
        overrides = [profiles[k].get(nb.stem, {}) for k in ("quick", "smoke")]
        for name, p in declared_parameters(nb).items():
            cells = [f"`{p['default']}`"] + [f"`{o[name]}`" if name in o else "" for o in overrides]
            help_ = p["help"].replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(p)} | {' | '.join(cells)} | {help_} |")
        out.append("")
    return "\n".join(out)


def results_page(root: Path, stage: Path) -> str:
    """'Results at a glance': book/headlines.yml filled in from the executed chapters' metrics JSON."""
    out = ["# Results at a glance", "",
           "Headline numbers of every chapter, read from the executed notebooks' metrics files by the runner — none "
           "is typed by hand. *Faithful* is the original setup, *repaired* our fix, *anchor* the reference it is "
           "measured against (a ceiling, an oracle or the original's published number). Each chapter page's run "
           "header says which profile produced its numbers.", "",
           "| chapter | measure | faithful | repaired | anchor | profile |", "|---|---|---|---|---|---|"]
    for ch in yaml.safe_load((root / "book" / "headlines.yml").read_text()):
        path = stage / "notebooks" / f"{ch['chapter']}{METRICS_SUFFIX}"
        metrics = json.loads(path.read_text()) if path.exists() else None
        values = (metrics or {}).get("values", {})
        profile = (metrics.get("run") or {}).get("profile", "—") if metrics else "—"

        def cell(c):
            v = values.get(c["key"])
            shown = "—" if v is None else format(v, c["fmt"]) if "fmt" in c and not isinstance(v, str) else v
            return "not run" if metrics is None else f"{shown} ({c['label']})"

        link = f"[{ch['title']}](../notebooks/{ch['chapter']}.ipynb)" if metrics else ch["title"]
        for row in ch["rows"]:
            cells = " | ".join(cell(row[k]) for k in ("faithful", "repaired", "anchor"))
            out.append(f"| {link} | {row['what']} | {cells} | {profile} |")
    return "\n".join(out) + "\n"


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    return f"{float(seconds):.0f} s" if float(seconds) < 600 else f"{float(seconds) / 60:.0f} min"


def compute_page(root: Path, stage: Path) -> str:
    """'What it costs': what each chapter of *this* book cost (profile, device, machine and wall time, read from the
    run headers in the executed chapters' metrics JSON) beside the measured cost of every profile
    (``book/compute.yml``, the one data file the chapters' opening lines are also written from; without it the
    page has this book's figures only)."""
    costs = (read_yaml(root / COMPUTE_DATA)[0] or {}) if (root / COMPUTE_DATA).exists() else {}
    out = ["# What it costs", "",
           "How long each chapter took to produce **this** book, read by the runner from the run headers of the "
           "executed chapters (the notebook's own clock, from its first cell to its last), and what a rerun costs "
           "under each profile. The 2-core CPU figures are measured on this repository's CI machine with the runner "
           "(`make chapter NB=NN PROFILE=...`); the Colab T4 figures are derived from them and the GPU estimates, "
           "not measured. Every figure lives in one data file, `book/compute.yml`; each chapter's opening line is "
           "written from the same file.", "",
           "## This book", "",
           "| chapter | profile | device | machine | wall time | torch |", "|---|---|---|---|---|---|"]
    chapters = [c["file"].split("/", 1)[1] for part in load_toc(root).get("parts", []) for c in part["chapters"]
                if c["file"].startswith("notebooks/")]
    total = 0.0
    for stem in chapters:
        path = stage / "notebooks" / f"{stem}{METRICS_SUFFIX}"
        run = (json.loads(path.read_text()).get("run") or {}) if path.exists() else None
        if run is None:
            out.append(f"| {stem} | not run | | | | |")
            continue
        total += float(run.get("wall_s") or 0)
        out.append(f"| [{stem}](../notebooks/{stem}.ipynb) | {run.get('profile', '—')} | {run.get('device', '—')} | "
                   f"{run.get('machine', '—')} | {_duration(run.get('wall_s'))} | "
                   f"{(run.get('versions') or {}).get('torch', '—')} |")
    out += [f"| **all chapters** | | | | **{_duration(total)}** | |", "",
            "## Every profile", "",
            "| chapter | profile | 2-core CPU (measured) | Colab T4 (derived) |", "|---|---|---|---|"]
    for stem in chapters:
        for profile in PROFILES:
            c = (costs.get(stem) or {}).get(profile) or {}
            out.append(f"| {stem} | {profile} | {c.get('cpu', '—')} | {c.get('t4', '—')} |")
    return "\n".join(out) + "\n"


def write_toc(root: Path, stage: Path) -> None:
    """The staged _toc.yml: the repository's, minus chapters that have no executed copy yet."""
    toc = load_toc(root)
    present = {f"notebooks/{p.stem}" for p in (stage / "notebooks").glob("*.ipynb")}
    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part["chapters"]
                            if not c["file"].startswith("notebooks/") or c["file"] in present]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))


def pin_book_ref(nb, commit: str | None) -> None:
    """In the executed copy (the one the book shows and offers for download), the set-up cell installs nbhelpers
    at the commit that produced it rather than at the branch the source names."""
    if not commit:
        return
    for cell in nb.cells:
        if "colab-setup" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace('BOOK_REF = "main"', f'BOOK_REF = "{commit}"')


def _unpinned(cell) -> str:
    """A code cell's source with the set-up cell's BOOK_REF line left out (pin_book_ref rewrites it)."""
    if "colab-setup" not in cell.metadata.get("tags", []):
        return cell.source
    return "\n".join(line for line in cell.source.splitlines() if not line.startswith("BOOK_REF ="))


def input_key(ch: Chapter, profile: str, package: Path | None = None, data: Path | None = None) -> str:
    """sha256 of everything an executed copy of ``ch`` depends on: the source's code cells (source and tags, in
    order; markdown is left out), the resolved parameters and the profile name, every file of ``package``
    (PACKAGE; bytecode caches aside), the names, sizes and mtimes of the files under ``data`` ($NBHELPERS_DATA;
    cheap, the files are not read), and the Python and VERSIONED package versions. No path is part of it: a copy
    of the tree (with its mtimes) has the same key."""
    from .data import data_root

    h = hashlib.sha256()

    def add(*parts):
        for part in parts:
            h.update(f"{part}\0".encode())

    for cell in json.loads(ch.source.read_text())["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            add("cell", len(src), src, sorted(cell.get("metadata", {}).get("tags", [])))
    add("params", profile, json.dumps(ch.params, sort_keys=True, default=repr))
    package = Path(package or PACKAGE)
    for f in sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        body = f.read_bytes()
        add("package", f.relative_to(package).as_posix(), len(body))
        h.update(body)
    data = Path(data or data_root())
    for top, _, files in sorted(os.walk(data)):  # a missing folder walks as empty
        for name in sorted(files):
            path = Path(top) / name
            try:
                st = path.stat()
                add(path.relative_to(data).as_posix(), st.st_size, st.st_mtime_ns)
            except OSError:  # a dangling link, say
                add(path.relative_to(data).as_posix(), "unreadable")
    add("python", sys.version)
    for name in VERSIONED:
        try:
            add(name, importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            add(name, None)
    return h.hexdigest()


def unchanged_since(ch: Chapter, stage: Path, key: str) -> str | None:
    """When the staged executed copy of ``ch`` was made, if it was made from inputs with this ``key`` (and it and
    its metrics are still there); None when the chapter must be executed."""
    nb_dir = stage / "notebooks"
    try:
        record = json.loads((nb_dir / f"{ch.stem}{KEY_SUFFIX}").read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("key") != key or not (nb_dir / ch.source.name).exists()
            or not (nb_dir / f"{ch.stem}{METRICS_SUFFIX}").exists()):
        return None
    return str(record.get("executed") or "?")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}-{os.getpid()}.part")  # one runner per folder: the pid makes it unique
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def refresh_prose(ch: Chapter, stage: Path) -> str | bool:
    """Give the staged executed copy of an unchanged chapter the source's current markdown: the source's cells in
    order, each code cell replaced by its executed counterpart (outputs and papermill's injected parameters kept),
    after the run header. Rewritten (atomically) only when something differs: returns "refreshed" then, "same"
    otherwise, and False when the executed copy's code cells do not pair up with the source's (then the chapter
    must be executed)."""
    import nbformat

    final = stage / "notebooks" / ch.source.name
    try:
        src, done = nbformat.read(ch.source, as_version=4), nbformat.read(final, as_version=4)
    except (OSError, ValueError):
        return False
    head = [c for c in done.cells if "run-header" in _tags(c)]
    groups, lead = [], []  # one group per executed source code cell, with an injected-parameters cell after it
    for c in done.cells:
        if c.cell_type == "code" and "injected-parameters" in _tags(c):
            (groups[-1] if groups else lead).append(c)
        elif c.cell_type == "code":
            groups.append([c])
    code = [c for c in src.cells if c.cell_type == "code"]
    if len(groups) != len(code) or any(_unpinned(g[0]) != _unpinned(c) for g, c in zip(groups, code)):
        return False

    def prose(cells):
        return [(c.cell_type, c.source) for c in cells if c.cell_type != "code" and "run-header" not in _tags(c)]

    if prose(src.cells) != prose(done.cells):
        groups = iter(groups)
        done.cells = head + lead + [x for c in src.cells for x in (next(groups) if c.cell_type == "code" else [c])]
        _write_atomic(final, nbformat.writes(done))
        return "refreshed"
    return "same"


def execute(ch: Chapter, stage: Path, log=print, key: str | None = None) -> None:
    """Run one chapter with papermill into the staging tree; on success atomically replace its executed copy and
    record ``key`` (its input_key) beside it. The previous key goes first, so only a success leaves one."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    nb_dir = stage / "notebooks"
    metrics = nb_dir / f"{ch.stem}{METRICS_SUFFIX}"
    tmp = nb_dir / f".{ch.stem}.running.ipynb"
    (nb_dir / f"{ch.stem}{KEY_SUFFIX}").unlink(missing_ok=True)
    metrics.unlink(missing_ok=True)  # a stale file must not pass for this run's output
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(ch.source), str(tmp), parameters=ch.params, cwd=str(nb_dir),
                                   kernel_name="python3", progress_bar=False, log_output=False)
    except PapermillExecutionError as e:
        ch.status, ch.wall_s = "failed", time.perf_counter() - t0
        ch.detail = f"cell {e.cell_index} (execution count {e.exec_count}): {e.ename}: {e.evalue}"
        failed = stage.parent / "failed" / ch.source.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, failed)
        ch.detail += f" — executed copy kept at {failed}"
        return
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    ch.wall_s = time.perf_counter() - t0
    if not metrics.exists():
        ch.status, ch.detail = "failed", f"the notebook did not write {metrics.name} (it must call Results.save())"
        tmp.unlink(missing_ok=True)
        return
    nb = nbformat.read(tmp, as_version=4)
    record = json.loads(metrics.read_text())
    run = record.get("run") or {}
    versions = " · ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
    header = (f"<small>Run header — profile <b>{run.get('profile')}</b> · device <b>{run.get('device')}</b> · "
              f"seed {run.get('seed')} · {versions} · wall time {ch.wall_s:.0f} s</small>")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(header, metadata={"tags": ["run-header"]}))
    pin_book_ref(nb, (record.get("code") or {}).get("git_commit"))
    nbformat.write(nb, tmp)
    os.replace(tmp, nb_dir / ch.source.name)
    if key:
        executed = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        _write_atomic(nb_dir / f"{ch.stem}{KEY_SUFFIX}", json.dumps(
            {"key": key, "executed": executed, "wall_s": round(ch.wall_s, 1), "params": ch.params}, default=repr))
    ch.status = "ok"


def build_html(stage: Path, out: Path, log=print) -> Path:
    """jupyter-book build (execution off) with warnings as errors, into a temp folder swapped into <out>/html."""
    jb = Path(sys.executable).with_name("jupyter-book")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".jb-"))
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage), "--path-output", str(tmp),
           "-W", "-n", "--keep-going", "--quiet"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        build_html.last_s = time.perf_counter() - t0   # the HTML build's own time, for the closing line
        if proc.returncode != 0:
            raise RuntimeError("jupyter-book build failed (warnings are errors):\n"
                               + (proc.stdout[-4000:] + proc.stderr[-4000:]).strip())
        _swap_in(tmp / "_build" / "html", out / "html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "html" / "index.html"


def summary(chapters: list[Chapter]) -> str:
    return "\n".join([f"{'chapter':28s} {'status':8s} {'wall':>8s}  detail"] + [
        f"{c.stem:28s} skipped {c.detail}" if c.status == "skipped" else
        f"{c.stem:28s} {c.status:8s} {c.wall_s:7.1f}s  {c.detail}" for c in chapters])


# glibc returns every allocation above its mmap threshold (at most 32 MB) to the OS on free, so each training
# step of a CPU run page-faults its large activation buffers in afresh: chapter 4's repaired model spent more
# time in the kernel than in torch (39 s wall, 21 s of it system time, for one 5k-image epoch; 19 s with these).
# Keeping freed memory in the process heap costs nothing on a GPU run.
KERNEL_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
                 "MALLOC_TOP_PAD_": str(1 << 30)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbhelpers.book", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick", choices=PROFILES)
    ap.add_argument("--only", nargs="*", default=[], metavar="NN", help="chapters by number or stem")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="papermill parameter override (YAML value), applied to every selected chapter")
    ap.add_argument("--out", default="_build", help="output folder (default _build)")
    ap.add_argument("--no-build", action="store_true", help="execute only, skip the HTML build")
    ap.add_argument("--build-only", action="store_true", help="rebuild HTML from the staged executed copies")
    ap.add_argument("--force", action="store_true",
                    help="execute every selected chapter, even those whose inputs did not change since their last run")
    args = ap.parse_args(argv)

    try:
        root = find_root()
        overrides = check_overrides(args.parameter)
        for name in ("smoke", "quick"):  # the parameter reference reads both, whichever profile runs
            load_profile(root, name)
        load_toc(root)
        read_yaml(root / "book" / "headlines.yml")  # the results page reads it after the chapters ran
        if (root / COMPUTE_DATA).exists():
            read_yaml(root / COMPUTE_DATA)           # and the compute page this one (optional)
        chapters = [] if args.build_only else plan(root, args.profile, args.only, overrides)
        out = Path(args.out) if Path(args.out).is_absolute() else (root / args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(out).acquire()
    except (RunnerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # restored at the end
    try:
        return _run(root, out, args, chapters)
    except KeyboardInterrupt:  # one that arrived outside the chapter loop (staging, the HTML build, a cleanup)
        _ignore_further_interrupts()
        print("\nstopped: interrupted; the previous executed copies and book are untouched", file=sys.stderr)
        return 130
    finally:
        lock.release()
        for sig, handler in handlers.items():   # a caller in the same process (a test, a notebook) gets them back
            signal.signal(sig, handler)


def _run(root: Path, out: Path, args, chapters: list[Chapter]) -> int:
    """Everything after the checks, while holding the output folder's lock."""
    stage = out / "book"
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # a killed run cleans up like Ctrl-C
    clean_leftovers(out)
    # the book's prose and config into the staging tree (execute adds the executed notebooks)
    (stage / "notebooks").mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "_config.yml", stage / "_config.yml")
    tmp = Path(tempfile.mkdtemp(dir=stage, prefix=".book-"))
    shutil.rmtree(tmp)
    shutil.copytree(root / "book", tmp)
    _swap_in(tmp, stage / "book")
    (stage / "book" / "parameters.md").write_text(parameter_reference(root))  # generated, never committed
    os.environ[BOOK_ENV] = "1"
    # figures must reach the page: matplotlib's inline backend, whatever the caller's MPLBACKEND (CI sets Agg,
    # under which a kernel shows no figure at all)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    for k, v in {"PYDEVD_DISABLE_FILE_VALIDATION": "1", **KERNEL_MALLOC}.items():  # the kernels inherit these
        os.environ.setdefault(k, v)

    try:
        for ch in chapters:
            key = input_key(ch, args.profile)
            since = None if args.force else unchanged_since(ch, stage, key)
            if since and (prose := refresh_prose(ch, stage)):
                ch.status = "skipped"
                ch.detail = f"(unchanged since {since})" + ("; its prose refreshed" if prose == "refreshed" else "")
                print(f"[{ch.stem}] skipped {ch.detail}", flush=True)
                continue
            print(f"[{ch.stem}] running (profile {args.profile}) with {ch.params}", flush=True)
            execute(ch, stage, key=key)
            print(f"[{ch.stem}] {ch.status} in {ch.wall_s:.1f}s {ch.detail}", flush=True)
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        for ch in chapters:
            if ch.status == "pending":
                ch.status, ch.detail = "stopped", "interrupted; the previous executed copy and book are untouched"
        print("\n" + summary(chapters), file=sys.stderr)
        return 130
    failed = [c for c in chapters if c.status not in ("ok", "skipped")]
    index = None
    if not failed and not args.no_build:
        write_toc(root, stage)
        (stage / "book" / "results.md").write_text(results_page(root, stage))
        (stage / "book" / "compute.md").write_text(compute_page(root, stage))
        try:
            index = build_html(stage, out)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = [Chapter("(book build)", Path(), {}, "failed")]
    if chapters:
        print("\n" + summary(chapters))
    if failed:
        print(f"\nFAILED: {', '.join(c.stem for c in failed)}", file=sys.stderr)
        return 1
    if index:
        print(f"\nBook built: open {index}  (file://{index}); HTML build {build_html.last_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
