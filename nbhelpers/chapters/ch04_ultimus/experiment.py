"""Chapter 4 experiment: the Ultimus network on CIFAR-10 — the original recipe (LR-range test → OneCycle), the
ablations, a fixed-spec and a repaired model, their tables and figures. Data stay on the device
(``images.DeviceBatches``), training goes through ``train.fit`` (divergence guard included)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ... import chapter, lr_range, seeds as S, train
from ...data import images
from . import models as U
from ...viz import animate, plots

# the original's normalisation statistics and augmentation (pad 40 reflect + crop 32, flip, one 16×16 hole p .5
# filled with the mean)
STATS = ((0.4942, 0.4851, 0.4504), (0.2467, 0.2429, 0.2616))
AUGMENT = images.Augment(crop_padding=4, crop_mode="reflect", flip=True, erase_size=16, erase_p=0.5,
                         erase_mode="inside")
# the working recipe keeps crop + flip and drops the 16×16 hole: a 26 k-parameter model underfits CIFAR-10, and
# erasing a quarter of the image half the time costs it accuracy at 24 epochs (measured: 67.3 vs 65.0 % on a
# 20 k-image, 6-epoch probe of the repaired model)
AUGMENT_WORKING = replace(AUGMENT, erase_p=0.0)
ORIGINAL_MAX_LR = 0.02477
ORIGINAL = {"acc_epoch1": 18.29, "acc_epoch2": 18.51, "acc_epoch3": 18.72, "final_acc": 12.99,
            "diverged_epoch": 4, "diverged_loss": 53_460, "best_public": 62.25}


def start(namespace: dict, **specs) -> chapter.Opening:
    """The notebook's opening (``chapter.start``): its parameters checked, the range tests' spans validated, the
    CPU threads set, everything seeded, the run header printed, ``Results`` started."""
    return chapter.start(namespace, __name__, validate=_validate, **specs)


def _validate(p: dict) -> None:
    if not p["range_start"] < p["range_end"] or not p["range_start"] < p["proper_range_end"]:
        raise ValueError(f"the range tests need range_start < range_end and < proper_range_end, got "
                         f"{p['range_start']}, {p['range_end']}, {p['proper_range_end']}")


@dataclass(frozen=True)
class Recipe:
    """Optimiser + OneCycle (per step) + augmentation. The original: Adam with coupled weight decay 5e-3, batch 512,
    max_lr from the range test, pct_start 5/24, div_factor 10, final_div_factor 10, linear annealing, ``AUGMENT``."""

    name: str
    max_lr: float = ORIGINAL_MAX_LR
    optimizer: str = "adam"         # adam (L2 added to the gradient, as the original) | adamw (decoupled)
    weight_decay: float = 5e-3
    batch_size: int = 512
    pct_start: float = 5 / 24
    div_factor: float = 10.0
    final_div_factor: float = 10.0
    label_smoothing: float = 0.0
    augment: images.Augment = AUGMENT

    def __post_init__(self):
        train.choose("optimizer", self.optimizer, ("adam", "adamw"))  # a typo must not silently train with Adam

    def optimizer_for(self, params, fused: bool = False) -> torch.optim.Optimizer:
        return train.optimizer(self.optimizer, params, lr=self.max_lr / self.div_factor,
                               weight_decay=self.weight_decay, **({"fused": True} if fused else {}))

    def scheduler_for(self, opt, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
        return train.schedule("onecycle", opt, total_steps, max_lr=self.max_lr, pct_start=self.pct_start,
                              anneal_strategy="linear", div_factor=self.div_factor,
                              final_div_factor=self.final_div_factor)[0]


def original(max_lr: float = ORIGINAL_MAX_LR, batch_size: int = 512) -> Recipe:
    return Recipe("original", max_lr=max_lr, batch_size=batch_size)


def working(max_lr: float = 0.01, batch_size: int = 512) -> Recipe:
    """The recipe of the fixed-spec and repaired models: AdamW (decoupled decay), label smoothing, crop + flip
    without the erased square; same batch, same OneCycle shape."""
    return Recipe("working", max_lr=max_lr, optimizer="adamw", weight_decay=0.05, batch_size=batch_size,
                  label_smoothing=0.1, augment=AUGMENT_WORKING)


def schedule(recipe: Recipe, total_steps: int) -> pd.DataFrame:
    """The learning rate of every step of a OneCycle run (without training)."""
    opt = recipe.optimizer_for([torch.zeros(1, requires_grad=True)])
    sched = recipe.scheduler_for(opt, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return pd.DataFrame({"step": np.arange(total_steps), "lr": lrs})


def load(n_train: int = 0, n_test: int = 0) -> images.ImageData:
    """CIFAR-10, its first ``n_train`` training and ``n_test`` test images (0: all)."""
    return images.load("cifar10").subset(n_train or None, n_test or None)


def train_batches(data: images.ImageData, batch_size: int, device, seed: int = 0,
                  augment: images.Augment | None = AUGMENT, drop_last: bool = False) -> images.DeviceBatches:
    """Normalised, augmented (``augment``; None: none) training batches, resident on the device."""
    return images.DeviceBatches(data.x_train, data.y_train, batch_size, device, STATS, augment, seed=seed,
                                drop_last=drop_last)


class Tally:
    """Cross-entropy loss that also counts training accuracy (on the device, no sync) until ``take()``."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing, self.correct, self.seen = label_smoothing, 0, 0

    def __call__(self, out, y):
        self.correct = self.correct + (out.detach().argmax(-1) == y).sum()
        self.seen += len(y)
        return F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)

    def take(self) -> float:
        acc = float(self.correct) / self.seen if self.seen else float("nan")
        self.correct, self.seen = 0, 0
        return acc

    def state_dict(self) -> dict:          # kept in a train.fit checkpoint, so a resumed epoch counts every batch
        return {"correct": int(self.correct), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.correct, self.seen = state["correct"], state["seen"]


# ---------------------------------------------------------------- LR-range test

def range_test(data: images.ImageData, recipe: Recipe, device, split: str = "test", steps: int = 100,
               start_lr: float = 1e-6, end_lr: float = 0.1, seed: int = 0, variant: str = "faithful") -> pd.DataFrame:
    """The range test on the faithful model with the recipe's optimiser. The original ran it on the *test* set
    (split "test") from 1e-6 to 0.1 over 100 steps; "train" uses augmented training batches."""
    torch.manual_seed(seed)
    model = U.build(variant).to(device)
    source = (images.DeviceBatches(data.x_test, data.y_test, recipe.batch_size, device, STATS, seed=seed)
              if split == "test" else train_batches(data, recipe.batch_size, device, seed, recipe.augment))
    return lr_range.range_test(model, recipe.optimizer_for, source, F.cross_entropy, start_lr=start_lr, end_lr=end_lr,
                               steps=steps, device=device)


# ---------------------------------------------------------------- training

@dataclass(kw_only=True)
class UltimusRun(train.Run):
    """One training run (``train.Run``: label, seed, model, history, params, snapshots — the training-GIF frames,
    if recorded) of a model variant with a recipe."""

    variant: str
    recipe: Recipe
    curve: pd.DataFrame             # per epoch: epoch, train_loss, train_acc, test_loss, test_acc

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch (1-based) in which the training loss first crossed the guard's threshold, stopped or not."""
        h = self.history
        return None if h.diverged_at is None else int(h.df.epoch[h.df.step == h.diverged_at].iloc[0]) + 1

    @property
    def final_acc(self) -> float:
        s = self.curve.test_acc.dropna()
        return float(s.iloc[-1]) if len(s) else float("nan")

    @property
    def max_acc(self) -> float:
        return float(self.curve.test_acc.max())   # NaN when no epoch was evaluated


def compiles(device, fast) -> bool:
    """Whether ``fast_model`` compiles on this device (then the batches drop their last, smaller one)."""
    return torch.device(device).type == "cuda" if fast == "auto" else bool(fast)


def steps_per_epoch(n_train: int, batch_size: int, device, fast="auto") -> int:
    """Optimiser steps per epoch of ``train_one`` (the last smaller batch is dropped when the model is compiled)."""
    return n_train // batch_size if compiles(device, fast) else -(-n_train // batch_size)


def fast_model(model: torch.nn.Module, device: torch.device, fast) -> torch.nn.Module:
    """The fast path: channels-last + torch.compile — on CUDA in mode "reduce-overhead" (Inductor kernels replayed
    as CUDA graphs; static shapes, hence drop_last). ``fast``: True, False or "auto" (CUDA only: on a CPU the
    compile time does not pay back at this size)."""
    if not compiles(device, fast):
        return model
    model = model.to(memory_format=torch.channels_last)
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else "default")


def train_one(data: images.ImageData, variant: str, recipe: Recipe, epochs: int, device, seed: int = 0,
              label: str | None = None, diverge_factor: float | None = 20.0, fast="auto", on_diverge: str = "stop",
              checkpoints: str = "", on_step=None, **model_kw) -> UltimusRun:
    """Train one variant with one recipe; test loss/accuracy and training accuracy after every epoch. The guard
    stops the run when the training loss exceeds ``diverge_factor`` × the first loss (``on_diverge="report"``:
    records it and trains on, as the original did), and always on a NaN/inf loss. ``checkpoints``: a folder
    where the run saves itself every epoch and resumes from when started again (``train.checkpoint_file``).
    ``on_step(step, model)`` is called after every optimiser step (``train.fit``); a ``train.Snapshots`` also records
    step 0 and is kept as ``UltimusRun.snapshots``."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = U.build(variant, **model_kw).to(device)
    stepper = fast_model(model, device, fast)
    compiled = stepper is not model
    batches = train_batches(data, recipe.batch_size, device, seed, recipe.augment,
                            drop_last=compiled)  # static shapes when compiled
    opt = recipe.optimizer_for(model.parameters(), fused=compiled and device.type == "cuda")
    sched = recipe.scheduler_for(opt, epochs * len(batches))
    tally = Tally(recipe.label_smoothing)
    x_test, y_test = images.as_nchw(data.x_test, device), torch.as_tensor(data.y_test).to(device)  # uint8 NCHW

    def metrics(_):
        m = train.classifier_metrics(model, x_test, y_test, lambda x: batches.normalise(x.float().div(255)))
        return {"train_acc": tally.take(), "test_loss": m["loss"], "test_acc": m["acc"]}

    label = label or variant
    ckpt = train.checkpoint_file(checkpoints, label, variant=variant, recipe=recipe, epochs=epochs, seed=seed,
                                 n=(len(data.x_train), len(data.x_test)), fast=fast,
                                 guard=(diverge_factor, on_diverge), model=sorted(model_kw.items()))
    snaps = on_step if isinstance(on_step, train.Snapshots) else None
    if snaps is not None:
        snaps.start(model)   # step 0: the untrained model
    hist = train.fit(stepper, opt, batches, tally, epochs=epochs, scheduler=sched, scheduler_per="step",
                     device=device, diverge_factor=diverge_factor, on_diverge=on_diverge, progress=False,
                     evaluate=metrics, desc=label, checkpoint=ckpt, on_step=on_step)
    curve = train.epoch_curve(hist, train_loss=("train_loss", "mean"), train_acc=("train_acc", "last"),
                              test_loss=("test_loss", "last"), test_acc=("test_acc", "last"))
    return UltimusRun(label=label, variant=variant, recipe=recipe, params=train.count_params(model), history=hist,
                      curve=curve, model=model, seed=seed, snapshots=snaps)


# ---------------------------------------------------------------- rows over seeds

@dataclass(frozen=True)
class Row:
    """One row of a results table: a variant, a recipe, how the guard acts, trained over several seeds."""

    key: str
    variant: str
    recipe: Recipe
    label: str
    on_diverge: str = "stop"
    model_kw: tuple = ()            # (name, value) pairs passed to the model's build


def run_grid(data: images.ImageData, rows: list[Row], seed_list, epochs: int, device, diverge_factor: float,
             fast="auto", checkpoints: str = "", on_step=None) -> dict[str, list[UltimusRun]]:
    """Every row for every seed: {row key: [runs]}. A guarded row ("stop") whose unguarded twin (same variant,
    recipe, model and seed, "report") never crossed the threshold is that same run, so it is reused, not retrained
    (training is deterministic for a seed); it is retrained only where the guard would have stopped it.
    ``on_step``: a factory ``(row, seed, total_steps) -> callback or None`` (e.g. ``prediction_snapshots``) whose
    callback goes to ``train_one(on_step=...)``."""
    groups: dict[str, list[UltimusRun]] = {}
    for r in rows:
        twin = next((groups[t.key] for t in rows if t.key in groups and t.on_diverge == "report"
                     and r.on_diverge == "stop" and (t.variant, t.recipe, t.model_kw) ==
                     (r.variant, r.recipe, r.model_kw)), None)
        runs = []
        for i, sd in enumerate(seed_list):
            if twin is not None and twin[i].history.diverged_at is None:
                runs.append(replace(twin[i], label=r.label))
            else:
                total = epochs * steps_per_epoch(len(data.x_train), r.recipe.batch_size, device, fast)
                runs.append(train_one(data, r.variant, r.recipe, epochs, device, seed=sd, label=r.label, fast=fast,
                                      diverge_factor=diverge_factor, on_diverge=r.on_diverge, checkpoints=checkpoints,
                                      on_step=on_step(r, sd, total) if on_step is not None else None,
                                      **dict(r.model_kw)))
        groups[r.key] = runs
    return groups


def faithful_rows(peak: float, batch_size: int) -> list[Row]:
    """The original recipe twice: trained through a divergence as the original was (the guard only reports it),
    and with the guard stopping the run (the same seed: the same run up to the stop)."""
    rec = original(peak, batch_size)
    return [Row("faithful", "faithful", rec, "faithful (trains through, as the original)", "report"),
            Row("guarded", "faithful", rec, "faithful, guarded (stops at a divergence)", "stop")]


REPAIRS = ("fixed", "repaired")


def repair_rows(fixed_lr: float, fixed_batch: int, repaired_lr: float, repaired_batch: int,
                which=REPAIRS) -> list[Row]:
    """The fixed-spec and repaired models (those in ``which``), each beside its control: the same network and
    recipe without the attention blocks."""
    fixed, rep = working(fixed_lr, fixed_batch), working(repaired_lr, repaired_batch)
    rows = {"fixed": [Row("fixed", "fixed_spec", fixed, "fixed-spec"),
                      Row("fixed_noattn", "fixed_noattn", fixed, "fixed-spec without attention (control)")],
            "repaired": [Row("repaired", "repaired", rep, "repaired"),
                         Row("repaired_noattn", "repaired_noattn", rep, "repaired without attention (control)")]}
    return [r for name in which for r in rows[name]]


def finals(runs: list[UltimusRun]) -> list[float]:
    return [100 * r.final_acc for r in runs]


def summarise(groups: dict[str, list[UltimusRun]]) -> pd.DataFrame:
    """One row per key: test accuracy (%) over seeds as mean ± sd, and how many seeds diverged or were stopped."""
    rows = []
    for runs in groups.values():
        r0 = runs[0]
        div = sum(r.history.diverged_at is not None for r in runs)
        stopped = sum(r.history.stopped_at is not None for r in runs)
        epochs = sorted({int(r.curve.epoch.max()) if len(r.curve) else 0 for r in runs})
        rows.append({"run": r0.label, "params": r0.params, "recipe": r0.recipe.name,
                     "max_lr": r0.recipe.max_lr, "batch": r0.recipe.batch_size, "seeds": len(runs),
                     "epochs run": "/".join(map(str, epochs)), "final test acc %": S.pm(finals(runs)),
                     "max test acc %": S.pm([100 * r.max_acc for r in runs]),
                     "diverged (seeds)": f"{div} of {len(runs)}", "stopped by the guard": f"{stopped} of {len(runs)}"})
    return pd.DataFrame(rows)


def styled(df: pd.DataFrame):
    return plots.table_style(df).format({"params": "{:,.0f}", "max_lr": "{:.3g}"}, na_rep="—")


# ---------------------------------------------------------------- figures

def _gallery(pics, titles, suptitle: str, cols: int = 8, size: float = 1.3):
    """``pics`` in rows of ``cols``, each with its title (the cells after the last one left blank)."""
    rows = -(-max(len(pics), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
    for ax, img, title in zip(axes.flat, pics, titles):
        ax.imshow(img)
        ax.set_title(title, fontsize="x-small")
    for ax in axes.flat[len(pics):]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize="small")
    fig.tight_layout()
    return fig


def plot_batch(batches: images.DeviceBatches, classes, n: int = 32):
    """The first n images of one augmented training batch, un-normalised back to pixels."""
    x, y = next(iter(batches))
    return _gallery(batches.denormalise(x[:n]).permute(0, 2, 3, 1).cpu().numpy(), [classes[i] for i in y[:n].tolist()],
                    "augmented training batch (reflect-pad 4 + crop 32, flip, 16×16 mean-filled hole)")


def plot_ranges(panels: dict):
    """panels: {title: (range-test DataFrame, {label: lr})}, side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (title, (df, marks)) in zip(axes.flat, panels.items()):
        lr_range.plot(ax, df, marks)
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    return fig


def plot_schedules(schedules: dict):
    """schedules: {label: DataFrame(step, lr)}."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, df in schedules.items():
        ax.plot(df.step, df.lr, label=label)
    ax.set(xlabel="step", ylabel="learning rate", title="OneCycle schedule (stepped per batch)", yscale="log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_curves(runs: list[UltimusRun]):
    """Train/test loss and accuracy per epoch (one seed per row); a cross marks where the guard stopped a run, a
    ring the epoch in which a run that trained on crossed the guard's threshold."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for i, r in enumerate(runs):
        c, color = r.curve, f"C{i % 10}"
        axes[0].plot(c.epoch, c.train_loss, color=color, marker="o", ms=3, label=r.label)
        axes[0].plot(c.epoch, c.test_loss, color=color, ls="--", marker="s", ms=3)
        axes[1].plot(c.epoch, 100 * c.train_acc, color=color, marker="o", ms=3, label=r.label)
        axes[2].plot(c.epoch, 100 * c.test_acc, color=color, marker="o", ms=3, label=r.label)
        if r.history.stopped_at is not None and len(c):
            axes[0].plot(c.epoch.iloc[-1], c.train_loss.iloc[-1], "x", color=color, ms=10, mew=2)
        elif r.diverged_epoch is not None:
            e = c[c.epoch == r.diverged_epoch]
            axes[0].plot(e.epoch, e.train_loss, "o", mfc="none", color=color, ms=12, mew=2)
    axes[0].set(xlabel="epoch", ylabel="loss (solid train, dashed test)", yscale="log", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy %", title="training accuracy (augmented)")
    axes[2].set(xlabel="epoch", ylabel="accuracy %", title="test accuracy")
    axes[2].legend(fontsize="x-small", loc="best")
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_misclassified(run: UltimusRun, data: images.ImageData, n: int = 24):
    """Test images the model gets wrong, titled "pred / true"."""
    with train.evaluating(run.model):
        pred = prediction_probe(data, len(data.y_test), batch=1000)(run.model)
    y = np.asarray(data.y_test)
    wrong = np.flatnonzero(pred != y)[:n]
    titles = [f"{data.classes[int(pred[i])]} / {data.classes[int(y[i])]}" for i in wrong]
    return _gallery([data.x_test[i] for i in wrong], titles, f"misclassified test images, {run.label} (pred / true)")


def prediction_probe(data: images.ImageData, n: int = 500, batch: int = 500):
    """A ``train.Snapshots`` probe: the predicted class (uint8) of each of the first ``n`` test images. A compiled
    model is probed through its own module, so the eval-mode call compiles nothing."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in STATS)
    x = images.as_nchw(data.x_test[:n])

    def probe(model):
        m = getattr(model, "_orig_mod", model)
        dev = next(m.parameters()).device
        mu, sd = mean.to(dev), std.to(dev)
        out = torch.cat([m((x[i:i + batch].to(dev).float().div(255) - mu) / sd).float().argmax(-1)
                         for i in range(0, len(x), batch)])
        return out.to(torch.uint8).cpu().numpy()

    return probe


def prediction_snapshots(data: images.ImageData, seed: int, frames: int, keys=("faithful", "repaired", "fixed"),
                         n: int = 500):
    """A ``run_grid`` ``on_step`` factory: the rows ``keys`` of ``seed`` record ``frames`` snapshots of their test
    predictions (``prediction_probe``) evenly over their optimiser steps, step 0 included; other runs record
    nothing. Recording runs in eval mode under no_grad and changes nothing of the training."""

    def factory(row: Row, seed_: int, total: int):
        if row.key not in keys or seed_ != seed or frames < 1:
            return None
        return train.Snapshots(prediction_probe(data, n), train.even_steps(total, frames))

    return factory


def confusion(y: np.ndarray, pred: np.ndarray, k: int = 10) -> np.ndarray:
    """Row-normalised confusion matrix: entry (true t, predicted p) = share of class t's images predicted p."""
    m = np.bincount(y.astype(int) * k + pred.astype(int), minlength=k * k).reshape(k, k).astype(float)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


def training_gif(groups: dict[str, list[UltimusRun]], data: images.ImageData, path, diverge_factor: float | None = None,
                 keys=("faithful", ("repaired", "fixed")), fps: float = 5, dpi: int = 85):
    """Training GIF, one column per run: the first seed's faithful run (trained through) beside the first of the
    repairs in ``keys`` that recorded snapshots (``prediction_snapshots``). Top: the confusion matrix of its test
    predictions at that step, titled with the step and the accuracy; below: a strip with the training loss and the
    learning rate so far, and (with ``diverge_factor``) the guard's threshold."""
    recorded = [[r for k in ((key,) if isinstance(key, str) else key) for r in (groups.get(k) or [])[:1]
                 if r.snapshots is not None and r.snapshots.frames] for key in keys]
    runs = [rs[0] for rs in recorded if rs]
    if not runs:
        raise ValueError("no run recorded snapshots: train with run_grid(..., on_step=prediction_snapshots(...))")
    classes, k = list(data.classes), len(data.classes)
    fig = plt.figure(figsize=(4.9 * len(runs) + 0.6, 6.3), dpi=dpi)
    grid = fig.add_gridspec(2, len(runs), height_ratios=(3.4, 1.2), hspace=0.62, wspace=0.4,
                            left=0.11, right=0.92, top=0.82, bottom=0.13)
    panels, legend = [], []
    for c, r in enumerate(runs):
        snaps, df = r.snapshots, r.history.df
        y = np.asarray(data.y_test[:len(snaps.frames[0])])
        ax = fig.add_subplot(grid[0, c])
        im = ax.imshow(confusion(y, snaps.frames[0], k), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(k), classes, rotation=90, fontsize="x-small")
        ax.set_yticks(range(k), classes if c == 0 else [], fontsize="x-small")
        ax.set_xlabel("predicted", fontsize="small")
        if c == 0:
            ax.set_ylabel("true class", fontsize="small")
        ax.grid(False)
        strip = fig.add_subplot(grid[1, c])
        total = int(snaps.at[-1])
        steps, loss, lr = df.step.to_numpy() + 1, df.train_loss.to_numpy(), df.lr.to_numpy()
        finite = loss[np.isfinite(loss)]
        if diverge_factor is not None and len(finite):  # the threshold stays in view: how far below it is the loss?
            finite = np.append(finite, diverge_factor * loss[0])
            strip.axhline(diverge_factor * loss[0], color="tab:red", ls="--", lw=1, label="guard's threshold")
        loss_line, = strip.plot([], [], color="black", lw=1, label="training loss")
        wide = len(finite) and finite.max() > 10 * finite.min()   # a blow-up (or the threshold): log scale
        strip.set(xlim=(0, max(total, 1)), yscale="log" if wide else "linear")
        strip.set_xlabel("step", fontsize="small")
        strip.yaxis.set_minor_formatter(plt.NullFormatter())   # decades only: a legible strip
        if len(finite):
            strip.set_ylim(finite.min() / 1.5, finite.max() * 1.5) if wide else \
                strip.set_ylim(finite.min() - 0.1 * np.ptp(finite) - 1e-3, finite.max() + 0.1 * np.ptp(finite) + 1e-3)
        strip.set_ylabel("loss", fontsize="small")
        twin = strip.twinx()
        lr_line, = twin.plot([], [], color="tab:orange", lw=1.2, label="learning rate")
        twin.set_ylim(0, lr.max() * 1.15 if len(lr) else 1)
        twin.set_ylabel("learning rate", fontsize="small", color="tab:orange")
        twin.tick_params(axis="y", labelsize="x-small", colors="tab:orange")
        twin.grid(False)
        strip.tick_params(labelsize="x-small")
        cursor = strip.axvline(0, color="0.5", lw=0.8)
        if c == 0:
            legend = strip.get_legend_handles_labels()[0] + [lr_line]
        panels.append((r, y, ax, im, loss_line, lr_line, cursor, steps, loss, lr, total))
    fig.legend(legend, [h.get_label() for h in legend], loc="lower center", ncol=3, fontsize="small", frameon=False)
    fig.suptitle(f"Predictions on the first {len(panels[0][1])} test images through training", fontsize="medium",
                 y=0.985)

    def update(i):
        for r, y, ax, im, loss_line, lr_line, cursor, steps, loss, lr, total in panels:
            j = min(i, len(r.snapshots.frames) - 1)
            pred, at = r.snapshots.frames[j], int(r.snapshots.at[j])
            im.set_data(confusion(y, pred, k))
            seen = steps <= at
            loss_line.set_data(steps[seen], loss[seen])
            lr_line.set_data(steps[seen], lr[seen])
            cursor.set_xdata([at, at])
            d = r.history.diverged_at
            edge = f"\ncrossed the guard's threshold at step {d + 1:,}" if d is not None and at > d else ""
            ax.set_title(f"{r.label}\nstep {at:,} of {total:,} · accuracy {100 * (pred == y).mean():.0f} %{edge}",
                         fontsize="small")

    return animate.write_gif(animate.render(fig, update, max(len(r.snapshots.frames) for r in runs)), path, fps=fps)


# ---------------------------------------------------------------- diagnosis helpers and glue

DESCRIPTIONS = {
    "faithful": "linear convs, attention over the 8 features of X",
    "bn_relu": "BN+ReLU convs",
    "tokens": "attention across the 26×26 spatial tokens, then pooling",
    "softmax_k": "softmax over the K index (the other dimension)",
    "sqrt8_after": "softmax(QᵀK)/√8 (the spec's typo)",
    "fixed_spec": "the spec's shape with BN+ReLU convs, FC on X + u4",
    "fixed_noattn": "fixed-spec without the four Ultimus blocks (control): FC on X",
    "repaired": "depthwise-separable residual convs down to 8×8, attention across 64 tokens, FC on X + u4",
    "repaired_noattn": "repaired without the four Ultimus blocks (control): FC on pooled X",
}


def param_table() -> pd.DataFrame:
    return pd.DataFrame({"params": {v: train.count_params(U.build(v)) for v in U.VARIANTS},
                         "what changes": DESCRIPTIONS}).rename_axis("model")


@torch.no_grad()
def linear_map_residual(model: torch.nn.Module, n: int = 400, seed: int = 0) -> float:
    """Relative least-squares residual of X = W · (average 7×7 patch of the image), fitted on n random images:
    ~1e-7 for the faithful (linear, bias-free) stack, i.e. X is exactly such a map."""
    device = next(model.parameters()).device
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with train.evaluating(model):
        X = model.embed(x.to(device)).double().cpu()
    patches = F.unfold(x, 7).mean(-1).double()  # (n, 147)
    W = torch.linalg.lstsq(patches, X).solution
    return float((patches @ W - X).norm() / X.norm())


def outcome(runs: list[UltimusRun]) -> str:
    """What the guard saw, over seeds: e.g. 'the training loss crossed 20× its first loss in epoch 4 (2 of 2
    seeds); it trained on to the end' or 'it trained all 24 epochs without crossing the threshold'."""
    div = [r for r in runs if r.history.diverged_at is not None]
    n = len(runs)
    if not div:
        e = int(runs[0].curve.epoch.max())
        return f"it trained all {e} epoch{'s' * (e != 1)} without crossing the guard's threshold" + \
            (f" ({n} of {n} seeds)" if n > 1 else "")
    epochs = sorted({r.diverged_epoch for r in div})
    where = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {', '.join(map(str, epochs))}"
    stopped = sum(r.history.stopped_at is not None for r in div)
    then = ("the guard stopped it there" if stopped == len(div) else
            "it trained on to the end, as the original did" if stopped == 0 else f"{stopped} were stopped")
    return f"its training loss crossed the guard's threshold in {where} ({len(div)} of {n} seeds); {then}"


def glue(res, groups: dict[str, list[UltimusRun]], rows: list[Row] = ()) -> None:
    """<key>_final, <key>_max ('mean ± sd' %), <key>_final_mean (float), <key>_outcome, <key>_params per row;
    a row of ``rows`` that did not run gets '—' (and its model's parameter count), so the page still builds."""
    entries = [{"key": r.key, "runs": None, "variant": r.variant} for r in rows if r.key not in groups]
    entries += [{"key": key, "runs": runs} for key, runs in groups.items()]

    def per_row(value, missing="—"):
        return lambda e: missing if e["runs"] is None else value(e["runs"])

    res.glue_rows(entries, "{key}_final", per_row(lambda runs: S.pm(finals(runs))))
    res.glue_rows(entries, "{key}_final_mean", per_row(lambda runs: S.summary(finals(runs))["mean"], float("nan")))
    res.glue_rows(entries, "{key}_max", per_row(lambda runs: S.pm([100 * r.max_acc for r in runs])))
    res.glue_rows(entries, "{key}_outcome", per_row(outcome))
    res.glue_rows(entries, "{key}_params", lambda e: train.count_params(U.build(e["variant"])) if e["runs"] is None
                  else e["runs"][0].params)


def first_epochs(runs: list[UltimusRun], n: int = 3) -> str:
    """Test accuracy in the first n epochs, mean over seeds: '18.74 / 21.64 / 22.28 %'."""
    cols = [[100 * r.curve.test_acc.iloc[i] for r in runs if len(r.curve) > i] for i in range(n)]
    return " / ".join(f"{np.mean(c):.2f}" for c in cols if c) + " %"


def comparable(n_train: int, epochs: int, batch_size: int, peak: float) -> bool:
    """Our faithful row is the original's run only at its data, epochs, batch and peak."""
    return n_train in (0, 50_000) and epochs == 24 and batch_size == 512 and abs(peak - ORIGINAL_MAX_LR) < 1e-9


def faithful_verdict(runs: list[UltimusRun], is_comparable: bool, tol: float = 3.0) -> str:
    """Our unguarded faithful row against the original's final 12.99 %, only when the runs are comparable."""
    if not is_comparable:
        return ("not comparable at this profile (the original trained on all 50,000 images for 24 epochs at batch "
                "512 and peak 0.02477)")
    return S.within_word(S.within(finals(runs), ORIGINAL["final_acc"], tol)) + " of the original's final accuracy"


def _against_baselines(groups: dict[str, list[UltimusRun]]):
    """(runs, baseline runs, the baseline's name) for every ablation that ran: the lower peak against the faithful
    row, every model ablation against the lower-peak row (its baseline, when it ran; else the faithful row)."""
    faithful = groups.get("faithful") or groups.get("guarded")  # trained through: every seed has a final number
    low = groups.get("low_lr")
    for name in ABLATIONS:
        base, base_label = ((faithful, "the faithful run") if name == "low_lr" or low is None
                            else (low, "the lower-peak run"))
        if name in groups and base is not None:
            yield groups[name], base, base_label


def diagnosis_text(groups: dict[str, list[UltimusRun]]) -> str:
    """One sentence per ablation, computed over seeds, against its baseline (``_against_baselines``)."""
    parts = [f"{runs[0].label}: final test accuracy {S.pm(finals(runs))} % against {S.pm(finals(base))} % for "
             f"{base_label} — the change {S.matters(S.differ(finals(base), finals(runs)))}; {outcome(runs)}."
             for runs, base, base_label in _against_baselines(groups)]
    return " ".join(parts) if parts else "No ablation rows were run in this profile."


def causes_summary(groups: dict[str, list[UltimusRun]]) -> str:
    """The diagnosis in one line for the chapter's closing section: each ablation and whether it matters over the
    seeds (against the same baselines as ``diagnosis_text``), e.g. 'lower peak (0.1×) helps by 8.00 points (...);
    BN+ReLU convs makes no difference beyond seed noise (...)'."""
    parts = [f"{runs[0].label} {S.matters(S.differ(finals(base), finals(runs)))}"
             for runs, base, _ in _against_baselines(groups)]
    return "; ".join(parts) if parts else "no ablation rows were run in this profile"


def attention_adds(groups: dict[str, list[UltimusRun]], key: str) -> str:
    """e.g. 'beats the same network without attention by 3.10 points' — the repair against its control."""
    if key not in groups or f"{key}_noattn" not in groups:
        return "—"
    c = S.differ(finals(groups[f"{key}_noattn"]), finals(groups[key]))
    return (f"{S.beats(c, 'the same network without attention')}: {S.pm(finals(groups[key]))} % against "
            f"{S.pm(finals(groups[f'{key}_noattn']))} %")


def target_sentence(groups: dict[str, list[UltimusRun]], key: str, target: float, margin: float | None = None,
                    full: bool = True) -> str:
    """Whether a row meets its full-profile target (mean over seeds; and, with ``margin``, that many points above
    its no-attention control, beyond seed noise)."""
    if key not in groups:
        return "—"
    m = S.summary(finals(groups[key]))
    text = (f"mean {m['mean']:.2f} % over {m['n']} seed{'s' * (m['n'] > 1)}: "
            f"{'meets' if m['mean'] >= target else 'misses'} ≥ {target:g} %")
    if margin is not None and f"{key}_noattn" in groups:
        c = S.differ(finals(groups[f"{key}_noattn"]), finals(groups[key]))
        above = c["diff"] >= margin and c["significant"]
        text += (f"; {c['diff']:+.2f} points against its control: {'meets' if above else 'misses'} "
                 f"≥ {margin:g} points beyond seed noise")
    return text + ("" if full else " (this profile is smaller than the full one the target is set for)")


ABLATIONS = ("low_lr", "bn_relu", "tokens", "softmax_k", "sqrt8_after")


def token_grid(token_pool: int = 1) -> int:
    """Side of the token grid of the "tokens" ablation: the spec's 26×26 conv map, average-pooled by token_pool."""
    return 26 // token_pool


def ablation(name: str, peak: float, batch_size: int, low_lr_factor: float = 0.1, token_pool: int = 1) -> Row:
    """One ablation row. "low_lr" is the faithful run at ``low_lr_factor`` × the peak; the model ablations keep
    that lower peak and change one thing of the model, so that a divergence does not hide what the change does
    (each is compared with the "low_lr" row). ``token_pool`` > 1 pools the "tokens" row's map first (cheaper)."""
    low = replace(original(peak, batch_size), max_lr=peak * low_lr_factor)
    g = token_grid(token_pool)
    variant, label = {"low_lr": ("faithful", f"lower peak ({low_lr_factor:g}×)"),
                      "bn_relu": ("bn_relu", "BN+ReLU convs"),
                      "tokens": ("tokens", f"attention over {g}×{g} spatial tokens"),
                      "softmax_k": ("softmax_k", "softmax over the K index"),
                      "sqrt8_after": ("sqrt8_after", "√8 after softmax (typo)")}[name]
    return Row(name, variant, low, label, model_kw=(("token_pool", token_pool),) if name == "tokens" else ())
