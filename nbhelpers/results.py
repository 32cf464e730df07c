"""Numbers that leave a notebook: myst-nb glue for the prose and one metrics JSON per chapter for machines.

Every value glued for the book is also recorded in the chapter's metrics file, so what the reader sees and what
tests/benchmarks compare are the same numbers. The file also records the run's parameters (the values the
notebook's ``params.check`` accepted) and the code that produced it (``code_version``), so ``collect`` can gather
any number of runs (a sweep, plain papermill runs) into one table.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def _plain(value):
    """numpy/pandas scalars -> Python scalars; NaN/inf -> None (JSON has no NaN)."""
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _glue(key, value):
    try:
        from myst_nb import glue
    except ImportError:  # plain Python use of a chapter, no book
        return
    glue(key, value, display=False)


def _git(args, cwd):
    """stdout of a git command, or None (no git, not a checkout, any error)."""
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def source_hash(package_dir: str | os.PathLike | None = None) -> str:
    """sha256 over the package's ``*.py`` files (relative path and bytes of each, in path order)."""
    package_dir = Path(package_dir or Path(__file__).parent)
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py"), key=lambda p: p.relative_to(package_dir).as_posix()):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def code_version(package_dir: str | os.PathLike | None = None) -> dict:
    """Which code produced a run: nbhelpers' version, the git commit of the checkout it was imported from and
    whether tracked files differed from it (``git_dirty``; untracked files do not count), both None outside a git
    checkout or without git, and ``source_sha256`` (``source_hash``), which tells apart two dirty checkouts."""
    from . import __version__

    package_dir = Path(package_dir or Path(__file__).parent)
    # the package's own files must be tracked: a copy installed into a venv inside some checkout is not that commit
    tracked = _git(["ls-files", "--error-unmatch", "."], package_dir)
    commit = _git(["rev-parse", "HEAD"], package_dir) if tracked else None
    status = _git(["status", "--porcelain", "--untracked-files=no"], package_dir) if commit else None
    return {"nbhelpers": __version__, "git_commit": commit.strip() if commit else None,
            "git_dirty": bool(status.strip()) if status is not None else None,
            "source_sha256": source_hash(package_dir)}


class Results:
    """Collects a chapter's glued numbers/tables and writes ``<chapter>.metrics.json`` into the working folder.

    Besides the glued values and tables, the file records ``run`` (the run header, ``Run.as_dict()``),
    ``parameters`` (the run's parameter values: ``parameters`` if given, else those the latest
    ``params.check`` in this process accepted, ``params.last_checked``; None when there was none) and ``code``
    (``code_version()``). A chapter's opening call (``chapter.start``) creates it."""

    def __init__(self, chapter: str, run=None, parameters: dict | None = None):
        from . import params

        self.chapter, self.run = chapter, run
        self.values: dict = {}
        self.tables: dict = {}
        self.patterns: dict = {}   # {key pattern: [the keys glued under it]} (``glue_rows``)
        chosen = parameters if parameters is not None else params.last_checked
        self.parameters = copy.deepcopy(chosen) if chosen is not None else None
        self.code = code_version()

    def glue(self, key: str, value):
        """Glue a number or string for ``{glue:text}`key:fmt``` and record it."""
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (int, float, str)):
            raise TypeError(f"glue {key!r}: expected int, float or str, got {type(value).__name__}")
        if key in self.values or key in self.tables:
            raise ValueError(f"glue key {key!r} used twice (the book would show only one of them)")
        self.values[key] = value
        _glue(key, value)
        return value

    def glue_rows(self, rows, pattern: str, value):
        """Glue one value per row under a key pattern declared once, e.g.
        ``res.glue_rows(table, "{dataset}_{model}_pm", "result")``: the key is ``pattern.format(**row)`` and the
        value ``row[value]`` (a column name) or ``value(row)`` (a callable; returning None skips the row).
        ``rows``: a DataFrame (its index columns included, by name) or an iterable of mappings. The pattern and
        its keys are recorded in the metrics JSON (``patterns``), so a test or ``book/headlines.yml`` can list
        every key the chapter glues."""
        if isinstance(rows, pd.DataFrame):
            frame = rows.reset_index() if any(n is not None for n in rows.index.names) else rows
            rows = [r for _, r in frame.iterrows()]
        keys = self.patterns.setdefault(pattern, [])
        for row in rows:
            v = value(row) if callable(value) else row[value]
            if v is None:
                continue
            key = pattern.format(**dict(row))
            self.glue(key, v)
            keys.append(key)
        return keys

    def table(self, key: str, df: pd.DataFrame) -> pd.DataFrame:
        """Glue a table (``{glue:figure}`` or ``{glue}`` in prose) and record its rows."""
        if key in self.values or key in self.tables:
            raise ValueError(f"glue key {key!r} used twice (the book would show only one of them)")
        self.tables[key] = json.loads(df.reset_index().to_json(orient="records"))
        _glue(key, df)
        return df

    def as_dict(self) -> dict:
        return {"chapter": self.chapter, "run": self.run.as_dict() if self.run else None,
                "parameters": _plain(self.parameters), "code": self.code,
                "values": _plain(self.values), "tables": self.tables, "patterns": self.patterns}

    def save(self, folder: str | os.PathLike = ".") -> Path:
        """Write the metrics JSON atomically; returns its path."""
        path = Path(folder) / f"{self.chapter}.metrics.json"
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path


METRICS_SUFFIX = ".metrics.json"


def _cell(value):
    """A value as one table cell: scalars as they are, lists/mappings as compact JSON (hashable, CSV-safe)."""
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


def collect(folder: str | os.PathLike, parameters=None) -> pd.DataFrame:
    """Every ``*.metrics.json`` under ``folder`` (searched recursively) as one row of a DataFrame.

    Columns: ``folder`` (the metrics file's folder relative to ``folder``, POSIX style), ``chapter``, the run's
    recorded parameters (all of them, or only the names in ``parameters``; list values as compact JSON text),
    ``wall_s`` (from the run header: runtime.start to Results.save) and every scalar glued value (tables are left
    out). A glued key that clashes with one of the columns before it gets the suffix `` (glued)``. Files written
    before parameters were recorded fall back to the run header's profile, seed and device. Rows are in path
    order; an unreadable file is a ValueError naming it."""
    folder = Path(folder)
    rows, value_keys, param_keys = [], [], []
    for path in sorted(folder.rglob(f"*{METRICS_SUFFIX}"), key=lambda p: p.relative_to(folder).as_posix()):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a readable metrics file ({type(e).__name__}: {e})") from None
        run = data.get("run") or {}
        recorded = data.get("parameters")
        if recorded is None:  # written before parameters were recorded
            recorded = {k: run[k] for k in ("profile", "seed", "device") if k in run}
        names = list(recorded) if parameters is None else list(parameters)
        param_keys += [k for k in names if k not in param_keys]
        values = data.get("values") or {}
        value_keys += [k for k in values if k not in value_keys]
        rows.append((path.parent.relative_to(folder).as_posix(), data.get("chapter"),
                     {k: _cell(recorded.get(k)) for k in names}, run.get("wall_s"), values))
    fixed = ["folder", "chapter", *param_keys, "wall_s"]
    rename = {k: (f"{k} (glued)" if k in fixed else k) for k in value_keys}
    records = [{"folder": f, "chapter": ch, **p, "wall_s": w, **{rename[k]: _cell(v) for k, v in vals.items()}}
               for f, ch, p, w, vals in rows]
    return pd.DataFrame.from_records(records, columns=[*fixed, *rename.values()])
