"""Chapter 2 models: the original's attention model (ported from Keras, with a switch per ablation), a repaired
attention model, and the two losses.

Both models read a packed tensor ``inp`` (B, T, 3) = (x, flag, y) and return (B, T, 2) = (μ, log σ) where row t
is the prediction of y_t from x_t, flag_t and the points 0..t-1 only (causal: y_t and later never enter row t).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from . import count_params  # noqa: F401  (re-exported: models.<family>.count_params)

# the original's x discretisation: index = 200 + position of x on the grid [1, 15.1) with step 0.05; 0 = padding
GRID_LO, GRID_STEP, INDEX_OFFSET, VOCAB = 1.0, 0.05, 200, 2000
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 5.0


def x_index(x: torch.Tensor) -> torch.Tensor:
    """The original's embedding index of x (about 280-480 for x in [5, 15))."""
    idx = INDEX_OFFSET + torch.floor((x - GRID_LO) / GRID_STEP).long()
    return idx.clamp(1, VOCAB - 1)


def causal_mask(T: int, device=None, strict: bool = True) -> torch.Tensor:
    """(T, T) boolean: True where row t may look at column j (j < t when strict, j <= t otherwise)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(-1 if strict else 0)


class Faithful(nn.Module):
    """The original model. Switches (all False = the original) turn one quirk off each:

    series_qk: add the flag's embedding to the x embedding that q and k are computed from;
    no_relu: no ReLU on the attention scores (plain dot-product scores into the masked softmax).
    """

    def __init__(self, embed: int = 512, series_qk: bool = False, no_relu: bool = False):
        super().__init__()
        self.series_qk, self.no_relu = series_qk, no_relu
        self.emb = nn.Embedding(VOCAB, embed)  # shared by the x index and the 0/1 flag (rows 0 and 1)
        nn.init.uniform_(self.emb.weight, -0.05, 0.05)  # Keras' Embedding initialiser
        self.q, self.k = nn.Linear(embed, embed), nn.Linear(embed, embed)
        self.v = nn.Linear(1, embed)
        self.norm = nn.LayerNorm(embed)
        self.next_x, self.next_flag = nn.Linear(embed, embed), nn.Linear(embed, embed)
        self.head = nn.Sequential(nn.Linear(embed, 64), nn.Linear(64, 32), nn.Linear(32, 2))

    def attention(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, T, T) attention weights: row t (predicting point t) over the points j < t; row 0 is all zero."""
        x, s = inp[..., 0], inp[..., 1].long()
        e = self.emb(x_index(x))
        if self.series_qk:
            e = e + self.emb(s)
        scores = self.q(e) @ self.k(e).transpose(1, 2)  # Keras Attention: unscaled dot product
        if not self.no_relu:
            scores = F.relu(scores)
        mask = causal_mask(x.shape[1], x.device)
        return torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x, s, y = inp[..., 0], inp[..., 1].long(), inp[..., 2:3]
        v = self.v(y)
        attn = self.attention(inp) @ v
        y_prev = F.pad(y, (0, 0, 1, 0))[:, :-1]  # y_{t-1} (0 for the first row)
        h = F.leaky_relu(self.norm(attn + self.v(y_prev)))
        z = F.leaky_relu(h + self.next_x(self.emb(x_index(x))) + self.next_flag(self.emb(s)))
        out = self.head(z)
        return torch.stack([out[..., 0], out[..., 1].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)], -1)


class Block(nn.Module):
    """Pre-LayerNorm attention + MLP block with plain scaled dot-product attention (several heads)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.nq, self.nkv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.o = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.n2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def weights(self, q_in, kv_in, mask):
        B, T, W = q_in.shape
        q = self.q(self.nq(q_in)).view(B, T, self.heads, -1).transpose(1, 2)
        k = self.kv(self.nkv(kv_in))[..., :W].reshape(B, kv_in.shape[1], self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T, S)

    def forward(self, q_in, kv_in, mask):
        B, T, W = q_in.shape
        kv = self.kv(self.nkv(kv_in))
        q = self.q(self.nq(q_in)).view(B, T, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(B, kv_in.shape[1], self.heads, -1).transpose(1, 2) for t in kv.split(W, -1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = q_in + self.o(a.transpose(1, 2).reshape(B, T, W))
        return h + self.mlp(self.n2(h))


class Repaired(nn.Module):
    """A causal attention model for the task: continuous x features (x and sin/cos at fixed frequencies),
    the series flag in every token (so in q and k), plain multi-head scaled dot-product attention, exact NLL.

    Two streams: *context* tokens (x_j, flag_j, y_j) attend causally to earlier context tokens; *query* tokens
    (x_t, flag_t) attend to the context tokens of the points j < t (plus a learned "nothing seen yet" token).

    ``self_feed`` (against exposure bias over long rollouts; off by default): in training mode, each example's
    series-0 values from a random position onwards are replaced by the model's own one-step means (computed
    without gradient, so still causal) before the forward pass, as a rollout will feed them at inference. The
    loss still compares with the true values.
    """

    def __init__(self, width: int = 128, heads: int = 4, layers: int = 3, n_freq: int = 24, self_feed: bool = False):
        super().__init__()
        self.self_feed = self_feed
        # angular frequencies 0.3 ... 40 per unit of x: fine enough to single out the other series' point at the
        # same x (both series share their x values), coarse enough to find smooth neighbours
        self.register_buffer("freqs", torch.logspace(math.log10(0.3), math.log10(40.0), n_freq))
        n_feat = 1 + 2 * n_freq + 2
        self.ctx_in = nn.Sequential(nn.Linear(n_feat + 1, width), nn.GELU(), nn.Linear(width, width))
        self.qry_in = nn.Sequential(nn.Linear(n_feat, width), nn.GELU(), nn.Linear(width, width))
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        self.ctx_blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.qry_blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 2))

    def features(self, x, s):
        xc = (x - 10.0) / 5.0
        ang = x[..., None] * self.freqs
        return torch.cat([xc[..., None], ang.sin(), ang.cos(), F.one_hot(s, 2).to(x.dtype)], -1)

    def _streams(self, inp):
        x, s, y = inp[..., 0], inp[..., 1].long(), inp[..., 2:3]
        f = self.features(x, s)
        ctx = torch.cat([self.null.expand(len(x), 1, -1), self.ctx_in(torch.cat([f, y], -1))], 1)  # T + 1
        T = x.shape[1]
        ctx_mask = causal_mask(T + 1, x.device, strict=False)   # context position p sees positions <= p
        qry_mask = causal_mask(T + 1, x.device, strict=False)[:-1]  # query t sees null + points < t
        return ctx, self.qry_in(f), ctx_mask, qry_mask

    def forward(self, inp):
        if self.training and self.self_feed:
            with torch.no_grad():
                y = self._predict(inp)[..., 0]
            cut = torch.randint(0, inp.shape[1], (len(inp), 1), device=inp.device)
            pick = (inp[..., 1] == 0) & (torch.arange(inp.shape[1], device=inp.device) >= cut)
            inp = inp.clone()
            inp[..., 2] = torch.where(pick, y, inp[..., 2])
        return self._predict(inp)

    def _predict(self, inp):
        ctx, qry, ctx_mask, qry_mask = self._streams(inp)
        for cb, qb in zip(self.ctx_blocks, self.qry_blocks):
            qry = qb(qry, ctx, qry_mask)
            ctx = cb(ctx, ctx, ctx_mask)
        out = self.out(qry)
        return torch.stack([out[..., 0], out[..., 1].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)], -1)

    def attention(self, inp) -> torch.Tensor:
        """(B, T, T) last-layer query attention over the points j < t, averaged over heads (null token dropped)."""
        ctx, qry, ctx_mask, qry_mask = self._streams(inp)
        for i, (cb, qb) in enumerate(zip(self.ctx_blocks, self.qry_blocks)):
            if i == len(self.qry_blocks) - 1:
                return qb.weights(qry, ctx, qry_mask).mean(1)[..., 1:]
            qry = qb(qry, ctx, qry_mask)
            ctx = cb(ctx, ctx, ctx_mask)


# ---------------------------------------------------------------- losses (per point; the caller masks/averages)

def original_loss(mu, log_sigma, y):
    """The original's loss: ½((y−μ)²/(σ²+1e-3) + log σ). Its optimum is σ² ≈ 2(y−μ)², not (y−μ)²."""
    return 0.5 * ((y - mu) ** 2 / (torch.exp(2 * log_sigma) + 1e-3) + log_sigma)


def gaussian_nll(mu, log_sigma, y):
    """Exact Gaussian negative log-likelihood: ½ log 2π + log σ + ½((y−μ)/σ)²."""
    return 0.5 * math.log(2 * math.pi) + log_sigma + 0.5 * ((y - mu) * torch.exp(-log_sigma)) ** 2


LOSSES = {"original": original_loss, "exact": gaussian_nll}


def masked_loss(kind: str):
    """loss_fn(out, tgt) for train.fit: tgt (B, T, 2) = (y, 1 where the point is a target)."""
    fn = LOSSES[kind]

    def loss(out, tgt):
        per = fn(out[..., 0], out[..., 1], tgt[..., 0])
        m = tgt[..., 1]
        return (per * m).sum() / m.sum().clamp_min(1)

    return loss
