"""Integrity of data and runs (issue 19): damaged files fail as one error naming the file and the fix, datasets are
checked before use, and two runners cannot share an output folder. Every test is fast (tiny synthetic files)."""
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_book, synthetic_images as _synthetic
from nbhelpers import book
from nbhelpers.data import images


def _snapshot(folder):
    """{relative path: sha256} of every file below folder (to show an error changed nothing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ data

@pytest.mark.parametrize("recorded", [True, False], ids=["with-checksum", "legacy-without-checksum"])
def test_truncated_cache_is_one_error_naming_file_and_fix(tmp_path, recorded):
    path = images.save_cache(_synthetic(), tmp_path)
    assert images.checksum_path(path).exists()
    if not recorded:  # a cache written before checksums were recorded
        images.checksum_path(path).unlink()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a half-written file
    before = _snapshot(tmp_path)
    with pytest.raises(images.DataCorrupt) as e:
        images.load("cifar100", root=tmp_path, download=False)
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg and "delete" in msg and "nothing was trained" in msg
    assert _snapshot(tmp_path) == before  # the data folder is left as it was


def test_cache_not_matching_its_recorded_checksum(tmp_path):
    path = images.save_cache(_synthetic(), tmp_path)
    recorded = images.checksum_path(path).read_text()
    assert recorded.split()[0] == hashlib.sha256(path.read_bytes()).hexdigest() and path.name in recorded
    other = _synthetic()
    other.y_train = other.y_train[::-1].copy()  # a valid .npz, but not what was written
    np.savez(path, x_train=other.x_train, y_train=other.y_train, x_test=other.x_test, y_test=other.y_test,
             classes=np.array(other.classes))
    before = _snapshot(tmp_path)
    with pytest.raises(images.DataCorrupt) as e:
        images.load("cifar100", root=tmp_path, download=False)
    msg = str(e.value)
    assert str(path) in msg and "checksum" in msg and "cifar100.npz.sha256" in msg and "delete" in msg
    assert _snapshot(tmp_path) == before


def test_documented_cache_must_have_the_canonical_content(tmp_path):
    """A cifar10.npz that is not CIFAR-10 (a wrong or partial download) is refused, checksum file or not."""
    fake = _synthetic("cifar10", classes=10)
    np.savez(tmp_path / "cifar10.npz", x_train=fake.x_train, y_train=fake.y_train, x_test=fake.x_test,
             y_test=fake.y_test, classes=np.array(fake.classes))
    before = _snapshot(tmp_path)
    with pytest.raises(images.DataCorrupt, match="not the canonical CIFAR-10") as e:
        images.load("cifar10", root=tmp_path, download=False)
    assert str(tmp_path / "cifar10.npz") in str(e.value) and "shared/data" in str(e.value)
    assert _snapshot(tmp_path) == before
    with pytest.raises(images.DataCorrupt):
        images.save_cache(fake, tmp_path)


def test_legacy_cache_without_checksum_is_checked_then_recorded(tmp_path):
    data = _synthetic()
    path = images.save_cache(data, tmp_path)
    images.checksum_path(path).unlink()
    back = images.load("cifar100", root=tmp_path, download=False)
    np.testing.assert_array_equal(back.x_train, data.x_train)
    assert images.checksum_path(path).read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*tmp*"))


def _idx(array, magic):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def test_corrupt_torchvision_file_is_named_with_its_published_md5(tmp_path):
    """A tiny MNIST raw folder in torchvision's layout whose archives are not the published ones: torchvision would
    read the unpacked files without checking anything; we refuse, naming the file and torchvision's md5."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": _idx(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), 2051),
             "train-labels-idx1-ubyte": _idx(np.arange(6, dtype=np.uint8), 2049),
             "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), 2051),
             "t10k-labels-idx1-ubyte": _idx(np.arange(3, dtype=np.uint8), 2049)}
    for name, content in files.items():
        (raw / name).write_bytes(content)
        (raw / f"{name}.gz").write_bytes(gzip.compress(content))
    before = _snapshot(tmp_path)
    with pytest.raises(images.DataCorrupt) as e:
        images.load("mnist", root=tmp_path, download=False)
    msg = str(e.value)
    assert str(raw / "train-images-idx3-ubyte.gz") in msg and "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg
    assert "md5" in msg and "delete it" in msg and "nothing was trained" in msg
    assert _snapshot(tmp_path) == before  # no cache written from it


# ------------------------------------------------------------------ runner

def _mini_book(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "book", root / "book")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copytree(ROOT / "nbhelpers" / "profiles", root / "profiles")   # used through $NBHELPERS_PROFILES
    return root


def _previous_book(out):
    (out / "html").mkdir(parents=True)
    (out / "html" / "index.html").write_text("<p>previous book</p>")
    (out / "book" / "notebooks").mkdir(parents=True)
    (out / "book" / "notebooks" / "01_toy_attention.ipynb").write_text("{}")
    return _snapshot(out)


def test_malformed_profile_is_one_line_naming_file_and_line(tmp_path):
    root = _mini_book(tmp_path)
    profile = root / "profiles" / "quick.yml"  # not even the profile that runs: it is read for the book
    profile.write_text("01_toy_attention:\n  seeds: 3\n  n_train: [64, 128\n")
    out = tmp_path / "out"
    before = _previous_book(out)
    proc = run_book("--profile", "smoke", "--only", "01", "--out", str(out), cwd=root, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {profile}:4:") and "not valid YAML" in lines[0]
    assert "Traceback" not in proc.stderr
    assert _snapshot(out) == before

    profile.write_text("01_toy_attention:\n  seeds: 3\n02_gp_sequences:\n  - width\n")  # valid YAML, wrong shape
    proc = run_book("--profile", "smoke", "--only", "01", "--out", str(out), cwd=root, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {profile}:3: 02_gp_sequences: expected a mapping of parameter -> value, "
                                   f"got a list")
    assert _snapshot(out) == before


def test_second_runner_on_one_folder_refuses_naming_the_holder(tmp_path):
    root = _mini_book(tmp_path)
    out = tmp_path / "out"
    before = _previous_book(out)
    with book.OutputLock(out):
        holder = json.loads((out / book.LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        before[book.LOCK_NAME] = _snapshot(out)[book.LOCK_NAME]
        proc = run_book("--build-only", "--out", str(out), cwd=root, timeout=60)
        assert proc.returncode == 2
        msg = proc.stderr.strip()
        assert msg.startswith(f"error: {out} is in use by another runner: pid {os.getpid()}, started "
                              f"{holder['started']}") and len(msg.splitlines()) == 1
        assert _snapshot(out) == before  # nothing staged, swapped or cleaned
        with pytest.raises(book.OutputLocked, match=f"pid {os.getpid()}"):
            book.OutputLock(out).acquire()
    assert not (out / book.LOCK_NAME).exists()  # released


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    _previous_book(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / book.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "started": "2024-01-01T00:00:00+00:00"}))
    notes = []
    with book.OutputLock(out, log=notes.append):
        assert json.loads((out / book.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {dead.pid}" in notes[0] and "stale" in notes[0]
    assert "2024-01-01T00:00:00+00:00" in notes[0] and "no longer running" in notes[0]
    assert not (out / book.LOCK_NAME).exists()
    assert (out / "html" / "index.html").read_text() == "<p>previous book</p>"
