"""Validate a notebook's papermill parameters before any compute.

A notebook declares its parameters (with full-size defaults) in the cell tagged ``parameters`` and, in the next
cell, checks them::

    params.check(globals(), dataset=params.Choice("all", *DATASETS, many=True), seeds=params.Int(1, 20))

Every failure is a ``ValueError`` naming the parameter and what is allowed. Unknown names that papermill injected
(a misspelt ``-p datset ...``) are caught here too, so the notebook fails before training even without the runner.
"""
from __future__ import annotations

import difflib
import types
from dataclasses import dataclass

# names IPython / papermill / the Colab cell put into a notebook's namespace
_NAMESPACE_NOISE = {"In", "Out", "exit", "quit", "get_ipython", "display"}


class Spec:
    kind = "value"

    def __call__(self, name, value):  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


def _bad(name, value, allowed):
    return ValueError(f"parameter {name}={value!r} is not allowed: expected {allowed}")


class Choice(Spec):
    """One of fixed values; with many=True also a list of them (a single value becomes a one-element list; an
    empty list only with empty=True, for optional rows a notebook can skip)."""

    def __init__(self, *values, many: bool = False, empty: bool = False):
        self.values, self.many, self.empty = values, many, empty
        self.kind = "list or str" if many else type(values[0]).__name__

    def __call__(self, name, value):
        items = value if self.many and isinstance(value, (list, tuple)) else [value]
        if self.many and not items and not self.empty:
            raise _bad(name, value, self.describe())
        for item in items:
            if item not in self.values:
                hint = difflib.get_close_matches(str(item), [str(v) for v in self.values], n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise _bad(name, value, self.describe() + extra)
        return list(items) if self.many else value

    def describe(self):
        vals = ", ".join(repr(v) for v in self.values)
        return f"one of {vals}" + (" or a list of them" if self.many else "") + (" (or [])" if self.empty else "")


@dataclass
class _Range(Spec):
    """A number of an accepted type within [lo, hi] (None: unbounded); NaN and booleans are rejected."""

    lo: float | None = None
    hi: float | None = None
    types = (int, float)
    noun = "a number"

    def __call__(self, name, value):
        if isinstance(value, bool) or not isinstance(value, self.types) or value != value \
                or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise _bad(name, value, self.describe())
        return self.types[-1](value)

    def describe(self):
        lo = self.lo if self.lo is not None else "-inf"
        hi = self.hi if self.hi is not None else "inf"
        return f"{self.noun} in [{lo}, {hi}]"


class Int(_Range):
    types, noun, kind = (int,), "an integer", "int"


class Float(_Range):
    types, noun, kind = (int, float), "a number", "float"


class Bool(Spec):
    kind = "bool"

    def __call__(self, name, value):
        if not isinstance(value, bool):
            raise _bad(name, value, self.describe())
        return value

    def describe(self):
        return "True or False"


def check(namespace: dict, **specs: Spec) -> dict:
    """Validate ``namespace[name]`` against each spec; reject unknown names. The cleaned values are written back
    into the namespace (so a single value given for a ``many`` parameter is a one-element list from here on)
    and returned."""
    declared = set(specs)
    unknown = sorted(
        k for k, v in namespace.items()
        if not k.startswith("_") and k not in declared and k not in _NAMESPACE_NOISE
        and not isinstance(v, (types.ModuleType, types.FunctionType, type)) and not callable(v)
    )
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; this notebook accepts: "
                         f"{', '.join(sorted(declared))}")
    missing = [k for k in specs if k not in namespace]
    if missing:
        raise ValueError(f"parameter(s) {', '.join(missing)} missing from the parameters cell")
    cleaned = {name: spec(name, namespace[name]) for name, spec in specs.items()}
    namespace.update(cleaned)
    return cleaned


PROFILES = ("full", "quick", "smoke")


def common() -> dict:
    """The parameters every chapter declares: profile (for the run header), seed and device."""
    from .runtime import DEVICES

    return {"profile": Choice(*PROFILES), "seed": Int(0, 2**31 - 1), "device": Choice(*DEVICES)}
