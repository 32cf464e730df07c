"""The runner's contract: parameters are checked before anything runs, failures name chapter and cell."""
import shutil

from conftest import ROOT, run_book


def _mini_book(tmp_path, profile_text):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "nbhelpers" / "profiles", tmp_path / "profiles")   # used through $NBHELPERS_PROFILES
    (tmp_path / "profiles" / "smoke.yml").write_text(profile_text)
    return tmp_path


def test_unknown_profile_parameter_exits_nonzero_naming_it(tmp_path):
    root = _mini_book(tmp_path, "01_toy_attention:\n  seedz: 3\n")
    proc = run_book("--profile", "smoke", "--no-build", cwd=root, timeout=120)
    assert proc.returncode == 2
    assert "seedz" in proc.stderr and "valid parameters:" in proc.stderr and "seeds" in proc.stderr
    assert not (root / "_build" / "book" / "notebooks" / "01_toy_attention.ipynb").exists()


def test_profile_naming_an_unknown_notebook_is_an_error(tmp_path):
    root = _mini_book(tmp_path, "07_missing:\n  seeds: 3\n")
    proc = run_book("--profile", "smoke", "--no-build", cwd=root, timeout=120)
    assert proc.returncode == 2 and "07_missing" in proc.stderr


def test_unknown_command_line_parameter(tmp_path):
    proc = run_book("--profile", "smoke", "--only", "01", "-p", "datset", "xor", "--out", str(tmp_path),
                    "--no-build", timeout=120)
    assert proc.returncode == 2 and "datset" in proc.stderr and "dataset" in proc.stderr


def test_bad_parameter_value_fails_in_validation_cell_naming_chapter_and_cell(tmp_path):
    proc = run_book("--profile", "smoke", "--only", "01", "-p", "datasets", "nope", "--out", str(tmp_path),
                    "--no-build", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "01_toy_attention" in out and "failed" in out and "cell" in out
    assert "ValueError" in out and "datasets='nope'" in out and "'spiral'" in out
    # it failed before any training: the failing cell is the validation cell right after the parameters
    assert "Heads" not in out.split("ValueError")[0][-200:]
    assert not (tmp_path / "book" / "notebooks" / "01_toy_attention.ipynb").exists()
    assert (tmp_path / "failed" / "01_toy_attention.ipynb").exists()


def test_gp_width_must_split_into_heads_before_any_compute(tmp_path):
    proc = run_book("--profile", "smoke", "--only", "02", "-p", "width", "10", "--out", str(tmp_path),
                    "--no-build", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "width=10 is not allowed" in out and "4 heads" in out
    assert not (tmp_path / "book" / "notebooks" / "02_gp_sequences.ipynb").exists()


def test_failure_names_chapter_and_cell_and_the_rest_still_runs(tmp_path):
    import yaml

    smoke = yaml.safe_load((ROOT / "nbhelpers" / "profiles" / "smoke.yml").read_text())
    profile = {"01_toy_attention": {**smoke["01_toy_attention"], "datasets": "nope"},
               "05_activations": smoke["05_activations"]}
    root = _mini_book(tmp_path, yaml.safe_dump(profile))
    proc = run_book("--profile", "smoke", "--only", "01", "05", "--no-build", cwd=root, timeout=600)
    assert proc.returncode == 1
    summary = proc.stdout[proc.stdout.index("chapter "):]
    assert "01_toy_attention" in summary and "failed" in summary and "cell" in summary
    assert "05_activations" in summary and " ok " in summary
    assert (root / "_build" / "book" / "notebooks" / "05_activations.ipynb").exists()


def test_interrupted_run_leaves_the_previous_book_intact(smoke_book, tmp_path):
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    from nbhelpers import book

    out = tmp_path / "out"
    shutil.copytree(smoke_book[0], out)
    watched = [out / "html" / "notebooks" / "01_toy_attention.html",
               out / "book" / "notebooks" / "01_toy_attention.ipynb"]
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in watched]
    proc = subprocess.Popen([sys.executable, "-m", "nbhelpers.book", "--profile", "smoke", "--only", "01",
                             "--force", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    running = out / "book" / "notebooks" / ".01_toy_attention.running.ipynb"
    deadline = time.time() + 120
    while not running.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert running.exists(), "the chapter never started"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "stopped" in stderr
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in watched] == before
    assert not running.exists() and not list(out.glob(".jb-*")) and not list(out.glob(".html-old-*"))
    # a SIGKILLed run cannot clean up: the next run removes what it left
    running.write_text("{}")
    (out / ".jb-dead").mkdir()
    book.clean_leftovers(out)
    assert not running.exists() and not (out / ".jb-dead").exists()
