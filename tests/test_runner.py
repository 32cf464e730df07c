"""The runner's contract: parameters are checked before anything runs, failures name chapter and cell."""
import shutil

from conftest import ROOT, run_book


def _mini_book(tmp_path, profile_text):
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "book", tmp_path / "book")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "book" / "profiles" / "smoke.yml").write_text(profile_text)
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
    proc = run_book("--profile", "smoke", "--only", "01", "-p", "dataset", "nope", "--out", str(tmp_path),
                    "--no-build", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "01_toy_attention" in out and "failed" in out and "cell" in out
    assert "ValueError" in out and "dataset='nope'" in out and "'spiral'" in out
    # it failed before any training: the failing cell is the validation cell right after the parameters
    assert "Heads" not in out.split("ValueError")[0][-200:]
    assert not (tmp_path / "book" / "notebooks" / "01_toy_attention.ipynb").exists()
    assert (tmp_path / "failed" / "01_toy_attention.ipynb").exists()
