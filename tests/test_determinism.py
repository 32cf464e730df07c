"""Same seed, same numbers: a second smoke run of every chapter reproduces the metrics JSON exactly on CPU
(timings aside); another seed changes them; and the smoke run reproduces the recorded state in
``tests/data/smoke_metrics.json`` (a refactoring must not change a single number).

When a change is meant to change results, record the new state from a smoke book and say so in the commit::

    python -m nbhelpers.book --profile smoke --no-build --out /tmp/smoke
    python tests/test_determinism.py /tmp/smoke
"""
import json
import re
import sys
from pathlib import Path

from conftest import run_book

RECORDED = Path(__file__).parent / "data" / "smoke_metrics.json"
KEPT = ("parameters", "values", "tables")   # what a run computes (run header and code version aside)

TIMING = re.compile(r"\bms\b|wall", re.I)  # measured durations legitimately differ between runs


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not TIMING.search(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _metrics(out):
    paths = sorted((out / "book" / "notebooks").glob("*.metrics.json"))
    return {p.name: _strip(json.loads(p.read_text())) for p in paths}


def _computed(out):
    return {name: {k: m[k] for k in KEPT} for name, m in _metrics(out).items()}


def test_smoke_run_reproduces_the_recorded_metrics(smoke_book):
    recorded, now = json.loads(RECORDED.read_text()), _computed(smoke_book[0])
    assert now.keys() == recorded.keys()
    for name in recorded:
        for part in KEPT:
            old, new = recorded[name][part], now[name][part]
            if isinstance(old, dict):
                changed = sorted(k for k in old.keys() | new.keys() if old.get(k, "(absent)") != new.get(k, "(absent)"))
                assert not changed, f"{name}: {part} changed: " + "; ".join(
                    f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in changed[:8])[:3000]
            assert old == new, f"{name}: {part} changed"


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


if __name__ == "__main__":   # record the state of a smoke book: python tests/test_determinism.py OUT
    RECORDED.write_text(json.dumps(_computed(Path(sys.argv[1])), indent=1, sort_keys=True) + "\n")
    print(f"recorded {RECORDED}")
