"""Validate a notebook's papermill parameters before any compute, and apply its profile.

A notebook declares its parameters (with full-size defaults and type annotations) in the cell tagged
``parameters`` and, in the next cell, checks them::

    params.check(globals(), "01_toy_attention", datasets=params.Choice("all", *DATASETS, many=True),
                 seeds=params.Int(1, 20))

**Profiles** (``nbhelpers/profiles/{full,quick,smoke}.yml``, shipped with the package; the runner reads the same
files): the notebook's ``profile`` parameter picks one, and its values replace every parameter the user did not
set. A parameter counts as set when papermill injected it (``-p name value``) or when the parameters cell gives it
a value other than the full-size default (``full.yml``, which a test keeps equal to every parameters cell). So
in Colab, ``profile = "quick"`` alone gives a quick run, and ``profile = "quick"`` with ``seeds = 2`` a quick run
with 2 seeds. ``params.last_origins`` says where each value came from (set / profile / default); the run header
prints it.

Every failure is a ``ValueError`` naming the parameter and what is allowed. Unknown names are caught too: in a
notebook, the names assigned by the parameters cell and by papermill's injected cell (a misspelt
``-p datset ...``), so re-running the check cell after a first run works (the globals that later cells made are
not parameters); outside IPython, every global that is not declared. Renamed parameters are refused with their
new name.
"""
from __future__ import annotations

import ast
import copy
import difflib
import types
from dataclasses import dataclass
from pathlib import Path

import yaml

# the cleaned values of the latest successful check() in this process (None before one): what results.Results
# records as the run's parameters when it is not given them explicitly
last_checked: dict | None = None

last_origins: dict | None = None   # {name: "set" | "profile <name>" | "default"} of the latest check

PROFILES = ("full", "quick", "smoke")
PROFILE_DIR = Path(__file__).parent / "profiles"   # shipped with the package: full.yml, quick.yml, smoke.yml
PROFILE_ENV = "NBHELPERS_PROFILES"                # a folder of your own profile files instead (runner and notebooks)
# old parameter names -> their name now (one name per concept across chapters)
RENAMED = {"dataset": "datasets", "variant": "variants"}
_NOT_LITERAL = object()

# names IPython / papermill / the Colab cell put into a notebook's namespace
_NAMESPACE_NOISE = {"In", "Out", "exit", "quit", "get_ipython", "display", "BOOK_REF"}


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


class _OfType(Spec):
    """Any value of one Python type."""
    type, words = object, "a value"

    def __call__(self, name, value):
        if not isinstance(value, self.type):
            raise _bad(name, value, self.describe())
        return value

    def describe(self):
        return self.words


class Bool(_OfType):
    kind, type, words = "bool", bool, "True or False"


class Text(_OfType):
    """Any string (e.g. a folder; "" for none)."""
    kind, type, words = "str", str, "a string"


def profile_dir() -> Path:
    """Where the profile files are: $NBHELPERS_PROFILES when set, else the package's own."""
    import os

    return Path(os.environ.get(PROFILE_ENV) or PROFILE_DIR)


def profile_values(profile: str, chapter: str) -> dict:
    """The values ``profile`` gives the chapter's parameters (full: the full-size defaults of every parameter)."""
    if profile not in PROFILES:
        raise _bad("profile", profile, Choice(*PROFILES).describe())
    path = profile_dir() / f"{profile}.yml"
    data = yaml.safe_load(path.read_text()) or {}
    return dict(data.get(chapter) or {})


def _assigned(source: str) -> dict:
    """{name: literal value (or _NOT_LITERAL)} for every top-level ``name = ...`` / ``name: T = ...`` of a cell."""
    try:
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return {}
    out = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    out[t.id] = _NOT_LITERAL
    return out


def _parameter_cells(namespace: dict):
    """From IPython's history (``In``): the latest parameters cell (the latest cell assigning ``profile`` that is
    not papermill's) and papermill's injected cells after it, as ({name: literal}, {name: literal}); None when
    there is no history or no such cell (plain Python)."""
    history = namespace.get("In")
    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
        return None
    injected: dict = {}
    for source in reversed(history[:-1]):           # the last entry is the cell running this check
        names = _assigned(source)
        if source.lstrip().startswith("# Parameters"):
            injected = {**names, **injected}
        elif "profile" in names:
            return names, injected
    return None


def check(namespace: dict, chapter: str | None = None, **specs: Spec) -> dict:
    """Validate ``namespace[name]`` against each spec after applying the chapter's profile; reject unknown and
    renamed names. The cleaned values are written back into the namespace (so a single value given for a ``many``
    parameter is a one-element list from here on) and returned; a copy is kept in ``params.last_checked``
    (``results.Results`` records it in the metrics JSON) and the origin of each in ``params.last_origins``.
    ``chapter=None`` checks without applying a profile."""
    global last_checked, last_origins
    declared = set(specs)
    cells = _parameter_cells(namespace)
    if cells is not None:
        given = {**cells[0], **cells[1]}
        candidates = set(given)
    else:
        candidates = {k for k, v in namespace.items()
                      if not isinstance(v, (types.ModuleType, types.FunctionType, type)) and not callable(v)}
    unknown = sorted(k for k in candidates if not k.startswith("_") and k not in declared and k not in _NAMESPACE_NOISE)
    renamed = [f"{k} (renamed {RENAMED[k]})" for k in unknown if RENAMED.get(k) in declared]
    if renamed:
        raise ValueError(f"parameter(s) {', '.join(renamed)}: use the new name; this notebook accepts: "
                         f"{', '.join(sorted(declared))}")
    if unknown:
        hints = [f"{k} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, declared, n=1)) else k
                 for k in unknown]
        raise ValueError(f"unknown parameter(s) {', '.join(hints)}; this notebook accepts: "
                         f"{', '.join(sorted(declared))}")
    missing = [k for k in specs if k not in namespace]
    if missing:
        raise ValueError(f"parameter(s) {', '.join(missing)} missing from the parameters cell")
    origins = {name: "default" for name in specs}
    if chapter is not None and "profile" in specs:
        profile = specs["profile"]("profile", namespace["profile"])
        defaults, chosen = profile_values("full", chapter), profile_values(profile, chapter)
        if cells is not None:
            explicit = set(cells[1]) | {k for k, v in cells[0].items() if k in defaults and v != defaults[k]}
        else:
            explicit = {k for k in specs if k in defaults and namespace[k] != defaults[k]}
        for name in specs:
            if name in explicit or name == "profile":
                # the runner passes a profile's values as papermill parameters: those keep the profile's name
                from_profile = cells is not None and name in cells[1] and name in chosen and profile != "full" \
                    and cells[1][name] == chosen[name]
                origins[name] = f"profile {profile}" if from_profile else "set" if name in explicit else "default"
            elif name in chosen and profile != "full":
                namespace[name] = chosen[name]
                origins[name] = f"profile {profile}"
    cleaned = {name: spec(name, namespace[name]) for name, spec in specs.items()}
    namespace.update(cleaned)
    last_checked, last_origins = copy.deepcopy(cleaned), origins
    return cleaned


def common() -> dict:
    """The parameters every chapter declares: profile (for the run header), seed and device."""
    from .runtime import DEVICES

    return {"profile": Choice(*PROFILES), "seed": Int(0, 2**31 - 1), "device": Choice(*DEVICES)}
