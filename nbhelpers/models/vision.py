"""Chapter 3 models: the PyTorch-MNIST-example CNN, ViT / DeepViT from vit-pytorch, and the CNN-stem hybrid.

``bug_compatible=True`` reproduces the original's mistake: it passed the *pixel count* (784 or 1024) as
``image_size`` with patch 14 (MNIST) or 16 (CIFAR), so each image became only 2×2 = 4 tokens while the position
table was sized for thousands. This reproduces the original parameter counts exactly. ``bug_compatible=False``
uses the true image size and a real patch grid (patch 4 by default: 7×7 or 8×8 tokens).
"""
from __future__ import annotations

import torch
from torch import nn
from vit_pytorch import ViT
from vit_pytorch.deepvit import DeepViT
from . import count_params  # noqa: F401  (re-exported: models.<family>.count_params)

MODELS = ("cnn", "vit", "deepvit", "hybrid")
VIT_DIMS = dict(dim=128, depth=6, heads=4, mlp_dim=256, dropout=0.1, emb_dropout=0.1)


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


def build(name: str, image_shape: tuple, num_classes: int, bug_compatible: bool = True,
          patch_size: int | None = None, **dims) -> nn.Module:
    """image_shape = (H, W, C) as in the array data."""
    H, W, C = image_shape
    if H != W:
        raise ValueError(f"square images expected, got {H}x{W}")
    if name == "cnn":
        return cnn(C, num_classes, H)
    if name in ("vit", "deepvit"):
        return transformer(name, H, C, num_classes, bug_compatible, patch_size, **dims)
    if name == "hybrid":
        return Hybrid(C, num_classes, H, bug_compatible, patch_size, **dims)
    raise ValueError(f"model={name!r} is not allowed; choose one of {', '.join(MODELS)}")


def _vit_of(model: nn.Module) -> nn.Module | None:
    if isinstance(model, (ViT, DeepViT)):
        return model
    return getattr(model, "vit", None)


def num_tokens(model: nn.Module, image_shape: tuple) -> int | None:
    """Patch tokens the transformer actually sees for one image (None for the CNN)."""
    vit = _vit_of(model)
    if vit is None:
        return None
    H, W, C = image_shape
    x = torch.zeros(1, C, H, W, device=next(model.parameters()).device)
    with torch.no_grad():
        if isinstance(model, Hybrid):
            x = model.stem(x)
        return vit.to_patch_embedding(x).shape[1]


def set_attention_scale(model: nn.Module, scaled: bool = True) -> int:
    """Switch the 1/sqrt(d_head) attention scale on or off in every vit-pytorch attention module; returns how
    many modules were changed."""
    n = 0
    for m in model.modules():
        if hasattr(m, "scale") and hasattr(m, "to_qkv"):
            d_head = m.to_qkv.out_features // 3 // m.heads
            m.scale = d_head ** -0.5 if scaled else 1.0
            n += 1
    return n
