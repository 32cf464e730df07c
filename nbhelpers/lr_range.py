"""The learning-rate range test (Smith 2015; the ``torch-lr-finder`` procedure), generic over model and data.

The learning rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimiser steps; each step's
training loss is recorded (and an exponentially smoothed copy, as torch-lr-finder reports it). The run stops early
once the smoothed loss exceeds ``stop_factor`` × its best value. The model's and optimiser's state are restored
afterwards, so the test leaves no trace on the model.
"""
from __future__ import annotations

import copy
import itertools
import math
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch


def range_test(model: torch.nn.Module, make_optimizer: Callable[[Iterable], torch.optim.Optimizer],
               batches: Iterable, loss_fn: Callable, *, start_lr: float = 1e-5, end_lr: float = 10.0,
               steps: int = 100, smooth: float = 0.05, stop_factor: float = 5.0,
               device: torch.device | str = "cpu") -> pd.DataFrame:
    """Run the test; returns a DataFrame with columns step, lr, loss, smoothed (one row per step taken).

    make_optimizer(params) builds the optimiser (its lr is overwritten each step); batches is re-iterated as
    often as needed (epochs back to back)."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    saved = copy.deepcopy(model.state_dict())
    opt = make_optimizer(model.parameters())
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    stream = (b for _ in itertools.count() for b in batches)
    rows, avg, best = [], None, math.inf
    model.train()
    try:
        for step in range(steps):
            lr = start_lr * gamma ** step
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = next(stream)
            loss = loss_fn(model(x.to(device)), y.to(device))
            value = float(loss.detach())
            if not math.isfinite(value):
                rows.append({"step": step, "lr": lr, "loss": value, "smoothed": math.inf})
                break
            smoothed = avg = value if avg is None else smooth * value + (1 - smooth) * avg  # torch-lr-finder's
            rows.append({"step": step, "lr": lr, "loss": value, "smoothed": smoothed})
            best = min(best, smoothed)
            if smoothed > stop_factor * best:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        model.load_state_dict(saved)
    return pd.DataFrame(rows)


def loss_minimum(df: pd.DataFrame) -> float:
    """The learning rate at the smoothed loss minimum: what the original took as OneCycle's max_lr."""
    finite = df[np.isfinite(df.smoothed)]
    return float(finite.lr.iloc[int(finite.smoothed.values.argmin())])


def steepest(df: pd.DataFrame, skip_end: int = 3) -> float:
    """The learning rate where the smoothed loss falls fastest (per log-lr), before the minimum: the usual,
    safer pick."""
    finite = df[np.isfinite(df.smoothed)]
    stop = int(finite.smoothed.values.argmin()) + 1
    part = finite.iloc[:max(stop, 3)]
    if len(part) < 3:
        return float(part.lr.iloc[0])
    grad = np.gradient(part.smoothed.values, np.log(part.lr.values))
    return float(part.lr.iloc[int(grad[:max(len(grad) - skip_end, 1)].argmin())])


def near_end(lr: float, start: float, end: float, frac: float = 0.1) -> bool:
    """Is ``lr`` in the last ``frac`` of the test's span (on the log axis)? A loss minimum there means the test
    stopped before the loss turned: the span, not the model, chose it."""
    return math.log(lr / start) >= (1 - frac) * math.log(end / start)


def plot(ax, df: pd.DataFrame, marks: dict | None = None):
    """Loss (raw, faint) and smoothed loss against the learning rate on a log axis; marks = {label: lr}."""
    ax.plot(df.lr, df.loss, alpha=0.3, lw=1, label="loss")
    ax.plot(df.lr, df.smoothed, lw=2, label="smoothed")
    finite = df.smoothed[np.isfinite(df.smoothed)]
    if len(finite):
        lo, hi = float(finite.min()), float(finite.iloc[0])
        ax.set_ylim(lo - 0.1 * abs(hi - lo) - 1e-3, max(hi, lo) + 0.6 * abs(hi - lo) + 1e-3)
    for i, (label, lr) in enumerate((marks or {}).items()):
        ax.axvline(lr, ls="--", color=f"C{i + 2}", label=f"{label}: {lr:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR-range test")
    ax.legend(fontsize="small")
    return ax
