"""Chapter 5 models: the two-moons MLP Linear(2→10) → act1 → Linear(10→10) → act2 → Linear(10→1), one variant per
registry entry.

``VARIANTS`` maps a file-safe name to a :class:`Variant`; ``build(name)`` returns the module. "a × b" means act1 = a
(after fc1) and act2 = b (after fc2). A single-name entry (relu, sigmoid, x², sgn) applies that function at *both*
places. Two entries have no pointwise activation at all:

- ``sort``: fc1 → sort the 10 features ascending (per sample) → fc2 → fc3.
- ``permute``: h = fc1(x); idx = argsort(h) (ascending); out = fc2(h) gathered by idx, i.e.
  out[:, j] = fc2(h)[:, idx[:, j]]; then fc3.

Layers keep PyTorch's default initialisation (the original did not set one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ... import train

ACTIVATIONS = {
    "abs": torch.abs, "exp": torch.exp, "cos": torch.cos, "sin": torch.sin, "square": torch.square,
    "relu": torch.relu, "sigmoid": torch.sigmoid, "inv": torch.reciprocal, "tan": torch.tan, "sgn": torch.sign,
}

SYMBOLS = {"square": "x²", "inv": "1/x"}  # how the book prints an activation, where not by its key
MIXED = {"sort": "fc1 → sort ascending → fc2 → fc3", "permute": "fc1 → fc2, gathered by argsort(fc1) → fc3"}


@dataclass(frozen=True)
class Variant:
    name: str                  # file-safe key (figure names, glue keys)
    label: str                 # as the book prints it
    act1: str | None = None    # key of ACTIVATIONS after fc1 (None for sort/permute)
    act2: str | None = None    # key of ACTIVATIONS after fc2
    mixing: str | None = None  # "sort" | "permute": the order-based variants
    expected: str = "fit"      # what the original reported: "fit" | "fail"
    piecewise: bool = False    # piecewise linear (or constant): linear regions are well defined

    @property
    def description(self) -> str:
        acts = f"fc1 → {SYMBOLS.get(self.act1, self.act1)} → fc2 → {SYMBOLS.get(self.act2, self.act2)} → fc3"
        return MIXED.get(self.mixing, acts)


VARIANTS = {v.name: v for v in (
    Variant("abs_abs", "abs × abs", "abs", "abs", piecewise=True),
    Variant("exp_exp", "exp × exp", "exp", "exp"),
    Variant("exp_cos", "exp × cos", "exp", "cos"),
    Variant("sin_sin", "sin × sin", "sin", "sin"),
    Variant("square", "x²", "square", "square"),
    Variant("relu", "relu", "relu", "relu", piecewise=True),
    Variant("sigmoid", "sigmoid", "sigmoid", "sigmoid"),
    Variant("sort", "sort", mixing="sort", piecewise=True),
    Variant("permute", "permute", mixing="permute", piecewise=True),
    Variant("inv_inv", "1/x × 1/x", "inv", "inv", expected="fail"),
    Variant("tan_tan", "tan × tan", "tan", "tan", expected="fail"),
    Variant("sgn", "sgn", "sgn", "sgn", expected="fail", piecewise=True),
)}
NAMES = tuple(VARIANTS)


def check_variant(name) -> Variant:
    train.choose("variant", name, NAMES)
    return VARIANTS[name]


def sort_features(h: torch.Tensor) -> torch.Tensor:
    """Each row's features in ascending order."""
    return torch.sort(h, dim=-1).values


def permute_by(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``values`` re-ordered per row by the ascending order of ``keys``: out[:, j] = values[:, argsort(keys)[:, j]]."""
    return torch.gather(values, -1, torch.argsort(keys, dim=-1))


class MoonsNet(nn.Module):
    """The 2-10-10-1 MLP of chapter 5 with the activation variant ``variant``."""

    def __init__(self, variant: str | Variant, n_in: int = 2, width: int = 10, n_out: int = 1):
        super().__init__()
        self.variant = variant if isinstance(variant, Variant) else check_variant(variant)
        self.fc1, self.fc2, self.fc3 = nn.Linear(n_in, width), nn.Linear(width, width), nn.Linear(width, n_out)

    def preactivations(self, x):
        """(fc1 output, fc2 output) — what act1 and act2 (or sort/permute) are applied to."""
        h1, v = self.fc1(x), self.variant
        a1 = sort_features(h1) if v.mixing == "sort" else h1 if v.mixing == "permute" else ACTIVATIONS[v.act1](h1)
        return h1, self.fc2(a1)

    def forward(self, x):
        (h1, h2), v = self.preactivations(x), self.variant
        return self.fc3(h2 if v.mixing == "sort" else permute_by(h2, h1) if v.mixing == "permute" else
                        ACTIVATIONS[v.act2](h2))

    def pattern(self, x) -> torch.Tensor | None:
        """Per point, the discrete state that fixes which affine (or constant) piece the network is on: the signs of
        all 20 pre-activations (relu, abs, sgn) or the order of fc1's outputs (sort, permute). None if the variant
        is not piecewise linear."""
        v = self.variant
        if not v.piecewise:
            return None
        h1, h2 = self.preactivations(x)
        if v.mixing:
            return torch.argsort(h1, dim=-1)
        return torch.cat([h1 > 0, h2 > 0], dim=-1).to(torch.int8)


def build(name: str, seed: int | None = None) -> MoonsNet:
    """The variant's network; with ``seed``, its initialisation is the one a training run with that seed starts from."""
    if seed is not None:
        torch.manual_seed(seed)
    return MoonsNet(check_variant(name))
