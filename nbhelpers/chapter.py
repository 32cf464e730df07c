"""The opening of every chapter notebook: one call that checks the parameters, applies the profile, seeds
everything, prints the run header, starts the chapter's ``Results`` and sets the plot style::

    from nbhelpers import params
    from nbhelpers.chapters.ch05_activations import experiment as ch

    book = ch.start(globals(), steps=params.Int(1, 100_000), lr=params.Float(1e-6, 10))
    run, res, SEEDS = book.run, book.res, book.seeds

Each chapter's ``experiment.start`` is ``chapter.start`` with the chapter's name taken from its package
(``nbhelpers.chapters.ch05_activations`` -> ``05_activations``, the notebook's name: a test keeps the two equal)
and the chapter's own cross-parameter checks (``validate``), which run before anything is seeded or computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

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
    if checked.get("cpu_threads"):
        import torch

        torch.set_num_threads(checked["cpu_threads"])
    run = runtime.start(checked["profile"], checked["seed"], checked["device"])
    res = results.Results(name, run)
    style.use()
    first = checked["seed"]
    return Opening(name, checked, run, res, list(range(first, first + checked.get("seeds", 1))))
