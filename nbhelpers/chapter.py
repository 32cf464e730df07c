"""The opening of every chapter notebook, ``book = ch.start(globals(), steps=params.Int(1, 100_000), ...)``: one
call that checks the parameters, applies the profile, seeds everything, prints the run header, starts the chapter's
``Results`` and sets the plot style. Each chapter's ``experiment.start`` is ``chapter.start`` with the chapter's name
taken from its package (``nbhelpers.chapters.ch05_activations`` -> ``05_activations``, the notebook's name: a test
keeps the two equal) and the chapter's own cross-parameter checks (``validate``), run before anything is seeded.
"""
from __future__ import annotations

import ast
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from . import params, results, runtime
from .viz import style

PACKAGE = re.compile(r"nbhelpers\.chapters\.ch(\d\d_\w+?)(?:\.|$)")


@dataclass
class Opening:
    """What ``start`` hands the notebook."""

    name: str                 # the notebook's name, e.g. "05_activations"
    params: dict              # the checked values (also written back into the notebook's globals)
    run: runtime.Run          # profile, seed, device, versions; printed as the run header
    res: results.Results      # the chapter's glued numbers and tables -> <name>.metrics.json
    seeds: list               # seed, seed + 1, ..., seed + seeds - 1 ([seed] when the chapter has no `seeds`)


class Checked(Exception):
    """Raised by ``start`` inside ``checking_only()`` once the parameters have passed: nothing was seeded or run."""


_checking_only = False


@contextmanager
def checking_only():
    """Inside the block ``start`` checks and validates the parameters, then raises ``Checked`` (the sweep's
    pre-check and the parameter fuzz tests run a notebook's opening this way, computing nothing)."""
    global _checking_only
    before, _checking_only = _checking_only, True
    try:
        yield
    finally:
        _checking_only = before


def is_opening(stmt) -> bool:
    """Whether an ``ast`` statement of a notebook's validation cell is its opening call: ``params.check(...)`` or
    ``<chapter>.start(globals(), ...)``."""
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "check" and isinstance(node.func.value, ast.Name) and node.func.value.id == "params":
                return True
            if node.func.attr == "start" and node.args and isinstance(node.args[0], ast.Call) \
                    and getattr(node.args[0].func, "id", None) == "globals":
                return True
    return False


def name_of(module: str) -> str:
    """``nbhelpers.chapters.ch05_activations[.experiment]`` -> ``05_activations``."""
    m = PACKAGE.match(module)
    if not m:
        raise ValueError(f"{module!r} is not a chapter module (nbhelpers.chapters.chNN_<notebook name>)")
    return m.group(1)


def start(namespace: dict, module: str, validate: Callable[[dict], None] | None = None, **specs) -> Opening:
    """Check the notebook's parameters (``params.check`` with the common profile, seed and device, plus
    ``specs``; the profile named by ``profile`` is applied), run ``validate(checked)`` (cross-parameter checks:
    raise ValueError), set ``cpu_threads`` when the chapter has that parameter and it is not 0, then seed, print
    the run header (``runtime.start``), start ``Results`` and set the book's plot style."""
    name = name_of(module)
    checked = params.check(namespace, name, **params.common(), **specs)
    if validate is not None:
        validate(checked)
    if _checking_only:
        raise Checked(name)
    if checked.get("cpu_threads"):
        torch.set_num_threads(checked["cpu_threads"])
    run = runtime.start(checked["profile"], checked["seed"], checked["device"])
    res = results.Results(name, run)
    style.use()
    return Opening(name, checked, run, res, list(range(checked["seed"], checked["seed"] + checked.get("seeds", 1))))
