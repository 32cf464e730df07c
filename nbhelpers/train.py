"""The one training loop every chapter uses.

``fit`` runs epochs over any re-iterable of ``(x, y)`` batches, records a per-step history (a DataFrame), evaluates
on a schedule, times itself, and guards against NaN/inf or exploding losses: a bad loss stops the run and the
history says why and when (``status``/``reason``/``stopped_at``) instead of training on through garbage.

Mixed precision: ``amp_dtype=torch.bfloat16`` autocasts; ``amp_dtype=torch.float16`` also scales the loss with a
``torch.amp.GradScaler`` (``runtime.amp_for(device)`` picks the dtype a device runs fast). Long runs can be made
resumable with ``checkpoint=path`` (see ``fit``).
"""
from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

FP16_MAX_SKIPS = 20  # fp16 steps in a row the loss scaler may skip (halving its scale each time) before the run stops




def count_params(model) -> int:
    """Every parameter of a torch module, trained or fixed (the repaired vision model's data-derived whitening
    filters and unit BatchNorm scales count against its budget too)."""
    return sum(p.numel() for p in model.parameters())


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULES = ("none", "onecycle", "step", "triangle")


def choose(what: str, name, allowed) -> None:
    """Refuse a name that is not one of ``allowed`` (a typo must never silently pick a default)."""
    if name not in allowed:
        raise ValueError(f"{what}={name!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def optimizer(name: str, params, **kw) -> torch.optim.Optimizer:
    """The optimiser called ``name`` (adam, adamw, sgd) over ``params`` (tensors or param groups)."""
    choose("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](params, **kw)


def schedule(name: str, opt: torch.optim.Optimizer, total_steps: int, **kw):
    """``(scheduler, "step" | "epoch")``: when ``fit`` should step it; ``(None, "step")`` for ``none``.

    - ``onecycle``: ``OneCycleLR`` over ``total_steps`` (``kw``: max_lr, pct_start, anneal_strategy, div_factor ...);
    - ``step``: ``StepLR(step_size=1, gamma=kw.get("gamma", 0.7))``, stepped per epoch;
    - ``triangle``: airbench's piecewise-linear factor 0.2 -> 1 at 23 % of the steps -> 0.07 at the end."""
    choose("schedule", name, SCHEDULES)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, total_steps=total_steps, **kw), "step"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=kw.get("gamma", 0.7)), "epoch"
    if name == "triangle":
        xp = [0, int(0.23 * total_steps), total_steps]
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(np.interp(i, xp, [0.2, 1.0, 0.07]))), "step"
    return None, "step"


@contextmanager
def evaluating(model: torch.nn.Module):
    """``model`` in eval mode inside the block, then back in the mode it was in (train or eval)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def epoch_curve(history: "History", **columns) -> pd.DataFrame:
    """One row per epoch (1-based ``epoch``) from a per-step history: ``columns`` are pandas named aggregations,
    e.g. ``train_loss=("train_loss", "mean"), test_acc=("test_acc", "last")``; empty when nothing was recorded; a
    column never recorded (a run stopped before its first evaluation) aggregates to NaN."""
    df = history.df
    if not len(df):
        return pd.DataFrame(columns=["epoch", *columns])
    absent = {source for source, _ in columns.values()} - set(df.columns)   # e.g. no evaluation before a stop
    df = df.assign(**{c: np.nan for c in absent})
    return df.groupby("epoch").agg(**columns).reset_index().assign(epoch=lambda d: d.epoch + 1)


def grid(jobs, run: Callable, desc: str = "runs", progress: bool = True, mininterval: float = 5) -> list:
    """``[run(*job) for job in jobs]`` (a job that is not a tuple is passed as one argument), with a progress bar."""
    jobs = list(jobs)
    return [run(*job) if isinstance(job, tuple) else run(job)
            for job in progress_bar(jobs, desc=desc, disable=not progress, mininterval=mininterval)]


@dataclass(kw_only=True)
class Run:
    """What every chapter's run record has (each chapter subclasses it with its own fields): a ``label`` (the row
    or configuration it belongs to), its ``seed``, the trained ``model``, the ``fit`` ``history``, the parameter
    count and the training-GIF ``snapshots`` when they were recorded."""

    label: str
    seed: int = 0
    model: torch.nn.Module | None = field(default=None, repr=False)
    history: "History | None" = field(default=None, repr=False)
    params: int = 0
    snapshots: "Snapshots | None" = field(default=None, repr=False)


def progress_bar(*args, **kw):
    """``tqdm(*args, **kw)``, as a widget in Jupyter/Colab (where ipywidgets is installed) and as text elsewhere.

    ``tqdm.auto`` makes that choice; it warns once when a notebook lacks ipywidgets and then falls back to a text
    bar, so the import is done here with that warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(*args, **kw)


@dataclass
class History:
    rows: list = field(default_factory=list)
    status: str = "ok"             # "ok" | "nan" | "diverged"
    reason: str = ""
    stopped_at: int | None = None  # step at which the guard stopped the run
    diverged_at: int | None = None  # first step whose loss crossed the divergence threshold (stopped or not)
    wall_s: float = 0.0
    samples: int = 0
    skipped: int = 0               # fp16 steps the loss scaler skipped (gradient overflow; no update made)

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


def _rng_state(source) -> dict:
    """Every random state a training run draws from: torch (CPU, CUDA, MPS), python, numpy, and the batch source's
    own (``source.state_dict()`` if it has one, else its ``generator``, e.g. ``images.DeviceBatches``)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
             "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None, "source": None}
    if callable(getattr(source, "state_dict", None)):
        state["source"] = source.state_dict()
    elif isinstance(getattr(source, "generator", None), torch.Generator):
        state["source"] = source.generator.get_state()
    return state


def _set_rng_state(state: dict, source) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["mps"] is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])
    if state["source"] is not None:
        if callable(getattr(source, "load_state_dict", None)):
            source.load_state_dict(state["source"])
        else:
            source.generator.set_state(state["source"])


def _fingerprint(model, optimizer, batches, epochs: int, amp_dtype) -> dict:
    """What must match for a checkpoint to belong to this run: the model's tensors (names, shapes, dtypes), the
    optimiser's type, the number of epochs and of batches per epoch, and the autocast dtype."""
    return {"tensors": [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()],
            "optimizer": type(optimizer).__name__, "epochs": epochs,
            "batches": len(batches) if hasattr(batches, "__len__") else None, "amp_dtype": str(amp_dtype)}


def checkpoint_file(folder, label: str, **config) -> Path | None:
    """Where one run keeps its checkpoint: ``folder/<label>-<hash of config>.pt``, so a run with any other setting
    (recipe, epochs, seed, data size, ...) never resumes this one's state; None when ``folder`` is empty (no
    checkpoints). Pass everything that defines the run as ``config`` (repr() must be stable)."""
    if not folder:
        return None
    import hashlib

    key = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return Path(folder) / f"{safe}-{key}.pt"


def _grad_scaler(device_type: str, enabled: bool):
    """A loss scaler for fp16 autocast (a no-op when not enabled). torch.amp.GradScaler(device) is torch >= 2.3;
    older torch only has the CUDA one."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device_type == "cuda")


def _save_atomically(obj, path: Path) -> None:
    """torch.save to a temporary file next to ``path``, then os.replace: a crash leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``batches``.

    One meaning of "epoch" in every chapter: **one pass over ``batches``**, ended by an evaluation (unless
    ``eval_every`` says otherwise) and numbered in the history's ``epoch`` column. Over a fixed dataset that is
    one pass over the data (chapters 3 and 4); full-batch training yields one batch per pass, so an epoch is one
    step (chapters 1 and 5); a generated stream (chapter 2) yields ``steps / evaluations`` batches per pass, so an
    epoch is one evaluation interval.

    evaluate(model) -> dict of metrics, called every ``eval_every`` steps (None: at the end of each epoch), in
    eval mode under no_grad. on_step(step, model) runs after every optimiser step (e.g. to capture GIF frames).
    diverge_factor: a training loss above factor × the first step's loss (e.g. 100) counts as divergence.
    on_diverge: "stop" ends the run there; "report" records it (status "diverged", reason, ``diverged_at``) and
    trains on, as an original that never checked did. A NaN/inf loss or gradient always stops the run.
    amp_dtype: run forward passes under torch.autocast with this dtype (``runtime.amp_for(device)`` chooses one).
    With torch.float16 the loss is scaled by a ``torch.amp.GradScaler``: the gradients are unscaled before the
    NaN/inf check, and a step whose gradients overflowed is skipped by the scaler (no update; the row says
    ``skipped``, ``History.skipped`` counts them) instead of stopping the run; it still counts as a step, so the
    scheduler, ``on_step`` and the step numbers stay on the same clock as a run without overflows. Only
    ``FP16_MAX_SKIPS`` skips in a row (gradients that stay NaN/inf at any scale) stop the run as "nan".
    check_grads: also stop (before the optimiser step) when the gradient norm is NaN/inf.

    checkpoint: a file to make the run resumable (e.g. after a Colab disconnect). It is written atomically at the
    end of every epoch, or every ``checkpoint_every`` steps when given, and holds the model, optimiser, scheduler
    and loss-scaler states, the history so far, the counters, the random states (torch CPU/CUDA/MPS, python,
    numpy, and the batch source's ``state_dict()`` or ``generator``) and the ``state_dict()`` of ``loss_fn``,
    ``evaluate`` and ``on_step`` where they have one (``Snapshots`` does; restored with ``load_state_dict``).
    If the file exists when ``fit`` starts, the run resumes from it (one printed line says so) and gives exactly
    the metrics of an uninterrupted run: mid-epoch, the batch source's random states at the start of that epoch
    are restored and the batches already trained on are drawn again (not trained on), so any source whose
    randomness comes from those states — a list, ``images.DeviceBatches``, a DataLoader shuffling with torch's
    RNG — resumes exactly; a source with other hidden randomness gets the right number of batches but not the
    same ones. A checkpoint written by a different run (other model tensors, optimiser type, epochs, batches per
    epoch or amp_dtype: see ``_fingerprint``) is an error; other settings (learning rate, data) are not compared.
    When the run ends (finished or stopped by the guard), the file is kept and marked complete: calling ``fit``
    again loads the final states into ``model``, ``optimizer``, ``scheduler`` and the callbacks and returns the
    same history without training. Delete the file to train afresh. It is a pickle: load only checkpoints you
    wrote.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if scheduler_per not in ("step", "epoch"):
        raise ValueError("scheduler_per must be 'step' or 'epoch'")
    if on_diverge not in ("stop", "report"):
        raise ValueError(f"on_diverge={on_diverge!r} is not allowed; choose stop or report")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 steps, got {checkpoint_every}")
    device_type = torch.device(device).type
    scaler = _grad_scaler(device_type, enabled=amp_dtype == torch.float16)
    hist, step, first_loss, skips_in_a_row, start_epoch, done_in_epoch = History(), 0, None, 0, 0, 0
    path, saved = (Path(checkpoint), None) if checkpoint is not None else (None, None)
    fingerprint = _fingerprint(model, optimizer, batches, epochs, amp_dtype) if path is not None else None
    t0, wall_before = time.perf_counter(), 0.0
    callbacks = {name: c for name, c in (("loss_fn", loss_fn), ("evaluate", evaluate), ("on_step", on_step))
                 if callable(getattr(c, "state_dict", None)) and callable(getattr(c, "load_state_dict", None))}

    def save(epoch: int, done: int, epoch_rng: dict | None, complete: bool = False) -> None:
        """Checkpoint after ``done`` batches of ``epoch`` (0-based); ``epoch_rng``: random states at its start."""
        hist.wall_s = wall_before + time.perf_counter() - t0
        rng = _rng_state(batches)
        _save_atomically({
            "fingerprint": fingerprint, "complete": complete, "history": dict(vars(hist)),
            "step": step, "epoch": epoch, "done_in_epoch": done, "first_loss": first_loss,
            "skips_in_a_row": skips_in_a_row, "rng": rng, "epoch_rng": epoch_rng or rng,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "scaler": scaler.state_dict(),
            "callbacks": {name: c.state_dict() for name, c in callbacks.items()},
        }, path)

    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved["fingerprint"] != fingerprint:
            differ = ", ".join(k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k])
            raise ValueError(f"checkpoint {path} belongs to a different run (its {differ} differ); "
                             "delete it or pass another checkpoint path")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        for name, c in callbacks.items():
            if name in saved["callbacks"]:
                c.load_state_dict(saved["callbacks"][name])
        hist = History(**saved["history"])
        step, first_loss, skips_in_a_row = saved["step"], saved["first_loss"], saved["skips_in_a_row"]
        start_epoch, done_in_epoch, wall_before = saved["epoch"], saved["done_in_epoch"], hist.wall_s
        if saved["complete"]:
            _set_rng_state(saved["rng"], batches)
            print(f"{desc}: {path} holds a finished run ({step} steps); returning its history without training")
            return hist
        print(f"{desc}: resuming from {path} at step {step} (epoch {start_epoch + 1}, batch {done_in_epoch})")

    bar = progress_bar(total=epochs, initial=start_epoch, desc=desc, disable=not progress, file=sys.stderr,
                       mininterval=2.0)

    def run_eval(row):
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                row.update(evaluate(model))
            model.train()

    def stop(row, status, reason):
        hist.status, hist.reason, hist.stopped_at = status, reason, step
        hist.rows.append(row)

    model.train()
    for epoch in range(start_epoch, epochs):
        done = 0
        if saved is not None and epoch == start_epoch:
            _set_rng_state(saved["epoch_rng"], batches)   # replay the epoch's first batches as they were drawn
        epoch_rng = _rng_state(batches) if path is not None else None
        it = iter(batches)
        if saved is not None and epoch == start_epoch and done_in_epoch:
            done = sum(1 for _ in itertools.islice(it, done_in_epoch))
            _set_rng_state(saved["rng"], batches)         # then continue from the checkpoint's random states
        for x, y in it:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x), y)
            value = float(loss.detach())
            row = {"step": step, "epoch": epoch, "train_loss": value,
                   "lr": optimizer.param_groups[0]["lr"]}
            if not math.isfinite(value):
                stop(row, "nan", f"training loss became {value} at step {step} (epoch {epoch + 1})")
                break
            if diverge_factor is not None:
                first_loss = value if first_loss is None else first_loss
                if value > diverge_factor * first_loss and hist.diverged_at is None:
                    hist.status, hist.diverged_at = "diverged", step
                    hist.reason = (f"training loss {value:.4g} exceeded {diverge_factor:g}x the first loss "
                                   f"{first_loss:.4g} at step {step} (epoch {epoch + 1})")
                    if on_diverge == "report":
                        hist.reason += "; training went on (on_diverge='report')"
                    else:
                        hist.stopped_at = step
                        hist.rows.append(row)
                        break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if check_grads:  # a finite loss can still give NaN/inf gradients (e.g. inf * 0 at a pole)
                scaler.unscale_(optimizer)  # (fp16) the true gradients: the scaler's step will not unscale again
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
                if not math.isfinite(norm) and not scaler.is_enabled():
                    stop(row, "nan", f"gradient norm became {norm} at step {step} (epoch {epoch + 1})")
                    break
            skipped = False
            if scaler.is_enabled():
                scale = scaler.get_scale()
                scaler.step(optimizer)                    # skipped when the fp16 gradients overflowed
                scaler.update()
                skipped = scaler.get_scale() < scale      # update() lowers the scale exactly when it skipped
                row.update(loss_scale=scale, skipped=skipped)
                hist.skipped += skipped
                skips_in_a_row = skips_in_a_row + 1 if skipped else 0
                if skips_in_a_row >= FP16_MAX_SKIPS:
                    stop(row, "nan", f"gradients were NaN/inf for {skips_in_a_row} fp16 steps in a row (loss scale "
                                     f"down to {scaler.get_scale():.3g}) at step {step} (epoch {epoch + 1})")
                    break
            else:
                optimizer.step()
            if scheduler is not None and scheduler_per == "step":
                if skipped:  # torch warns when the very first scheduler step follows a skipped optimiser step
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                        scheduler.step()
                else:
                    scheduler.step()
            hist.samples += len(x)
            step += 1
            done += 1
            if eval_every and step % eval_every == 0:
                run_eval(row)
            hist.rows.append(row)
            if on_step is not None:
                on_step(step, model)
            if checkpoint_every and step % checkpoint_every == 0 and path is not None:
                save(epoch, done, epoch_rng)
        if hist.stopped_at is not None:
            break
        if scheduler is not None and scheduler_per == "epoch":
            scheduler.step()
        if not eval_every:
            run_eval(hist.rows[-1])
        bar.update(1)
        bar.set_postfix(loss=f"{hist.rows[-1]['train_loss']:.4g}")
        if path is not None and not checkpoint_every and epoch + 1 < epochs:
            save(epoch + 1, 0, None)
    bar.close()
    hist.wall_s = wall_before + time.perf_counter() - t0
    if path is not None:
        save(epoch, done, None, complete=True)
    return hist


def even_steps(total: int, frames: int) -> list[int]:
    """``frames`` optimiser-step counts evenly spaced from 0 (before training) to ``total`` (the end), both kept,
    duplicates dropped: a run of fewer than ``frames`` steps gives every step. ``Snapshots(probe, even_steps(...))``
    then ``snapshots.start(model)`` records them all."""
    if frames < 1 or total < 0:
        raise ValueError(f"even_steps needs frames >= 1 and total >= 0, got frames={frames}, total={total}")
    return sorted({int(round(s)) for s in np.linspace(0, total, frames)})


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
        with evaluating(model), torch.no_grad():
            self.frames.append(self.probe(model))
        self.at.append(step)

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        if step in self.steps:
            self.record(step, model)

    def start(self, model: torch.nn.Module) -> None:
        """Record step 0 (the untrained model) when it is one of ``steps`` and nothing is recorded yet: call it
        just before ``fit``. A run that resumes from a checkpoint gets the saved frames back over it."""
        if 0 in self.steps and not self.at:
            self.record(0, model)

    def state_dict(self) -> dict:
        """The frames so far (``fit(checkpoint=...)`` saves them, so a resumed run's GIF is complete)."""
        return {"frames": self.frames, "at": self.at}

    def load_state_dict(self, state: dict) -> None:
        self.frames, self.at = list(state["frames"]), list(state["at"])


@torch.no_grad()
def classifier_metrics(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None,
                       batch: int = 1000, amp_dtype: torch.dtype | None = None) -> dict:
    """Mean cross-entropy and accuracy of a classifier over (x, y) in chunks of ``batch``, in eval mode (restoring
    the previous mode). ``transform`` maps a raw chunk to the model's input (e.g. uint8 -> normalised float)."""
    loss, correct = torch.zeros((), device=y.device), torch.zeros((), device=y.device, dtype=torch.long)
    with evaluating(model):
        for i in range(0, len(y), batch):
            xb = x[i:i + batch] if transform is None else transform(x[i:i + batch])
            with torch.autocast(xb.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(xb).float()
            loss += torch.nn.functional.cross_entropy(out, y[i:i + batch], reduction="sum")
            correct += (out.argmax(-1) == y[i:i + batch]).sum()
    return {"loss": float(loss) / len(y), "acc": float(correct) / len(y)}
