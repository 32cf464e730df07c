"""Chapter 1 models for 2-D points: attention across head slices ("Heads") and the MLPs it is compared with.

All Linear layers start from N(0, 0.02) weights and zero biases, as in the original. Every model exposes ``hidden(x)``
-> {layer name: (B, units)} so the book can draw per-unit maps; its output layer reads the last of them."""
from __future__ import annotations

import math

import torch
from torch import nn

from ...train import choose

MODELS = ("heads", "mlp", "relu_mlp")
LABELS = {"heads": "Heads (attention)", "mlp": "tanh MLP", "relu_mlp": "ReLU MLP (param-matched)"}


def init_weights(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class _Readout(nn.Module):
    def forward(self, x):
        return self.out(list(self.hidden(x).values())[-1])


class Heads(_Readout):
    """Linear(in -> n_embd); the n_embd units are cut into n_head slices and each slice is a *token*;
    self-attention across those tokens with Q = K = V = the slice (no projections, scale 1/sqrt(slice));
    flatten; Linear(n_embd -> out). Softmax is the only nonlinearity."""

    def __init__(self, n_in: int = 2, n_embd: int = 8, n_head: int = 4, n_out: int = 1):
        super().__init__()
        if n_head < 1 or n_embd < 1 or n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a positive multiple of n_head ({n_head})")
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.embed = nn.Linear(n_in, n_embd)
        self.out = nn.Linear(n_embd, n_out)
        init_weights(self)

    def _tokens(self, x):
        e = self.embed(x)
        return e, e.view(len(x), self.n_head, self.head_size)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_head, n_head) attention weights: row i = how token (slice) i mixes the slices."""
        _, t = self._tokens(x)
        return torch.softmax(t @ t.transpose(1, 2) / math.sqrt(self.head_size), dim=-1)

    def hidden(self, x):
        e, t = self._tokens(x)
        return {"embedding": e, "after attention": (self.attention(x) @ t).flatten(1)}


class MLP(_Readout):
    """Linear -> tanh -> Linear -> tanh -> Linear (the original's comparison model)."""

    def __init__(self, n_in: int = 2, n_embd: int = 8, n_out: int = 1):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(n_in, n_embd), nn.Linear(n_embd, n_embd), nn.Linear(n_embd, n_out)
        init_weights(self)

    def hidden(self, x):
        h1 = torch.tanh(self.fc1(x))
        return {"tanh layer 1": h1, "tanh layer 2": torch.tanh(self.fc2(h1))}


class ReLUMLP(_Readout):
    """One hidden ReLU layer: with n_embd=8 it has exactly Heads' parameter count (the fair comparison)."""

    def __init__(self, n_in: int = 2, n_embd: int = 8, n_out: int = 1):
        super().__init__()
        self.fc, self.out = nn.Linear(n_in, n_embd), nn.Linear(n_embd, n_out)
        init_weights(self)

    def hidden(self, x):
        return {"relu layer": torch.relu(self.fc(x))}


def build(name: str, n_out: int, n_embd: int = 8, n_head: int = 4, n_in: int = 2) -> nn.Module:
    choose("model", name, MODELS)
    if name == "heads":
        return Heads(n_in, n_embd, n_head, n_out)
    return (MLP if name == "mlp" else ReLUMLP)(n_in, n_embd, n_out)
