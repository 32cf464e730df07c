"""The one training loop every chapter uses.

``fit`` runs epochs over any re-iterable of ``(x, y)`` batches, records a per-step history (a DataFrame), evaluates
on a schedule, times itself, and guards against NaN/inf or exploding losses: a bad loss stops the run and the
history says why and when (``status``/``reason``/``stopped_at``) instead of training on through garbage.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd
import torch
from tqdm.std import tqdm


@dataclass
class History:
    rows: list = field(default_factory=list)
    status: str = "ok"             # "ok" | "nan" | "diverged"
    reason: str = ""
    stopped_at: int | None = None  # step at which the guard stopped the run
    diverged_at: int | None = None  # first step whose loss crossed the divergence threshold (stopped or not)
    wall_s: float = 0.0
    samples: int = 0

    @property
    def df(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s else float("nan")

    def last(self, column: str) -> float:
        """Last recorded (non-NaN) value of a column."""
        s = self.df.get(column)
        return float(s.dropna().iloc[-1]) if s is not None and s.notna().any() else float("nan")


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    loss_fn: Callable,
    *,
    epochs: int,
    scheduler=None,
    scheduler_per: str = "step",
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    eval_every: int | None = None,
    on_step: Callable[[int, torch.nn.Module], None] | None = None,
    diverge_factor: float | None = None,
    on_diverge: str = "stop",
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    check_grads: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train ``model`` for ``epochs`` passes over ``batches``.

    evaluate(model) -> dict of metrics, called every ``eval_every`` steps (None: at the end of each epoch), in
    eval mode under no_grad. on_step(step, model) runs after every optimiser step (e.g. to capture GIF frames).
    diverge_factor: a training loss above factor × the first step's loss (e.g. 100) counts as divergence.
    on_diverge: "stop" ends the run there; "report" records it (status "diverged", reason, ``diverged_at``) and
    trains on, as an original that never checked did. A NaN/inf loss or gradient always stops the run.
    amp_dtype: run forward passes under torch.autocast with this dtype (e.g. torch.bfloat16 on GPU).
    check_grads: also stop (before the optimiser step) when the gradient norm is NaN/inf.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if scheduler_per not in ("step", "epoch"):
        raise ValueError("scheduler_per must be 'step' or 'epoch'")
    if on_diverge not in ("stop", "report"):
        raise ValueError(f"on_diverge={on_diverge!r} is not allowed; choose stop or report")
    hist, step, first_loss = History(), 0, None
    t0 = time.perf_counter()
    bar = tqdm(total=epochs, desc=desc, disable=not progress, file=sys.stderr, mininterval=2.0)

    def run_eval(row):
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update(evaluate(model))
            model.train()

    model.train()
    for epoch in range(epochs):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x), y)
            value = float(loss.detach())
            row = {"step": step, "epoch": epoch, "train_loss": value,
                   "lr": optimizer.param_groups[0]["lr"]}
            if not math.isfinite(value):
                hist.status, hist.reason = "nan", f"training loss became {value} at step {step} (epoch {epoch + 1})"
            elif diverge_factor is not None:
                first_loss = value if first_loss is None else first_loss
                if value > diverge_factor * first_loss and hist.diverged_at is None:
                    hist.status, hist.diverged_at = "diverged", step
                    hist.reason = (f"training loss {value:.4g} exceeded {diverge_factor:g}x the first loss "
                                   f"{first_loss:.4g} at step {step} (epoch {epoch + 1})")
                    if on_diverge == "report":
                        hist.reason += "; training went on (on_diverge='report')"
            if hist.status == "nan" or (hist.status == "diverged" and on_diverge == "stop"):
                hist.rows.append(row)
                hist.stopped_at = step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if check_grads:  # a finite loss can still give NaN/inf gradients (e.g. inf * 0 at a pole)
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
                if not math.isfinite(norm):
                    hist.status, hist.reason = "nan", f"gradient norm became {norm} at step {step} (epoch {epoch + 1})"
                    hist.rows.append(row)
                    hist.stopped_at = step
                    break
            optimizer.step()
            if scheduler is not None and scheduler_per == "step":
                scheduler.step()
            hist.samples += len(x)
            step += 1
            if eval_every and step % eval_every == 0:
                run_eval(row)
            hist.rows.append(row)
            if on_step is not None:
                on_step(step, model)
        if hist.stopped_at is not None:
            break
        if scheduler is not None and scheduler_per == "epoch":
            scheduler.step()
        if not eval_every:
            run_eval(hist.rows[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{hist.rows[-1]['train_loss']:.4g}")
    bar.close()
    hist.wall_s = time.perf_counter() - t0
    return hist


class Snapshots:
    """An ``on_step`` callback that records ``probe(model)`` (e.g. outputs on a plot grid) at chosen steps.

    ``steps`` are optimiser-step counts; step 0 is recorded by calling ``snapshots.record(0, model)`` before
    training. The probe runs in eval mode under no_grad; its result (anything) is kept in ``frames``.
    """

    def __init__(self, probe: Callable[[torch.nn.Module], object], steps):
        self.probe, self.steps = probe, set(int(s) for s in steps)
        self.frames: list = []
        self.at: list[int] = []

    def record(self, step: int, model: torch.nn.Module) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.frames.append(self.probe(model))
        self.at.append(step)
        model.train(was_training)

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        if step in self.steps:
            self.record(step, model)


@torch.no_grad()
@torch.no_grad()
def classifier_metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None,
                       batch: int = 1000, amp_dtype: torch.dtype | None = None) -> dict:
    """Mean cross-entropy and accuracy of a classifier over (x, y) in chunks of ``batch``, in eval mode (restoring
    the previous mode). ``transform`` maps a raw chunk to the model's input (e.g. uint8 -> normalised float)."""
    was_training = model.training
    model.eval()
    loss, correct = torch.zeros((), device=y.device), torch.zeros((), device=y.device, dtype=torch.long)
    for i in range(0, len(y), batch):
        xb = x[i:i + batch] if transform is None else transform(x[i:i + batch])
        with torch.autocast(xb.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(xb).float()
        loss += torch.nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum")
        correct += (out.argmax(-1) == y[i:i + batch]).sum()
    model.train(was_training)
    return {"loss": float(loss) / len(y), "acc": float(correct) / len(y)}
