"""Chapter 3 models: the PyTorch-MNIST-example CNN, ViT / DeepViT from vit-pytorch, and the CNN-stem hybrid.

``bug_compatible=True`` reproduces the original's mistake: it passed the *pixel count* (784 or 1024) as ``image_size``
with patch 14 (MNIST) or 16 (CIFAR), so each image became only 2×2 = 4 tokens while the position table was sized for
thousands. This reproduces the original parameter counts exactly. ``bug_compatible=False`` uses the true image size
and a real patch grid (patch 4 by default: 7×7 or 8×8 tokens)."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F
from vit_pytorch import ViT
from vit_pytorch.deepvit import DeepViT
from vit_pytorch.vit import Transformer

MODELS = ("cnn", "vit", "deepvit", "hybrid")
VIT_DIMS = dict(dim=128, depth=6, heads=4, mlp_dim=256, dropout=0.1, emb_dropout=0.1)
# the transformer sizes of the original's tables: table 1 "small" (1 epoch); tables 2-3 at ViT-Base width (15 epochs)
SIZES = {"small": VIT_DIMS,
         "base6": dict(dim=768, depth=6, heads=12, mlp_dim=3072, dropout=0.1, emb_dropout=0.1),
         "base12": dict(dim=768, depth=12, heads=12, mlp_dim=3072, dropout=0.1, emb_dropout=0.1)}


def cnn_stem(in_ch: int) -> nn.Sequential:
    """conv(C→32, 3) → ReLU → conv(32→64, 3) → ReLU → maxpool 2 (28 → 12, 32 → 14)."""
    return nn.Sequential(nn.Conv2d(in_ch, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2))


def cnn(in_ch: int, num_classes: int, image_size: int) -> nn.Sequential:
    """The PyTorch MNIST example: stem → dropout .25 → fc(→128) → ReLU → dropout .5 → fc(→classes)."""
    side = (image_size - 4) // 2
    return nn.Sequential(cnn_stem(in_ch), nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * side * side, 128),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes))


def transformer(kind: str, image_size: int, channels: int, num_classes: int, bug_compatible: bool,
                patch_size: int | None = None, **dims) -> nn.Module:
    """A vit-pytorch ViT or DeepViT on (channels, image_size, image_size) inputs."""
    cls = {"vit": ViT, "deepvit": DeepViT}[kind]
    if bug_compatible:  # the original: pixel count as image_size, half the side as patch -> 4 tokens
        size_arg, patch = image_size * image_size, image_size // 2
    else:
        size_arg, patch = image_size, patch_size or 4
        if image_size % patch:
            raise ValueError(f"patch_size {patch} does not divide the image size {image_size}")
    return cls(image_size=size_arg, patch_size=patch, num_classes=num_classes, channels=channels,
               **{**VIT_DIMS, **dims})


class Hybrid(nn.Module):
    """The CNN's two convs + maxpool (12×12×64 on MNIST, 14×14×64 on CIFAR) feeding a ViT with 64 channels."""

    def __init__(self, in_ch: int, num_classes: int, image_size: int, bug_compatible: bool,
                 patch_size: int | None = None, **dims):
        super().__init__()
        side = (image_size - 4) // 2
        self.stem = cnn_stem(in_ch)
        patch = patch_size or (2 if side % 2 == 0 else 1)
        self.vit = transformer("vit", side, 64, num_classes, bug_compatible, patch_size=patch, **dims)

    def forward(self, x):
        return self.vit(self.stem(x))


REPAIRED_MODELS = ("convformer", "convnet")  # the repaired hybrid, and the same network without its transformer
ALL_MODELS = MODELS + REPAIRED_MODELS + ("stripvit",)


def build(name: str, image_shape: tuple, num_classes: int, bug_compatible: bool = True,
          patch_size: int | None = None, **dims) -> nn.Module:
    """image_shape = (H, W, C) as in the array data. ``dims`` override the transformer sizes (VIT_DIMS, or
    ConvTransformer's keywords for the repaired family)."""
    H, W, C = image_shape
    if H != W:
        raise ValueError(f"square images expected, got {H}x{W}")
    if name == "stripvit":
        return StripViT(H, num_classes=num_classes, **dims)
    if name in REPAIRED_MODELS:   # convnet: the convformer without its attention
        return ConvTransformer(C, num_classes, H, **({**dims, "depth": 0} if name == "convnet" else dims))
    if name == "cnn":
        return cnn(C, num_classes, H)
    if name in ("vit", "deepvit"):
        return transformer(name, H, C, num_classes, bug_compatible, patch_size, **dims)
    if name == "hybrid":
        return Hybrid(C, num_classes, H, bug_compatible, patch_size, **dims)
    raise ValueError(f"model={name!r} is not allowed; choose one of {', '.join(ALL_MODELS)}")


def num_tokens(model: nn.Module, image_shape: tuple) -> int | None:
    """Patch tokens the transformer actually sees for one image (None for a network without attention)."""
    if isinstance(model, ConvTransformer):      # no forward pass: it would move the BatchNorm statistics
        return model.side ** 2 if model.depth else None
    vit = model if isinstance(model, (ViT, DeepViT)) else getattr(model, "vit", None)
    if vit is None:
        return None
    H, W, C = image_shape
    x = torch.zeros(1, C, H, W, device=next(model.parameters()).device)
    with torch.no_grad():
        return vit.to_patch_embedding(model.stem(x) if isinstance(model, Hybrid) else x).shape[1]


def set_attention_scale(model: nn.Module, scaled: bool = True) -> int:
    """Switch the 1/sqrt(d_head) attention scale on or off in every vit-pytorch attention module; returns how
    many modules were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, StripAttention):
            m.scaled = scaled
            n += 1
        elif hasattr(m, "scale") and hasattr(m, "to_qkv"):
            d_head = m.to_qkv.out_features // 3 // m.heads
            m.scale = d_head ** -0.5 if scaled else 1.0
            n += 1
    return n


# ---------------------------------------------------------------- the repaired family

class FrozenScaleBN(nn.BatchNorm2d):
    """airbench's BatchNorm: no learned scale (weight frozen at 1), eps 1e-12, running-stat momentum 0.4."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3×3 conv (no bias) whose first min(c_in, c_out) filters start as the identity: airbench's implicit residual."""
    conv = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(c_in, c_out)])
    return conv


class ConvGroup(nn.Module):
    """conv → 2×2 max-pool → BN → GELU → conv → BN → GELU (airbench's block)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = dirac_conv(c_in, c_out), nn.MaxPool2d(2), FrozenScaleBN(c_out)
        self.conv2, self.norm2, self.act = dirac_conv(c_out, c_out), FrozenScaleBN(c_out), nn.GELU()

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class GridAttention(nn.Module):
    """Self-attention over a feature map's grid: each position is a token (+ a learned position table) through
    ``depth`` pre-norm layers of vit-pytorch's ``Transformer``; the map keeps its shape. The last linear map of
    every attention and MLP sub-layer starts at zero, so at initialisation the block is the identity and the
    network starts exactly as its control without attention (vit-pytorch's closing LayerNorm is dropped)."""

    def __init__(self, width: int, side: int, depth: int, heads: int, mlp_ratio: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads={heads}")
        self.pos = nn.Parameter(torch.zeros(1, side * side, width))
        self.transformer = Transformer(width, depth, heads, width // heads, mlp_ratio * width)
        self.transformer.norm = nn.Identity()      # the map goes back to the convs in its own scale
        for attn, ff in self.transformer.layers:
            for last in (attn.to_out[0], ff.net[-2]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        t = rearrange(x, "b c h w -> b (h w) c") + self.pos
        return rearrange(self.transformer(t), "b (h w) c -> b c h w", h=H, w=W)


class ConvTransformer(nn.Module):
    """The repaired hybrid, built on what is known to work at this size: airbench94's network (Keller Jordan,
    ``cifar10-airbench``) — a fixed 2×2 patch-whitening conv, three conv groups (32 → 31 → 15 → 7 → 3 px), a 3×3
    max-pool, a linear head without bias scaled by 1/9 — with block 2 narrowed to 192 channels, and between blocks
    2 and 3 ``depth`` layers of self-attention over the 7×7 grid of 192-wide tokens (``GridAttention``).
    ``depth=0`` is the control: the same network and recipe without the attention."""

    def __init__(self, in_ch: int, num_classes: int, image_size: int, widths=(64, 192, 256), depth: int = 1,
                 heads: int = 4, mlp_ratio: int = 1, whiten_kernel: int = 2, scale: float = 1 / 9):
        super().__init__()
        w0, w1, w2 = widths
        self.whiten = nn.Conv2d(in_ch, 2 * in_ch * whiten_kernel ** 2, whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(False)          # set from the data (init_whitening), never trained
        nn.init.zeros_(self.whiten.bias)
        side = ((image_size - whiten_kernel + 1) // 2) // 2
        self.depth, self.scale, self.side = depth, scale, side
        self.block1 = ConvGroup(self.whiten.out_channels, w0)
        self.block2 = ConvGroup(w0, w1)
        self.attention = GridAttention(w1, side, depth, heads, mlp_ratio) if depth else nn.Identity()
        self.block3 = ConvGroup(w1, w2)
        self.head = nn.Linear(w2, num_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the covariance of every k×k patch of ``x`` (normalised training images,
        N×C×H×W): its eigenvectors scaled by 1/sqrt(eigenvalue + eps), each with its negation (airbench)."""
        k, c = self.whiten.kernel_size[0], x.shape[1]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T.reshape(-1, c, k, k) / torch.sqrt(values + eps).view(-1, 1, 1, 1)).flip(0)
        w = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(w.contiguous(memory_format=torch.channels_last)
                                 if self.whiten.weight.is_contiguous(memory_format=torch.channels_last) else w)

    def grid(self, x):
        """The 7×7 feature map the attention sees (B, 192, 7, 7)."""
        return self.block2(self.block1(F.gelu(self.whiten(x))))

    def tokens(self, x):
        """That map as tokens (B, 49, 192)."""
        return rearrange(self.grid(x), "b c h w -> b (h w) c")

    def forward(self, x):
        x = F.adaptive_max_pool2d(self.block3(self.attention(self.grid(x))), 1).flatten(1)
        return self.head(x) * self.scale


# ---------------------------------------------------------------- the second original (scale ablation)

class StripAttention(nn.Module):
    """Multi-head self-attention as the second original wrote it: Q, K, V and output maps with biases, dropout on
    the attention weights, and the 1/sqrt(head size) scale switchable (``scaled``)."""

    def __init__(self, dim: int, heads: int, dropout: float, scaled: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed size {dim} is not divisible by heads={heads}")
        self.heads, self.head_size, self.scaled = heads, dim // heads, scaled
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        q, k, v = (rearrange(f(x), "b n (h e) -> b h n e", h=self.heads) for f in (self.q, self.k, self.v))
        scores = torch.einsum("bhqe,bhke->bhqk", q, k)
        if self.scaled:
            scores = scores / self.head_size ** 0.5
        weights = self.drop(scores.softmax(-1))
        return self.out(rearrange(weights @ v, "b h n e -> b n (h e)"))


class StripBlock(nn.Module):
    """The second original's block: ``x = LN(x)`` *replaces* the residual stream before attention (its quirk),
    then x + attention(x), then x + MLP(LN(x)) with GELU and dropout."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, scaled: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = StripAttention(dim, heads, dropout, scaled)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = self.norm1(x)
        x = x + self.attention(x)
        return x + self.mlp(self.norm2(x))


class StripViT(nn.Module):
    """The 1-layer ViT of ``Yuanforz/LearnCV`` (pytorch_MNIST/ViT.py), ported with its quirks:

    - "patches" are strips: the 28×28 image is reshaped to 16 rows of 49 *consecutive* pixels (1¾ image rows),
      not 7×7 squares;
    - a CLS token is prepended but the classifier reads the **last** token (the last strip);
    - each block overwrites the residual stream with its LayerNorm (``StripBlock``);
    - CLS token and position table drawn from N(0, 1); dropout 0.2 everywhere; log-softmax output.
    """

    def __init__(self, image_size: int = 28, patch_size: int = 7, num_classes: int = 10, dim: int = 128,
                 heads: int = 8, depth: int = 1, dropout: float = 0.2, scaled: bool = True):
        super().__init__()
        self.n, self.strip = (image_size // patch_size) ** 2, patch_size ** 2
        self.patch_embedding = nn.Linear(self.strip, dim)
        self.position_embedding = nn.Parameter(torch.randn(1, self.n + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(StripBlock(dim, heads, 4 * dim, dropout, scaled) for _ in range(depth))
        self.norm, self.fc, self.dropout = nn.LayerNorm(dim), nn.Linear(dim, num_classes), nn.Dropout(dropout)

    def forward(self, x):
        if x.shape[1] != 1:
            raise ValueError(f"the second original is single-channel (MNIST); got {x.shape[1]} channels")
        x = self.patch_embedding(x.reshape(len(x), self.n, self.strip))
        x = self.dropout(torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.position_embedding)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.norm(x[:, -1])).log_softmax(-1)
