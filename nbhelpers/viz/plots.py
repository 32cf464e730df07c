"""Reusable plots: learning curves, 2-D surfaces with points, per-unit map grids, attention heatmaps."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import DIVERGING, SEQUENTIAL

CLASS_COLORS = ("#2166ac", "#b2182b")  # class 0 blue, class 1 red (matches DIVERGING's ends)


def points(ax, X, y, classification: bool = True, size: float = 12, **kw):
    """Scatter 2-D points: coloured by class (classification) or by value (regression)."""
    X, y = np.asarray(X), np.asarray(y)
    if classification:
        for c in (0, 1):
            m = y == c
            ax.scatter(X[m, 0], X[m, 1], s=size, c=CLASS_COLORS[c], edgecolors="white", linewidths=0.4,
                       label=f"class {c}", **kw)
        return None
    lim = float(np.abs(y).max()) or 1.0
    return ax.scatter(X[:, 0], X[:, 1], c=y, cmap=DIVERGING, vmin=-lim, vmax=lim, s=size,
                      edgecolors="white", linewidths=0.4, **kw)


def surface(ax, xx, yy, z, classification: bool = True, levels: int = 21, vlim: float | None = None):
    """Filled contours of a model output on a grid: P(class 1) in [0, 1] or a symmetric regression range."""
    z = np.asarray(z).reshape(xx.shape)
    if classification:
        vmin, vmax = 0.0, 1.0
    else:
        lim = vlim or float(np.abs(z).max()) or 1.0
        vmin, vmax = -lim, lim
    cs = ax.contourf(xx, yy, z, levels=np.linspace(vmin, vmax, levels), cmap=DIVERGING, extend="both")
    ax.set(xticks=[], yticks=[], aspect="equal")
    return cs


def bands(z, levels: int = 21, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Quantise values to the mid-points of ``surface``'s filled-contour bands (``levels`` edges from vmin to vmax),
    so an ``image`` (e.g. a GIF frame) looks like filled contours; it also makes GIFs compress far better. NaN stays
    NaN; values outside the range take the end bands."""
    z = np.asarray(z, dtype=np.float32)
    width = (vmax - vmin) / (levels - 1)
    k = np.clip(np.floor((z - vmin) / width), 0, levels - 2)
    return (vmin + (k + 0.5) * width).astype(np.float32)


def image(ax, z, extent, classification: bool = True, vlim: float | None = None):
    """Fast imshow version of ``surface`` (for animation frames): returns the AxesImage to update. Cells are drawn
    as they are (no interpolation): with ``bands`` applied to the frames they look like filled contours, and a GIF
    of them stays small (flat areas, and pixels that change only where a band edge moves)."""
    vmin, vmax = (0.0, 1.0) if classification else (-(vlim or 1.0), vlim or 1.0)
    im = ax.imshow(np.asarray(z), origin="lower", extent=extent, cmap=DIVERGING, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    return im


def panels(n: int, cols: int, size=(3.0, 2.5), **kw):
    """A figure with ``n`` panels of ``size`` inches in rows of ``cols`` (spare axes switched off); ``kw`` go to
    ``plt.subplots`` (e.g. sharey=True). Returns (fig, list of the n axes)."""
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, **kw)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def unit_grid(layers: dict, extent, panel: float = 1.05, title: str = ""):
    """One row per layer, one panel per unit, each showing that unit's activation over the plane.

    layers: {layer name: array (units, n, n)}. Returns (fig, {layer: [AxesImage]}) so frames can be updated.
    """
    rows, cols = len(layers), max(a.shape[0] for a in layers.values())
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 1.2, panel * rows + 0.5), squeeze=False)
    images = {}
    for r, (name, maps) in enumerate(layers.items()):
        lim = max(float(np.abs(maps).max()), 1e-6)
        images[name] = []
        for c in range(cols):
            ax = axes[r, c]
            ax.set(xticks=[], yticks=[])
            if c >= maps.shape[0]:
                ax.axis("off")
                continue
            images[name].append(ax.imshow(maps[c], origin="lower", extent=extent, cmap=DIVERGING,
                                          vmin=-lim, vmax=lim, interpolation="nearest"))
        axes[r, 0].set_ylabel(name, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.02, top=0.86, wspace=0.05, hspace=0.08)
    return fig, images


def curves(ax, histories: dict, column: str = "train_loss", smooth: int = 1, logy: bool = True, **kw):
    """Plot one column of several training histories (DataFrames with a 'step' column) against step."""
    for label, df in histories.items():
        s = df.set_index("step")[column].dropna()
        if smooth > 1:
            s = s.rolling(smooth, min_periods=1).mean()
        ax.plot(s.index, s.values, label=label, **kw)
    ax.set(xlabel="step", ylabel=column.replace("_", " "))
    if logy:
        ax.set_yscale("log")
    return ax


def attention_maps(att, extent, labels=None, title: str = ""):
    """att: (n, n, H, H) attention weights over a grid -> H x H panels; panel (i, j) = weight of token i on j."""
    att = np.asarray(att)
    H = att.shape[-1]
    fig, axes = plt.subplots(H, H, figsize=(1.5 * H + 1.2, 1.5 * H + 0.4), squeeze=False)
    for i in range(H):
        for j in range(H):
            im = axes[i, j].imshow(att[..., i, j], origin="lower", extent=extent, cmap=SEQUENTIAL, vmin=0, vmax=1)
            axes[i, j].set(xticks=[], yticks=[])
            if i == 0:
                axes[i, j].set_title(f"key {j}", fontsize="small")
            if j == 0:
                axes[i, j].set_ylabel(f"query {i}", fontsize="small")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize="medium")
    return fig


def table_style(df: pd.DataFrame, fold_constant: bool = True, keep=()):
    """A readable pandas Styler for result tables, narrow enough for the book's text column: no index, NaN as an
    em dash, numbers and 'mean ± sd' cells never wrapped, and (``fold_constant``) a setting column whose value is
    the same on every row moved into the caption ("all rows: epochs 1 · seeds 2"), where it is said once. The
    first column, result columns (a '%' in the name) and ``keep`` always stay."""
    stay = {df.columns[0], *keep} if len(df.columns) else set(keep)
    constant = [c for c in df.columns if fold_constant and len(df) > 1 and c not in stay and "%" not in str(c)
                and df[c].astype(str).nunique() == 1]
    shown = df.drop(columns=constant)
    sty = shown.style.hide(axis="index").format(na_rep="—", precision=3)
    if constant:
        sty = sty.set_caption("all rows: " + " · ".join(f"{c} {_cell(df[c].iloc[0])}" for c in constant))
    numeric = [c for c in shown.columns
               if pd.api.types.is_numeric_dtype(shown[c]) or shown[c].astype(str).str.contains("±").any()]
    return sty.set_properties(subset=numeric, **{"white-space": "nowrap"}) if numeric else sty


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if v.is_integer() else f"{v:.3g}"
    return f"{v:,}" if isinstance(v, int) else str(v)
