"""Parameter sweeps: run one chapter over a grid of parameter values, side by side, and collect the results.

    python -m nbhelpers.sweep 01 --profile smoke --grid seed=0,1,2 --out _build/sweeps --jobs 2
    python -m nbhelpers.sweep 05 --grid seed=0,1 --grid variants=relu,sigmoid -p steps 100 --out _build/sweeps

Each combination of the ``--grid`` values (their cartesian product) is one papermill run of the chapter with the
runner's parameters: the profile's values from ``nbhelpers/profiles/<profile>.yml``, then ``-p``, then the grid
values. Every run has its own folder ``<out>/<chapter>/<name=value,...>/``, which is also the notebook's working
directory, so its executed notebook, metrics JSON and figures land there and runs side by side never collide.
The runs go through joblib (loky worker processes; ``--jobs`` at a time); from Python, ``sweep.run(...)`` inside
``joblib.parallel_config(backend=...)`` uses another joblib backend (Dask, Ray).

Everything is checked before anything runs, with one line ``error: ...`` and exit code 2: the chapter, every
parameter name (against the notebook's ``parameters`` cell), every value (through the notebook's own
``params.check`` call, run here on each combination's values without computing anything), repeats and clashes
between ``-p`` and ``--grid``. Afterwards ``<out>/<chapter>/results.csv`` holds one row per run: the grid values,
``status`` (ok or failed) with ``error`` (the error's last line), ``wall_s`` (the papermill run, kernel start
included), ``folder`` (the run folder) and every scalar glued value (``results.collect``). The exit code is 1
when any run failed, else 0.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .book import (KERNEL_MALLOC, METRICS_SUFFIX, PROFILES, OutputLock, RunnerError, _plain, _write_atomic,
                   check_overrides, declared_parameters, find_root, plan)

RESULTS_CSV = "results.csv"


@dataclass
class Job:
    """One combination of the grid: its values, the full papermill parameters and its run folder."""

    stem: str
    source: Path
    grid: dict
    params: dict
    folder: Path
    status: str = "pending"
    error: str = ""
    wall_s: float = 0.0


def parse_grid(specs) -> dict:
    """``["seed=0,1,2", "dataset=spiral,xor"]`` -> ``{"seed": [0, 1, 2], "dataset": ["spiral", "xor"]}``.

    The values after ``=`` are read as one YAML flow list, so each is a YAML value as with ``-p`` (``0`` an int,
    ``[a, b]`` a list: ``dataset=[spiral,xor],circle`` is two values). A malformed entry, a repeated name, an
    empty or repeated value, or a value papermill cannot pass as written is a RunnerError naming it."""
    grid = {}
    for spec in specs:
        where = f"--grid {spec}"
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise RunnerError(f"{where}: expected NAME=VALUE[,VALUE...], e.g. seed=0,1,2")
        if name in grid:
            raise RunnerError(f"{where}: {name} is given twice")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError as e:
            problem = " ".join(str(getattr(e, "problem", "") or e).split())
            raise RunnerError(f"{where}: not a comma-separated list of YAML values ({problem})") from None
        if not values or any(v is None for v in values):
            raise RunnerError(f"{where}: empty value (expected NAME=VALUE[,VALUE...])")
        for i, v in enumerate(values):
            if any(type(w) is type(v) and w == v for w in values[:i]):
                raise RunnerError(f"{where}: value {v!r} is given twice")
            if not _plain(v):
                raise RunnerError(f"{where}: YAML reads {v!r} as a {type(v).__name__}, which papermill cannot "
                                  f"pass; quote it to pass a string")
        grid[name] = values
    return grid


def expand(grid: dict) -> list[dict]:
    """The cartesian product of the grid, in the order the names and values were given (last name fastest)."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _text(value) -> str:
    if isinstance(value, list):
        return "+".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_text(v)}" for k, v in value.items())
    return str(value)


def folder_name(combo: dict) -> str:
    """``{"seed": 0, "dataset": ["spiral", "xor"]}`` -> ``seed=0,dataset=spiral+xor`` (a safe file name)."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(f"{k}={_text(v)}" for k, v in combo.items()))


def precheck(source: Path, params: dict) -> str | None:
    """Run the notebook's own ``params.check`` on ``params`` (after its parameters cell's defaults), computing
    nothing else: the parameters cell, then the statements of the next code cell up to its opening call
    (``<chapter>.start(globals(), ...)`` or ``params.check(...)``: the imports and the check). Returns the check's
    error message, or None when the values pass or that shape is not found."""
    import nbformat

    from .chapter import checking_only, is_opening

    cells = nbformat.read(source, as_version=4).cells
    at = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])), None)
    code = [c for c in cells[at + 1:] if c.cell_type == "code"] if at is not None else []
    if not code:
        return None
    try:
        ast.parse(cells[at].source)
        tree = ast.parse(code[0].source)
    except SyntaxError:  # IPython magics and the like: leave the values to the run's own check
        return None
    opening = next((i for i, stmt in enumerate(tree.body) if is_opening(stmt)), None)
    if opening is None:
        return None
    check = ast.unparse(ast.Module(body=tree.body[:opening + 1], type_ignores=[]))
    namespace: dict = {}
    try:
        exec(compile(cells[at].source, f"{source.name} (parameters cell)", "exec"), namespace)
        namespace.update(params)
        with checking_only():
            exec(compile(check, f"{source.name} (check cell)", "exec"), namespace)
    except ValueError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - Checked (the values passed), or a cell shaped differently: the run checks it
        return None


def prepare(chapter: str, profile: str, grid: dict, overrides: dict | None = None,
            out: str | os.PathLike = "_build/sweeps", root: Path | None = None, check_values: bool = True) -> list[Job]:
    """Every job of the sweep, checked: chapter, names, values, clashes. Raises RunnerError; runs nothing."""
    root = Path(root) if root else find_root()
    overrides = dict(overrides or {})
    if not grid:
        raise RunnerError("no --grid given: name at least one parameter to sweep, e.g. --grid seed=0,1,2")
    if "profile" in grid or "profile" in overrides:
        raise RunnerError("profile is set by --profile (one profile per sweep), not by --grid or -p")
    both = sorted(set(grid) & set(overrides))
    if both:
        raise RunnerError(f"{', '.join(both)} given both with -p and with --grid; give each parameter once")
    try:
        chapters = plan(root, profile, [chapter], overrides)  # unknown chapter, -p names, profile problems
    except RunnerError as e:
        raise RunnerError(str(e).replace(f"--only {chapter}:", f"chapter {chapter}:", 1)) from None
    if len(chapters) != 1:
        raise RunnerError(f"{chapter!r} names {len(chapters)} chapters ({', '.join(c.stem for c in chapters)}); "
                          f"name one")
    ch = chapters[0]
    declared = declared_parameters(ch.source)
    unknown = sorted(set(grid) - set(declared))
    if unknown:
        raise RunnerError(f"{ch.stem}: unknown parameter(s) {', '.join(unknown)} (from --grid); "
                          f"valid parameters: {', '.join(declared)}")
    base = Path(out) / ch.stem
    jobs = []
    for combo in expand(grid):
        name = folder_name(combo)
        if any(j.folder.name == name for j in jobs):
            raise RunnerError(f"two grid points share the run folder name {name!r}; make the values distinct")
        params = {**ch.params, **combo}
        if check_values:
            problem = precheck(ch.source, params)
            if problem:
                raise RunnerError(f"{ch.stem} [{name}]: {problem}")
        jobs.append(Job(ch.stem, ch.source, combo, params, base / name))
    for job in jobs:  # a folder that is not a previous run of this sweep is never cleared
        f = job.folder
        if f.exists() and (not f.is_dir() or (any(f.iterdir()) and not (f / f"{job.stem}.ipynb").exists()
                                              and not (f / f"{job.stem}{METRICS_SUFFIX}").exists())):
            raise RunnerError(f"{f} exists and is not a run folder of {job.stem} (no {job.stem}.ipynb or "
                              f"{job.stem}{METRICS_SUFFIX} in it); move it away or choose another --out")
    return jobs


def _last_line(text) -> str:
    """The last non-empty line of an error message (its type is prefixed by the caller)."""
    return next((ln.strip() for ln in reversed(str(text).splitlines()) if ln.strip()), "")


def execute(job: Job) -> Job:
    """One papermill run in the job's own folder (its working directory); never raises for a failed run."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for k, v in {"PYDEVD_DISABLE_FILE_VALIDATION": "1", **KERNEL_MALLOC}.items():  # the kernel inherits these
        os.environ.setdefault(k, v)
    if job.folder.exists():  # a previous run of the same grid point: start clean
        shutil.rmtree(job.folder)
    job.folder.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(job.source), str(job.folder / job.source.name), parameters=job.params,
                                   cwd=str(job.folder), kernel_name="python3", progress_bar=False, log_output=False)
    except PapermillExecutionError as e:
        job.status, job.error = "failed", f"{e.ename}: {_last_line(e.evalue)}"
    except Exception as e:  # noqa: BLE001 - a kernel that died, a notebook papermill cannot read, ...
        job.status, job.error = "failed", f"{type(e).__name__}: {_last_line(e)}"
    else:
        metrics = job.folder / f"{job.stem}{METRICS_SUFFIX}"
        job.status, job.error = ("ok", "") if metrics.exists() else (
            "failed", f"the notebook did not write {metrics.name} (it must call Results.save())")
    job.wall_s = round(time.perf_counter() - t0, 2)
    return job


def table(jobs: list[Job], folder: Path):
    """One row per job: grid values, status, error, wall_s, folder, then the glued values ``collect`` finds."""
    import pandas as pd

    from .results import _cell, collect

    rows = pd.DataFrame.from_records([{**{k: _cell(v) for k, v in j.grid.items()}, "status": j.status,
                                       "error": j.error, "wall_s": j.wall_s,
                                       "folder": j.folder.relative_to(folder).as_posix()} for j in jobs])
    found = collect(folder, parameters=[]).drop(columns=["chapter", "wall_s"])
    found = found.rename(columns={c: f"{c} (glued)" for c in found.columns if c in rows.columns and c != "folder"})
    return rows.merge(found, on="folder", how="left")


def run(chapter: str, profile: str = "quick", grid: dict | None = None, overrides: dict | None = None,
        out: str | os.PathLike = "_build/sweeps", jobs: int = 1, root: Path | None = None, log=print):
    """Check, run every grid point (``jobs`` at a time through joblib) and write ``<out>/<chapter>/results.csv``.
    Returns the results DataFrame (also when runs failed; see its ``status`` column). Raises RunnerError for a
    bad input before anything runs."""
    import joblib

    root = Path(root) if root else find_root()
    out = Path(out) if Path(out).is_absolute() else root / out
    todo = prepare(chapter, profile, grid or {}, overrides, out, root)
    folder = out / todo[0].stem
    folder.mkdir(parents=True, exist_ok=True)
    with OutputLock(folder):
        log(f"[{todo[0].stem}] {len(todo)} run(s), profile {profile}, {jobs} at a time, into {folder}")
        done, t0 = [], time.perf_counter()
        for job in joblib.Parallel(n_jobs=jobs, return_as="generator_unordered")(map(joblib.delayed(execute), todo)):
            done.append(job)
            log(f"[{job.stem} {job.folder.name}] {job.status} in {job.wall_s:.1f}s {job.error}".rstrip())
        done.sort(key=lambda j: [t.folder for t in todo].index(j.folder))  # back in grid order
        df = table(done, folder)
        _write_atomic(folder / RESULTS_CSV, df.to_csv(index=False))
    log(f"[{todo[0].stem}] {sum(j.status == 'ok' for j in done)}/{len(done)} ok in "
        f"{time.perf_counter() - t0:.1f}s; results: {folder / RESULTS_CSV}")
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nbhelpers.sweep", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[1:]))
    ap.add_argument("chapter", metavar="NN", help="the chapter, by number or stem")
    ap.add_argument("--profile", default="quick", choices=PROFILES)
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                    help="a parameter and its values (YAML); repeat for more parameters (cartesian product)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="papermill parameter override (YAML value), the same for every run")
    ap.add_argument("--out", default="_build/sweeps",
                    help="output folder, relative to the book's root (default _build/sweeps)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    try:
        df = run(args.chapter, args.profile, parse_grid(args.grid), check_overrides(args.parameter), args.out,
                 args.jobs)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if (df["status"] == "ok").all() else 1


if __name__ == "__main__":
    from nbhelpers import sweep  # the importable module, so joblib's workers find execute() by name

    sys.exit(sweep.main())
