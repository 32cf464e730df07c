"""Chapter 2 models: the original's attention model (ported from Keras, with a switch per ablation), a repaired
attention model, and the two losses.

Both models read a packed tensor ``inp`` (B, T, 3) = (x, flag, y) and return (B, T, 2) = (μ, log σ) where row t
is the prediction of y_t from x_t, flag_t and the points 0..t-1 only (causal: y_t and later never enter row t).
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

# the original's x discretisation: index = 200 + position of the first grid value >= x on np.arange(1, 15.1, 0.05)
# (282 values, 1 to 15.05; beyond the grid: its last index); 0 = padding; one embedding table of VOCAB rows
GRID_LO, GRID_STEP, GRID_N, INDEX_OFFSET, VOCAB = 1.0, 0.05, 282, 200, 2000
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 5.0
LEAK = 0.2  # tf.nn.leaky_relu's default slope (PyTorch's default is 0.01)


def x_index(x: torch.Tensor) -> torch.Tensor:
    """The original's embedding index of x (about 280-480 for x in [5, 15))."""
    return INDEX_OFFSET + torch.ceil((x - GRID_LO) / GRID_STEP - 1e-9).long().clamp(0, GRID_N - 1)


def causal_mask(T: int, device=None, strict: bool = True) -> torch.Tensor:
    """(T, T) boolean: True where row t may look at column j (j < t when strict, j <= t otherwise)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def _dense(n_in: int, n_out: int) -> nn.Linear:
    """A Keras Dense layer: Glorot-uniform weights, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def nearest_same_series(inp: torch.Tensor) -> torch.Tensor:
    """(B, T) y of the nearest (in x) earlier point j < t of the same series as point t; 0 where there is none."""
    x, s, y = inp[..., 0], inp[..., 1], inp[..., 2]
    ok = causal_mask(x.shape[1], x.device) & (s[:, :, None] == s[:, None, :])
    d = (x[:, :, None] - x[:, None, :]).abs().masked_fill(~ok, float("inf"))
    return torch.gather(y, 1, d.argmin(-1)) * ok.any(-1)


SMOOTH_BANDWIDTHS = (0.1, 0.2, 0.4)  # local-linear smoothers the repaired model may blend with the interpolation
# (``baselines`` computes the narrower weights as powers of the widest: keep (widest / h)² whole)


def _levels(inp: torch.Tensor, before: torch.Tensor, fits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``fits`` (B, T, K) of the other series at every x_t, plus their levels: the mean, over the earlier points of
    t's own series, of their difference from the same fit (each made from the points before them). 0 where not
    ``valid`` (nothing of the other series seen yet)."""
    s, y = inp[..., 1], inp[..., 2]
    diff = torch.where(valid[..., None], y[..., None] - fits, torch.zeros_like(fits))
    same = (before & (s[:, :, None] == s[:, None, :]) & valid[:, None, :]).to(fits.dtype)
    level = (same @ diff) / same.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(valid[..., None], fits + level, torch.zeros_like(fits))


def _interpolate(x, y, other, dx):
    """The other series' earlier points linearly interpolated at every x_t (held constant beyond its ends, as
    ``np.interp``), and where that exists."""
    left, right = other & (dx <= 0), other & (dx >= 0)
    lj = dx.masked_fill(~left, float("-inf")).argmax(-1)
    rj = dx.masked_fill(~right, float("inf")).argmin(-1)
    has_l, has_r = left.any(-1), right.any(-1)
    xl, yl, xr, yr = (torch.gather(v, 1, j) for v, j in ((x, lj), (y, lj), (x, rj), (y, rj)))
    w = ((x - xl) / (xr - xl).clamp_min(1e-9)).clamp(0, 1)
    return torch.where(has_l & has_r, yl + w * (yr - yl), torch.where(has_l, yl, yr)), has_l | has_r


def baselines(inp: torch.Tensor, bandwidths=SMOOTH_BANDWIDTHS) -> torch.Tensor:
    """(B, T, 1 + len(bandwidths)): parameter-free predictions of every point t from the points j < t (causal).

    First the interpolation (``twin_baseline``), then, per bandwidth h, a **smoother**: a local-linear fit, with
    Gaussian weights of width h (in units of x), to the other series' earlier points at x_t. Interpolating passes
    the neighbours' observation noise on; smoothing averages it away at the price of some bias where the curve
    bends. Each adds the level of t's own series (``_levels``). The weighted moments of the smoothers come from
    one matrix product per bandwidth; the weights of the narrower ones are powers of the widest one's, so each
    bandwidth must be the widest divided by the square root of a whole number (the defaults: by 2 and 4).
    """
    widest = max(bandwidths, default=1.0)
    powers = [round((widest / h) ** 2) for h in bandwidths]
    if any(abs((widest / h) ** 2 - p) > 1e-9 for h, p in zip(bandwidths, powers)):
        raise ValueError(f"bandwidths={bandwidths!r} are not allowed: each must be the widest divided by the square "
                         "root of a whole number")
    x, s, y = inp[..., 0], inp[..., 1], inp[..., 2]
    before = causal_mask(x.shape[1], x.device)
    other = before & (s[:, :, None] != s[:, None, :])
    dx = x[:, None, :] - x[:, :, None]  # (B, t, j): x_j - x_t
    interp, valid = _interpolate(x, y, other, dx)
    fits = [interp]
    if bandwidths:
        # the moments about x_t below subtract nearly equal sums: float64, and x centred (x in [5, 15))
        xc, yd = (x - 10.0).double(), y.double()
        vec = torch.stack([torch.ones_like(xc), xc, xc * xc, yd, xc * yd], -1)  # (B, T, 5)
        # one exp (of arguments clamped above the denormals: a weight below e^-80 is 0 here anyway), masked once;
        # the narrower widths are its powers: exp(-d²/2h²) = exp(-d²/2H²) ** (H/h)²
        base = torch.exp((dx * dx * (-0.5 / widest ** 2)).clamp_min(-80.0)) * other.to(x.dtype)
        for h, power in zip(bandwidths, powers):
            w = base ** power
            m0, m1, m2, t0, t1 = (w.double() @ vec).unbind(-1)
            s1, s2, u1 = m1 - xc * m0, m2 - 2 * xc * m1 + xc * xc * m0, t1 - xc * t0  # moments about x_t
            det = m0 * s2 - s1 * s1
            slope_ok = det > 1e-4 * (m0 * h) ** 2  # enough spread among the weighted points to fit a slope
            fit = torch.where(slope_ok, (s2 * t0 - s1 * u1) / det.clamp_min(1e-300), t0 / m0.clamp_min(1e-300))
            fits.append(torch.where(m0 > 1e-12, fit.to(y.dtype), interp))  # too far from every point: interpolate
    return _levels(inp, before, torch.stack(fits, -1), valid)


def twin_baseline(inp: torch.Tensor) -> torch.Tensor:
    """(B, T) the parameter-free prediction of every point t from the points j < t only (causal).

    The other series' earlier points are linearly interpolated at x_t (held constant beyond its ends, as
    ``np.interp``), and the level is the mean, over the earlier points of t's own series, of their difference from
    the same interpolation (each made from the points before them). In the inference layout this is exactly the
    chapter's baseline: series 1 interpolated at x_t plus the context's (and the rollout's) mean offset. 0 where
    nothing of the other series has been seen yet.
    """
    return baselines(inp, ())[..., 0]


class Faithful(nn.Module):
    """The original model (``experimental2d_model.Decoder`` with ``MultiHeadAttention2D``), in float32.

    x is embedded by its grid index, the 0/1 flag by the *same* table (rows 0 and 1). q = Wq(emb x_t),
    k = Wk(emb x_j), v = Wv(y_j), each split into ``heads`` heads of depth e / heads; scores q·k / √depth, **ReLU**,
    causal mask (row t sees j < t), softmax; heads concatenated and passed through ``Dense(e)``. Then
    out1 = leaky(LayerNorm(attn + Wv(y_{t-1}))), L = leaky(A1 out1 + A2 emb(x_t) + A3 emb(flag_t)), then A4 (64),
    A5 (32) with leaky ReLUs and A6 -> (μ, log σ). ``heads`` is an attribute: the original trained with 1 head and
    rebuilt the model with 32 heads from the same weights for inference (only the reshape changes).

    Switches (all False = the original), one per cause of the drop:
    series_qk: add the flag's embedding to the x embedding that q and k are computed from;
    no_relu: no ReLU on the scaled scores;
    residual: μ is predicted as a residual on the y of the nearest earlier point of the same series (as the
    authors' later Taylorformer does with its nearest neighbour).
    """

    def __init__(self, embed: int = 512, heads: int = 1, l1: int = 256, l2: int = 64, l3: int = 32,
                 series_qk: bool = False, no_relu: bool = False, residual: bool = False):
        super().__init__()
        if embed % heads:
            raise ValueError(f"embed={embed} must be divisible by heads={heads}")
        self.embed, self.heads = embed, heads
        self.series_qk, self.no_relu, self.residual = series_qk, no_relu, residual
        self.emb = nn.Embedding(VOCAB, embed)  # shared by the x index and the 0/1 flag (rows 0 and 1)
        nn.init.uniform_(self.emb.weight, -0.05, 0.05)  # Keras' Embedding initialiser
        self.q, self.k, self.v = _dense(embed, embed), _dense(embed, embed), _dense(1, embed)
        self.dense = _dense(embed, embed)
        self.norm = nn.LayerNorm(embed, eps=1e-6)
        self.a1, self.a2, self.a3 = _dense(embed, l1), _dense(embed, l1), _dense(embed, l1)
        self.a4, self.a5, self.a6 = _dense(l1, l2), _dense(l2, l3), _dense(l3, 2)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b t (h d) -> b h t d", h=self.heads)

    def scores(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, H, T, T) scaled scores q·k / √depth per head, before the ReLU and the mask."""
        if self.embed % self.heads:
            raise ValueError(f"embed={self.embed} must be divisible by heads={self.heads}")
        e = self.emb(x_index(inp[..., 0]))
        if self.series_qk:
            e = e + self.emb(inp[..., 1].long())
        q, k = self._split(self.q(e)), self._split(self.k(e))
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    def head_weights(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, H, T, T) attention weights per head: row t over the points j < t; row 0 is all zero."""
        scores = self.scores(inp)
        if not self.no_relu:
            scores = F.relu(scores)
        mask = causal_mask(inp.shape[1], inp.device)
        return torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1) * mask

    def attention(self, inp: torch.Tensor) -> torch.Tensor:
        """(B, T, T) attention weights averaged over the heads."""
        return self.head_weights(inp).mean(1)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x, s, y = inp[..., 0], inp[..., 1].long(), inp[..., 2:3]
        att = rearrange(self.head_weights(inp) @ self._split(self.v(y)), "b h t d -> b t (h d)")
        y_prev = F.pad(y, (0, 0, 1, 0))[:, :-1]  # y_{t-1} (0 for the first row)
        out1 = F.leaky_relu(self.norm(self.dense(att) + self.v(y_prev)), LEAK)
        h = F.leaky_relu(self.a1(out1) + self.a2(self.emb(x_index(x))) + self.a3(self.emb(s)), LEAK)
        out = self.a6(F.leaky_relu(self.a5(F.leaky_relu(self.a4(h), LEAK)), LEAK))
        mu = out[..., 0] + (nearest_same_series(inp) if self.residual else 0.0)
        return torch.stack([mu, out[..., 1].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)], -1)


class Block(nn.Module):
    """Pre-LayerNorm attention + MLP block with plain scaled dot-product attention (several heads)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.nq, self.nkv = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.o = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.n2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def _qkv(self, q_in, kv_in):
        """q (B, H, T, depth) from the queries, k and v (B, H, S, depth) from the keys/values."""
        kv = self.kv(self.nkv(kv_in)).split(q_in.shape[-1], -1)
        return (rearrange(t, "b t (h d) -> b h t d", h=self.heads) for t in (self.q(self.nq(q_in)), *kv))

    def weights(self, q_in, kv_in, mask):
        q, k, _ = self._qkv(q_in, kv_in)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T, S)

    def forward(self, q_in, kv_in, mask):
        a = F.scaled_dot_product_attention(*self._qkv(q_in, kv_in), attn_mask=mask)
        h = q_in + self.o(rearrange(a, "b h t d -> b t (h d)"))
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

    ``on_baseline``: μ is a correction added to ``twin_baseline`` (the parameter-free prediction from the earlier
    points: the other series interpolated at x_t plus the mean offset seen so far), as the authors' later
    Taylorformer predicts a residual on its nearest neighbour; the correction starts at zero.

    ``smooth`` (with ``on_baseline``): the base is instead a per-point blend of the interpolation and the
    local-linear smoothers of ``SMOOTH_BANDWIDTHS`` (``baselines``), with blend weights (a softmax) predicted from
    the query stream. Interpolating noisy neighbours passes their noise on; smoothing averages it away, and
    blurs a noise-free curve: the model learns from the data which to use. It starts mostly on the
    interpolation (weight ``e²/(e² + 3)`` ≈ 0.71).
    """

    def __init__(self, width: int = 128, heads: int = 4, layers: int = 3, n_freq: int = 24, self_feed: bool = False,
                 on_baseline: bool = False, smooth: bool = True):
        super().__init__()
        self.self_feed, self.on_baseline = self_feed, on_baseline
        self.blend = on_baseline and smooth
        # angular frequencies 0.3 ... 40 per unit of x: fine enough to single out the nearest neighbours of the
        # other series (0.05 apart at 400 points), coarse enough to find smooth ones
        self.register_buffer("freqs", torch.logspace(math.log10(0.3), math.log10(40.0), n_freq))
        n_feat = 1 + 2 * n_freq + 2
        self.ctx_in = nn.Sequential(nn.Linear(n_feat + 1, width), nn.GELU(), nn.Linear(width, width))
        self.qry_in = nn.Sequential(nn.Linear(n_feat, width), nn.GELU(), nn.Linear(width, width))
        self.null = nn.Parameter(torch.zeros(1, 1, width))
        self.ctx_blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.qry_blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        n_out = 2 + (1 + len(SMOOTH_BANDWIDTHS)) * self.blend  # (μ, log σ[, blend logits])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, n_out))
        if on_baseline:  # start at the baseline: the attention learns a correction (and the blend)
            with torch.no_grad():
                self.out[-1].weight[0].zero_()
                self.out[-1].bias[0].zero_()
                self.out[-1].weight[2:].zero_()
                self.out[-1].bias[2:] = torch.tensor([2.0] + [0.0] * len(SMOOTH_BANDWIDTHS))[:n_out - 2]

    def features(self, x, s):
        ang = x[..., None] * self.freqs
        return torch.cat([((x - 10.0) / 5.0)[..., None], ang.sin(), ang.cos(), F.one_hot(s, 2).to(x.dtype)], -1)

    def _streams(self, inp):
        x, s, y = inp[..., 0], inp[..., 1].long(), inp[..., 2:3]
        f = self.features(x, s)
        ctx = torch.cat([self.null.expand(len(x), 1, -1), self.ctx_in(torch.cat([f, y], -1))], 1)  # T + 1
        mask = causal_mask(x.shape[1] + 1, x.device, strict=False)  # context position p sees positions <= p
        return ctx, self.qry_in(f), mask, mask[:-1]  # query t sees null + points < t

    def forward(self, inp):
        if self.training and self.self_feed:
            with torch.no_grad():
                y = self._predict(inp)[..., 0]
            cut = torch.randint(0, inp.shape[1], (len(inp), 1), device=inp.device)
            pick = (inp[..., 1] == 0) & (torch.arange(inp.shape[1], device=inp.device) >= cut)
            inp = torch.cat([inp[..., :2], torch.where(pick, y, inp[..., 2])[..., None]], -1)
        return self._predict(inp)

    def _queries(self, inp, last_weights: bool = False):
        """The query stream after every block, or (``last_weights``) the last block's attention weights."""
        ctx, qry, ctx_mask, qry_mask = self._streams(inp)
        for i, (cb, qb) in enumerate(zip(self.ctx_blocks, self.qry_blocks)):
            if last_weights and i == len(self.qry_blocks) - 1:
                return qb.weights(qry, ctx, qry_mask)
            qry = qb(qry, ctx, qry_mask)
            ctx = cb(ctx, ctx, ctx_mask)
        return qry

    def _predict(self, inp):
        out = self.out(self._queries(inp))
        mu = out[..., 0] + self._base(inp, out)
        return torch.stack([mu, out[..., 1].clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)], -1)

    def _base(self, inp, out) -> torch.Tensor | float:
        """What the correction is added to: 0, the interpolation, or (``smooth``) the blend weighed by the output
        head's logits ``out[..., 2:]``."""
        if not self.on_baseline:
            return 0.0
        if not self.blend:
            return twin_baseline(inp)
        return (torch.softmax(out[..., 2:], -1) * baselines(inp)).sum(-1)

    def blend_weights(self, inp) -> torch.Tensor:
        """(B, T, 1 + len(SMOOTH_BANDWIDTHS)) the weights of the interpolation and of each smoother."""
        if not self.blend:
            raise ValueError("this model has no blend (on_baseline and smooth are not both set)")
        return torch.softmax(self.out(self._queries(inp))[..., 2:], -1)

    def attention(self, inp) -> torch.Tensor:
        """(B, T, T) last-layer query attention over the points j < t, averaged over heads (null token dropped)."""
        return self._queries(inp, last_weights=True).mean(1)[..., 1:]


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
        m = tgt[..., 1]
        return (fn(out[..., 0], out[..., 1], tgt[..., 0]) * m).sum() / m.sum().clamp_min(1)

    return loss
