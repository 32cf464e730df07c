"""Numbers that leave a notebook: myst-nb glue for the prose and one metrics JSON per chapter for machines.

Every value glued for the book is also recorded in the chapter's metrics file, so what the reader sees and what
tests/benchmarks compare are the same numbers.
"""
from __future__ import annotations

import json
import math
import os
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


class Results:
    """Collects a chapter's glued numbers/tables and writes ``<chapter>.metrics.json`` into the working folder."""

    def __init__(self, chapter: str, run=None):
        self.chapter, self.run = chapter, run
        self.values: dict = {}
        self.tables: dict = {}

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

    def table(self, key: str, df: pd.DataFrame) -> pd.DataFrame:
        """Glue a table (``{glue:figure}`` or ``{glue}`` in prose) and record its rows."""
        if key in self.values or key in self.tables:
            raise ValueError(f"glue key {key!r} used twice (the book would show only one of them)")
        self.tables[key] = json.loads(df.reset_index().to_json(orient="records"))
        _glue(key, df)
        return df

    def as_dict(self) -> dict:
        return {"chapter": self.chapter, "run": self.run.as_dict() if self.run else None,
                "values": _plain(self.values), "tables": self.tables}

    def save(self, folder: str | os.PathLike = ".") -> Path:
        """Write the metrics JSON atomically; returns its path."""
        path = Path(folder) / f"{self.chapter}.metrics.json"
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.as_dict(), f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path
