"""Chapter 4 models: the "Ultimus" network on CIFAR-10, faithful to its spec, with a switch per ablation, plus a
fixed-spec and a repaired variant.

The spec: three 3×3 convs 3→16→32→48 (padding 0: 32→30→28→26), global average pooling → X (48); four Ultimus
blocks — K, Q, V = Linear(48→8, no bias), AM = softmax(QᵀK/√8) (an 8×8 outer product, softmax over the Q index),
Z = V·AM (8), Out = Linear(8→48, no bias) — wired u1 = U1(X), u2 = U2(X+u1), u3 = U3(X+u2), u4 = U4(X+u3); then
FC(48→10, no bias) on u4. The original convs have no bias, no BatchNorm and no ReLU. That is 25,488 parameters.

Switches (``build(...)`` keywords; defaults = the original):
- ``conv``: "linear" (original) | "bn_relu" (each conv followed by BatchNorm + ReLU).
- ``tokens``: False (original: attend over the 8 features of the single pooled vector) | True (every spatial
  position of the conv map is a token — 26×26 = 676 at the spec's size; Ultimus attention runs across the tokens
  and the pooling comes after the blocks). ``token_pool`` average-pools the map first (26 → 13 with 2).
- ``softmax``: "q" (original: normalise over the Q index i of q_i·k_j, output Z_j = Σ_i v_i AM[i, j]) | "k"
  (normalise over the K index j, the other dimension). Over tokens, "q" is standard attention with the roles of
  Q and K swapped (K's tokens ask, Q's tokens answer), "k" is the textbook orientation.
- ``scale``: "inside" (softmax(QᵀK/√8), as the formula says) | "after" (softmax(QᵀK)/√8: the spec's typo).
- ``backbone``: "spec" (the three convs above) | "separable" (the repaired model's feature extractor: one 3×3
  conv, then depthwise-separable residual blocks 16→48 @32, 48→64→64 @16, 64→64→48 @8; ``separable_stack``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...train import choose

CONVS = ("linear", "bn_relu")
SCALES = ("inside", "after")
SOFTMAX = ("q", "k")
BACKBONES = ("spec", "separable")
WIDTHS = (16, 32, 48)
PARAMS_FAITHFUL = 25_488


class UltimusBlock(nn.Module):
    """One Ultimus block: K, Q, V = Linear(dim→d), attention, Out = Linear(d→dim), all without bias.

    Input (B, dim) — the original: AM[b, i, j] = q_i k_j / √d (an outer product; i indexes Q) normalised over i
    (``softmax="q"``) or over j ("k"), and Z_j = Σ_i v_i AM[i, j]. Input (B, T, dim) — tokens: the same formula with
    i, j indexing tokens, AM[i, j] = q_i · k_j / √d, Z_j = Σ_i AM[i, j] v_i. ``scale="after"`` divides the softmax
    output by √d instead (the spec's typo)."""

    def __init__(self, dim: int = 48, d: int = 8, scale: str = "inside", softmax: str = "q"):
        super().__init__()
        choose("scale", scale, SCALES)
        choose("softmax", softmax, SOFTMAX)
        self.k, self.q, self.v = (nn.Linear(dim, d, bias=False) for _ in range(3))
        self.out = nn.Linear(d, dim, bias=False)
        self.d, self.scale, self.softmax = d, scale, softmax

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention matrix AM[i, j] (i indexes Q, j indexes K): (B, d, d) for one vector per image, (B, T, T)
        for tokens."""
        q, k = self.q(x), self.k(x)
        s = 1.0 if self.scale == "after" else 1 / math.sqrt(self.d)
        scores = q[:, :, None] * k[:, None, :] if x.dim() == 2 else q @ k.transpose(1, 2)
        am = torch.softmax(scores * s, dim=1 if self.softmax == "q" else 2)
        return am / math.sqrt(self.d) if self.scale == "after" else am

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v(x)
        if x.dim() == 3 and self.scale == "inside":
            # the same attention through the fused kernel (no T×T matrix kept: 676 tokens at batch 512 would
            # hold about 1 GB per block): softmax over Q's index = SDPA with K's tokens as the queries
            q, k = self.q(x), self.k(x)
            query, key = (k, q) if self.softmax == "q" else (q, k)
            return self.out(nn.functional.scaled_dot_product_attention(query, key, v))
        am = self.attention(x)
        if x.dim() == 2:
            z = (v[:, None, :] @ am)[:, 0]           # Z_j = Σ_i v_i AM[i, j]     (B, d)
        else:
            z = (am.transpose(1, 2) if self.softmax == "q" else am) @ v  # Z = AMᵀ V (or AM V)   (B, T, d)
        return self.out(z)


def conv_stack(conv: str = "linear", widths=WIDTHS) -> nn.Sequential:
    """3×3 convs 3→w1→w2→w3, padding 0, without bias; "bn_relu" adds BatchNorm + ReLU after each."""
    choose("conv", conv, CONVS)
    layers = []
    for c_in, c in zip((3, *widths), widths):
        layers.append(nn.Conv2d(c_in, c, 3, bias=False))
        if conv == "bn_relu":
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Separable(nn.Module):
    """Depthwise 3×3 conv + BN + ReLU, pointwise 1×1 conv + BN, a residual add when the widths match, ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                                  nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                                  nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x) if self.residual else self.body(x))


SEPARABLE_PLAN = (16, 48, "pool", 64, 64, "pool", 64, 48)


def separable_stack(plan=SEPARABLE_PLAN) -> nn.Sequential:
    """The repaired feature extractor: a 3×3 conv (3→plan[0], BN, ReLU) at 32×32, then a ``Separable`` block per
    width and a 2×2 max-pool per "pool" — by default 32×32×48 → 16×16×64 → 8×8×48, about 13 k parameters.
    Depthwise-separable blocks buy depth (receptive field 32 px) and width for few parameters."""
    layers = [nn.Conv2d(3, plan[0], 3, padding=1, bias=False), nn.BatchNorm2d(plan[0]), nn.ReLU(inplace=True)]
    c = plan[0]
    for item in plan[1:]:
        if item == "pool":
            layers.append(nn.MaxPool2d(2))
        else:
            layers.append(Separable(c, item))
            c = item
    return nn.Sequential(*layers)


class Ultimus(nn.Module):
    """convs → (pool → 4 Ultimus blocks | 4 token blocks → pool) → FC(→10, no bias) on u4 (``head_skip``: on
    X + u4). ``blocks=0`` with ``head_skip`` is the same network without attention: FC on the pooled X."""

    def __init__(self, conv: str = "linear", tokens: bool = False, scale: str = "inside", softmax: str = "q",
                 token_pool: int = 1, blocks: int = 4, d: int = 8, widths=WIDTHS, num_classes: int = 10,
                 head_skip: bool = False, backbone: str = "spec"):
        super().__init__()
        choose("backbone", backbone, BACKBONES)
        self.head_skip, self.tokens, self.token_pool = head_skip, tokens, token_pool
        self.features = conv_stack(conv, widths) if backbone == "spec" else separable_stack()
        self.blocks = nn.ModuleList(UltimusBlock(widths[-1], d, scale, softmax) for _ in range(blocks))
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """X: (B, 48) pooled features, or (B, T, 48) spatial tokens."""
        f = self.features(x)
        if not self.tokens:
            return f.mean((2, 3))
        if self.token_pool > 1:
            f = nn.functional.avg_pool2d(f, self.token_pool)
        return f.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = self.embed(x)
        u = torch.zeros_like(X)  # blocks=0: the no-attention control (with head_skip the classifier reads X)
        for i, block in enumerate(self.blocks):  # u1 = U1(X), u2 = U2(X + u1), u3 = U3(X + u2), u4 = U4(X + u3)
            u = block(X if i == 0 else X + u)
        if self.head_skip:  # FC(X + u4): the 48 features reach the classifier, not only u4's rank-8 image
            u = X + u
        if self.tokens:
            u = u.mean(1)
        return self.fc(u)


VARIANTS = {
    "faithful": dict(),
    "bn_relu": dict(conv="bn_relu"),
    "tokens": dict(tokens=True),                      # 26×26 = 676 tokens, the original's softmax orientation
    "softmax_k": dict(softmax="k"),
    "sqrt8_after": dict(scale="after"),
    "fixed_spec": dict(conv="bn_relu", head_skip=True),
    "fixed_noattn": dict(conv="bn_relu", head_skip=True, blocks=0),
    "repaired": dict(backbone="separable", tokens=True, head_skip=True, softmax="k"),
    "repaired_noattn": dict(backbone="separable", tokens=True, head_skip=True, blocks=0),
}


def build(variant: str = "faithful", **overrides) -> Ultimus:
    """A named variant (see ``VARIANTS``) with optional keyword overrides."""
    choose("variant", variant, VARIANTS)
    return Ultimus(**{**VARIANTS[variant], **overrides})
