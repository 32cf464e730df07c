"""Same seed, same numbers: a second smoke run of every chapter reproduces the metrics JSON exactly on CPU
(timings aside); another seed changes them."""
import json
import re

from conftest import run_book

TIMING = re.compile(r"\bms\b|wall", re.I)  # measured durations legitimately differ between runs


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _metrics(out):
    return {p.name: _strip(json.loads(p.read_text())) for p in sorted((out / "book" / "notebooks").glob("*.metrics.json"))}


def test_same_seed_same_metrics_other_seed_differs(smoke_book, tmp_path):
    first = _metrics(smoke_book[0])
    again = run_book("--profile", "smoke", "--no-build", "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    second = _metrics(tmp_path / "again")
    assert first.keys() == second.keys() and len(first) >= 1
    for name in first:
        assert first[name] == second[name], f"{name} is not reproducible with the same seed"
    other = run_book("--profile", "smoke", "--no-build", "--only", "01", "05", "-p", "seed", "1",
                     "--out", str(tmp_path / "other"))
    assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-2000:]
    third = _metrics(tmp_path / "other")
    for name in third:
        assert third[name]["values"] != first[name]["values"], f"{name}: seed 1 gave the same numbers as seed 0"
