"""Sweeps (nbhelpers.sweep) and the run's parameters/code version in the metrics JSON (results.collect).

The real sweep here runs a tiny fake chapter in a temporary book (a parameters cell, the check, Results): a
chapter-1 smoke run takes 24 s alone on 2 cores, too long for the suite; the README measures the real one."""
import json
import subprocess

import nbformat
import pandas as pd
import pytest

from nbhelpers import params, results, sweep
from nbhelpers.book import RunnerError

FAKE = "99_fake"
PARAMETERS = 'profile = "full"\nseed = 0\ndevice = "cpu"\nscale = 1.0\nfail_seed = -1\n'
CHECK = """from nbhelpers import params, results
P = params.check(globals(), profile=params.Choice("full", "quick", "smoke"), seed=params.Int(0, 100),
                 device=params.Choice("cpu"), scale=params.Float(0, 10), fail_seed=params.Int(-1, 100))
res = results.Results("99_fake")
"""
WORK = """import os
if seed == fail_seed:
    raise RuntimeError(f"first line\\nboom on seed {seed}")
open("figure.txt", "w").write(f"{seed} {os.getcwd()}")
res.glue("score", seed * scale)
res.glue("label", f"s{seed}")
res.table("t", __import__("pandas").DataFrame({"x": [1]}))
res.save()
"""


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A one-chapter book: _toc.yml, notebooks/99_fake.ipynb and a smoke profile that sets scale (its own profile
    files, through $NBHELPERS_PROFILES)."""
    root = tmp_path / "book"
    monkeypatch.setenv("NBHELPERS_PROFILES", str(root / "profiles"))
    (root / "notebooks").mkdir(parents=True)
    (root / "profiles").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: notebooks/99_fake\nparts: []\n")
    (root / "profiles" / "smoke.yml").write_text("99_fake:\n  scale: 2.0\n")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(CHECK), nbformat.v4.new_code_cell(WORK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / f"{FAKE}.ipynb")
    return root


def test_grid_parsing_and_cartesian_expansion():
    grid = sweep.parse_grid(["seed=0,1,2", "dataset=[spiral, xor],circle", "lr=1e-2,0.1"])
    assert grid == {"seed": [0, 1, 2], "dataset": [["spiral", "xor"], "circle"], "lr": ["1e-2", 0.1]}
    combos = sweep.expand({"seed": [0, 1], "dataset": ["a", "b", "c"]})
    assert len(combos) == 6 and combos[0] == {"seed": 0, "dataset": "a"} and combos[1] == {"seed": 0, "dataset": "b"}
    assert sweep.folder_name({"seed": 0, "dataset": ["spiral", "xor"]}) == "seed=0,dataset=spiral+xor"
    assert sweep.folder_name({"x": "a/b c"}) == "x=a_b_c"


@pytest.mark.parametrize("spec, fragment", [
    ("seed", "expected NAME=VALUE"), ("seed=", "empty value"), ("seed=0,0", "given twice"),
    ("seed=0,[1", "not a comma-separated list"), ("seed=2020-01-01", "as a date"), ("1x=3", "expected NAME=VALUE"),
])
def test_bad_grid_specs_are_errors(spec, fragment):
    with pytest.raises(RunnerError, match=fragment):
        sweep.parse_grid([spec])
    with pytest.raises(RunnerError, match="seed is given twice"):
        sweep.parse_grid(["seed=0", "seed=1"])


@pytest.mark.parametrize("argv, fragment", [
    (["98", "--grid", "seed=0,1"], "chapter 98: no chapter '98'"),
    (["99", "--grid", "sed=0,1"], "unknown parameter(s) sed (from --grid); valid parameters: profile, seed"),
    (["99", "--grid", "seed=0,1", "-p", "scal", "2"], "unknown parameter(s) scal"),
    (["99", "--grid", "seed=0,1", "-p", "seed", "2"], "seed given both with -p and with --grid"),
    (["99", "--grid", "scale=1,11"],
     "99_fake [scale=11]: parameter scale=11 is not allowed: expected a number in [0, 10]"),
    (["99", "--grid", "seed=0,x"], "99_fake [seed=x]: parameter seed='x' is not allowed"),
    (["99", "--grid", "profile=quick"], "profile is set by --profile"),
    (["99"], "no --grid given"),
])
def test_bad_input_is_one_error_line_before_anything_runs(book, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(book)
    assert sweep.main([*argv, "--profile", "smoke", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
    assert not (book / "out").exists()  # nothing ran, no folder was made


def test_a_folder_that_is_not_a_run_folder_is_never_cleared(book):
    stranger = book / "out" / FAKE / "seed=0"
    stranger.mkdir(parents=True)
    (stranger / "precious.txt").write_text("mine")
    with pytest.raises(RunnerError, match="is not a run folder"):
        sweep.prepare("99", "smoke", {"seed": [0]}, out=book / "out", root=book)
    assert (stranger / "precious.txt").read_text() == "mine"


def test_jobs_carry_profile_then_p_then_grid_values(book):
    jobs = sweep.prepare("99", "smoke", {"seed": [3, 4]}, {"fail_seed": 4}, out=book / "o", root=book)
    assert [j.params for j in jobs] == [{"scale": 2.0, "fail_seed": 4, "profile": "smoke", "seed": s} for s in (3, 4)]
    assert [j.folder for j in jobs] == [book / "o" / FAKE / "seed=3", book / "o" / FAKE / "seed=4"]
    # -p overrides the profile's value
    assert sweep.prepare("99", "smoke", {"seed": [0]}, {"scale": 5}, out=book, root=book)[0].params["scale"] == 5


def test_results_records_checked_parameters_and_code_version(tmp_path):
    P = params.check({"seed": 3, "dataset": "xor"}, seed=params.Int(0, 9), dataset=params.Choice("xor", many=True))
    P["dataset"].append("changed later")  # the record is a copy of what the check accepted
    data = json.loads(results.Results("99_test").save(tmp_path).read_text())
    assert data["parameters"] == {"seed": 3, "dataset": ["xor"]}
    assert json.loads(results.Results("99_test", parameters={"a": 1}).save(tmp_path).read_text())["parameters"] \
        == {"a": 1}
    code = data["code"]
    assert code["nbhelpers"] == results.code_version()["nbhelpers"] and len(code["source_sha256"]) == 64
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=results.__file__.rsplit("/", 1)[0], capture_output=True,
                          text=True)
    if head.returncode == 0:  # run from a git checkout
        assert code["git_commit"] == head.stdout.strip() and isinstance(code["git_dirty"], bool)


def test_code_version_outside_a_checkout_is_none_and_hash_follows_the_source(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    first = results.code_version(pkg)
    assert first["git_commit"] is None and first["git_dirty"] is None
    (pkg / "a.py").write_text("x = 2\n")
    assert results.code_version(pkg)["source_sha256"] != first["source_sha256"]


def _metrics(folder, chapter, parameters, values, run=True):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"chapter": chapter, "values": values, "tables": {"t": [{"x": 1}]},
            "run": {"profile": "smoke", "seed": (parameters or {}).get("seed", 7), "device": "cpu", "wall_s": 1.5}
            if run else None}
    if parameters is not None:
        data["parameters"] = parameters
    (folder / f"{chapter}.metrics.json").write_text(json.dumps(data))


def test_collect_gathers_every_metrics_file_with_its_parameters(tmp_path):
    _metrics(tmp_path / "a", "01_x", {"seed": 0, "dataset": ["xor"]}, {"acc": 0.5, "note": "ok", "seed": 9})
    _metrics(tmp_path / "b" / "deep", "01_x", {"seed": 1, "dataset": ["xor", "spiral"]}, {"acc": 0.7})
    _metrics(tmp_path / "old", "01_x", None, {"acc": 0.1})  # written before parameters were recorded
    (tmp_path / "a" / "notes.json").write_text("{}")  # not a metrics file
    df = results.collect(tmp_path)
    assert list(df["folder"]) == ["a", "b/deep", "old"]
    assert list(df.columns) == ["folder", "chapter", "seed", "dataset", "profile", "device", "wall_s", "acc", "note",
                                "seed (glued)"]
    assert list(df["seed"]) == [0, 1, 7] and list(df["acc"]) == [0.5, 0.7, 0.1]
    assert df["dataset"].tolist()[:2] == ['["xor"]', '["xor","spiral"]'] and df["wall_s"].tolist() == [1.5] * 3
    assert df.loc[0, "note"] == "ok" and pd.isna(df.loc[1, "note"]) and df.loc[0, "seed (glued)"] == 9
    assert list(results.collect(tmp_path, parameters=["dataset"]).columns[:3]) == ["folder", "chapter", "dataset"]
    (tmp_path / "bad.metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.metrics.json: not a readable metrics file"):
        results.collect(tmp_path)


def test_sweep_runs_each_point_in_its_own_folder_and_collects_a_table(book, monkeypatch, capsys):
    monkeypatch.chdir(book)  # the command line, in-process: two runs side by side, seed 1 fails on purpose
    code = sweep.main(["99", "--profile", "smoke", "--grid", "seed=0,1", "-p", "fail_seed", "1", "--out", "out",
                       "--jobs", "2"])
    log = capsys.readouterr().out
    assert code == 1 and "[99_fake seed=1] failed" in log and "1/2 ok" in log  # exit code 1: a run failed
    folder = book / "out" / FAKE
    table = pd.read_csv(folder / "results.csv")
    assert list(table.columns[:5]) == ["seed", "status", "error", "wall_s", "folder"]
    assert table["seed"].tolist() == [0, 1] and table["status"].tolist() == ["ok", "failed"]
    assert table.loc[1, "error"] == "RuntimeError: boom on seed 1" and pd.isna(table.loc[0, "error"])
    assert table.loc[0, "score"] == 0.0 and table.loc[0, "label"] == "s0" and pd.isna(table.loc[1, "score"])
    assert (table["wall_s"] > 0).all() and "t" not in table.columns  # tables are not scalar values
    ok, failed = folder / "seed=0", folder / "seed=1"
    # each run ran in its own folder and wrote only there: executed notebook, metrics, "figure"
    assert (ok / "figure.txt").read_text() == f"0 {ok}"
    assert (ok / f"{FAKE}.ipynb").exists() and (failed / f"{FAKE}.ipynb").exists()
    assert not (failed / "figure.txt").exists() and not (failed / f"{FAKE}.metrics.json").exists()
    metrics = json.loads((ok / f"{FAKE}.metrics.json").read_text())
    assert metrics["parameters"] == {"profile": "smoke", "seed": 0, "device": "cpu", "scale": 2.0, "fail_seed": 1}
    assert metrics["code"]["source_sha256"] == results.code_version()["source_sha256"]
    assert not list(book.glob("*.metrics.json")) and not (book / "notebooks" / "figure.txt").exists()
    # plain collect over the same folder finds the one metrics file, with its recorded parameters
    plain = results.collect(folder)
    assert plain["folder"].tolist() == ["seed=0"] and plain.loc[0, "scale"] == 2.0 and plain.loc[0, "score"] == 0.0

