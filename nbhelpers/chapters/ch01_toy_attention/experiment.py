"""Chapter 1 experiment: train Heads / tanh MLP / ReLU MLP on the six playground tasks, over seeds.

The notebook opens with ``start`` and calls ``load`` / ``train_one`` / ``run_grid`` / ``summarise`` / ``glue`` and the
figure functions below; nothing else about the experiment lives in the notebook."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from ... import chapter, runtime
from ... import seeds as seeds_mod
from ... import train as training
from . import data as pg
from . import models
from ...viz import animate, plots

GRID_LIM = 6.5
EXTENT = (-GRID_LIM, GRID_LIM, -GRID_LIM, GRID_LIM)
TEST_SEED = 1        # the held-out test draw of the ceiling study (the splits use 2024; any other seed is independent)
CEILING_TOL = {"spiral": 2.0}   # points below the Bayes ceiling that count as reaching it (others: 1.0)
MAX_PARAMS = 200


def start(namespace: dict, **specs) -> chapter.Opening:
    """The notebook's opening: ``chapter.start`` with this chapter's cross-parameter checks (``_validate``)."""
    return chapter.start(namespace, __name__, validate=_validate, **specs)


def _validate(p: dict) -> None:
    """n_head must divide n_embd, and the ceiling study's widths and slice counts must allow a configuration."""
    models.Heads(n_embd=p["n_embd"], n_head=p["n_head"])  # raises on an incompatible n_embd / n_head
    if not ceiling_grid(p["ceiling_widths"], p["ceiling_heads"], p["ceiling_lrs"], p["ceiling_epochs"]):
        raise ValueError(f"ceiling_widths={p['ceiling_widths']} and ceiling_heads={p['ceiling_heads']} allow no Heads "
                         f"configuration: a slice count must divide a width and keep the model within {MAX_PARAMS} "
                         "parameters")


def load(datasets=pg.DATASETS, n_train: int = 500, n_val: int = 500) -> dict[str, pg.Split]:
    """{dataset: its training and validation draws} (``data.make_split``: default_rng(2024), train first)."""
    return {d: pg.make_split(d, n_train=n_train, n_val=n_val) for d in datasets}


@dataclass(kw_only=True)
class ToyRun(training.Run):
    """One model (``label``: heads, mlp or relu_mlp) trained on one dataset with one seed."""

    dataset: str
    metric: float            # validation accuracy (classification) or MSE (regression)

    @property
    def task(self) -> pg.Task:
        return pg.TASKS[self.dataset]


def tensors(split: pg.Split):
    y_dtype = torch.long if split.task.kind == "classification" else torch.float32
    return (torch.as_tensor(split.x_train), torch.as_tensor(split.y_train, dtype=y_dtype),
            torch.as_tensor(split.x_val), torch.as_tensor(split.y_val, dtype=y_dtype))


def loss_fn(task: pg.Task):
    if task.kind == "classification":
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(-1), y)


def predict(model, x: torch.Tensor, task: pg.Task) -> torch.Tensor:
    """P(class 1) for classification, the regression value otherwise."""
    out = model(x)
    return out.softmax(-1)[:, 1] if task.kind == "classification" else out.squeeze(-1)


def score(model, x, y, task: pg.Task) -> float:
    with torch.no_grad():
        out = model(x)
        if task.kind == "classification":
            return float((out.argmax(-1) == y).float().mean())
        return float(F.mse_loss(out.squeeze(-1), y))


def grid_probe(task: pg.Task, n: int = 90):
    """A Snapshots probe: output surface and every hidden unit's map on an n x n grid (float16 to save memory)."""
    pts = torch.as_tensor(pg.grid(GRID_LIM, n)[2])

    def probe(model):
        hid = {k: v.T.reshape(-1, n, n).numpy().astype(np.float16) for k, v in model.hidden(pts).items()}
        return {"output": predict(model, pts, task).reshape(n, n).numpy().astype(np.float16), "hidden": hid}

    return probe


def scaled_epochs(task: pg.Task, *scales: float) -> int:
    """The task's original epoch count times ``scales`` (multiplied in that order), at least 1."""
    return max(1, round(math.prod((task.epochs, *scales))))


@runtime.threads(1)  # these 20-200-parameter models run fastest, and share a busy machine best, on one CPU thread
def train_one(split: pg.Split, model_name: str, seed: int, epochs: int | None = None, frames: int = 0,
              n_embd: int = 8, n_head: int = 4, batch_size: int = 64) -> ToyRun:
    """Train one model on one split with the original recipe (Adam, the task's lr and epochs, batch 64), on one CPU
    thread; ``frames`` > 0 records that many training-GIF snapshots."""
    task, epochs = split.task, epochs or split.task.epochs
    torch.manual_seed(seed)
    model = models.build(model_name, task.n_out, n_embd=n_embd, n_head=n_head)
    xt, yt, xv, yv = tensors(split)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    lf = loss_fn(task)
    snaps = None
    if frames:
        snaps = training.Snapshots(grid_probe(task), np.linspace(0, epochs * len(loader), frames).round()[1:])
        snaps.record(0, model)
    hist = training.fit(model, torch.optim.Adam(model.parameters(), lr=task.lr), loader, lf, epochs=epochs,
                        evaluate=lambda m: {"val_loss": float(lf(m(xv), yv))}, eval_every=1,
                        on_step=snaps, progress=False)
    return ToyRun(label=model_name, dataset=task.name, seed=seed, model=model, history=hist,
                  metric=score(model, xv, yv, task), params=training.count_params(model), snapshots=snaps)


def run_grid(splits: dict, model_names, seeds, epochs_scale: float = 1.0, progress: bool = True, **kw) -> dict:
    """Every dataset x model x seed (``train_one``); returns {(dataset, model, seed): ToyRun}."""
    jobs = [(d, m, s) for d in splits for m in model_names for s in seeds]

    def one(d, m, s):
        return train_one(splits[d], m, s, scaled_epochs(pg.TASKS[d], epochs_scale), **kw)

    return dict(zip(jobs, training.grid(jobs, one, desc="runs", progress=progress)))


def _digits(kind: str) -> int:
    return 1 if kind == "classification" else 4


def tolerance(dataset: str) -> float:
    """Points below the Bayes ceiling that still count as reaching it."""
    return CEILING_TOL.get(dataset, 1.0)


def summarise(runs: dict, ceilings: dict) -> pd.DataFrame:
    """One row per dataset x model: metric mean ± sd over seeds, params, the Bayes ceiling/floor, failures."""
    rows = []
    keys = sorted({(d, m) for d, m, _ in runs}, key=lambda k: (pg.DATASETS.index(k[0]), models.MODELS.index(k[1])))
    for d, m in keys:
        rs = [r for (dd, mm, _), r in runs.items() if (dd, mm) == (d, m)]
        vals = np.array([r.metric for r in rs])
        task = pg.TASKS[d]
        clf = task.kind == "classification"
        scale = 100.0 if clf else 1.0   # accuracy in %
        rows.append({
            "dataset": d, "task": task.kind, "model_key": m, "model": models.LABELS[m], "params": rs[0].params,
            "metric": "val accuracy %" if clf else "val MSE",
            "mean": scale * vals.mean(), "sd": scale * vals.std(ddof=1) if len(vals) > 1 else np.nan,
            "Bayes": scale * ceilings[d], "seeds": len(vals),
            "diverged": sum(not r.history.ok for r in rs),
        })
    return pd.DataFrame(rows)


def param_counts(n_embd: int = 8, n_head: int = 4) -> dict:
    """Parameter counts of every model for regression (1 output) and classification (2 outputs)."""
    return {f"params_{m}_{kind}": training.count_params(models.build(m, n_out, n_embd=n_embd, n_head=n_head))
            for kind, n_out in (("reg", 1), ("clf", 2)) for m in models.MODELS} \
        | {"n_embd_used": n_embd, "n_head_used": n_head}


def glue(res, table: pd.DataFrame) -> None:
    """Glue the results table for the prose: <dataset>_<model>_pm ('m ± sd'), _sd, _reach (classification) and
    <dataset>_bayes."""
    res.glue_rows(table, "{dataset}_{model_key}_pm", lambda r: mean_sd(r["mean"], r["sd"], _digits(r["task"])))
    res.glue_rows(table, "{dataset}_{model_key}_sd", lambda r: 0.0 if np.isnan(r["sd"]) else float(r["sd"]))
    res.glue_rows(table, "{dataset}_{model_key}_reach", lambda r: reach_word(reach(
        [r["mean"]], r["Bayes"], tolerance(r["dataset"]))) if r["task"] == "classification" else None)
    res.glue_rows(table.drop_duplicates("dataset"), "{dataset}_bayes", lambda r: float(r["Bayes"]))


def compare(runs: dict, dataset: str, a: str, b: str) -> str:
    """Model b against model a on one dataset over seeds (accuracy points): seeds.beats over seeds.differ."""
    vals = {m: [100 * r.metric for (d, mm, _), r in runs.items() if d == dataset and mm == m] for m in (a, b)}
    return seeds_mod.beats(seeds_mod.differ(vals[a], vals[b]), f"the {models.LABELS[a]}")


def _bayes_text(table: pd.DataFrame) -> list:
    return [f"{b:.1f}" if t == "classification" else f"{b:.4f}" for b, t in zip(table.Bayes, table.task)]


def styled(table: pd.DataFrame):
    """The results table as the reader sees it: mean ± sd next to the Bayes ceiling/floor."""
    out = table.assign(**{"result (mean ± sd)": [mean_sd(m, s, _digits(t))
                                                 for m, s, t in zip(table["mean"], table["sd"], table.task)],
                          "Bayes ceiling / floor": _bayes_text(table)})
    cols = ["dataset", "model", "params", "metric", "result (mean ± sd)", "Bayes ceiling / floor", "seeds", "diverged"]
    return out[cols].style.hide(axis="index")


def training_gifs(splits: dict, seed: int, frames: int, folder, epochs_scale: float = 1.0,
                  model_names=("heads", "mlp"), **kw) -> dict:
    """Train one run per dataset x model with frame capture; write <folder>/<dataset>_<model>_{final,hidden}.gif."""
    folder, out = Path(folder), {}
    for d, split in splits.items():
        for m in model_names:
            run = train_one(split, m, seed, epochs=scaled_epochs(split.task, epochs_scale), frames=frames, **kw)
            out[f"{d}_{m}_final"] = output_gif(run, split, folder / f"{d}_{m}_final.gif")
            out[f"{d}_{m}_hidden"] = hidden_gif(run, folder / f"{d}_{m}_hidden.gif")
    return out


def mean_sd(mean: float, sd: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" if np.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


# ---------------------------------------------------------------- figures

def plot_datasets(splits: dict):
    fig, axes = plt.subplots(1, len(splits), figsize=(2.6 * len(splits), 2.9), squeeze=False)
    for ax, (name, s) in zip(axes[0], splits.items()):
        plots.points(ax, s.x_train, s.y_train, classification=s.task.kind == "classification", size=8)
        ax.set(title=f"{name} ({s.task.kind[:5]}.)", xlim=EXTENT[:2], ylim=EXTENT[2:], xticks=[], yticks=[],
               aspect="equal")
    fig.tight_layout()
    return fig


def _datasets_models(runs: dict) -> tuple[list, list]:
    """The datasets and the models of {(dataset, model, seed): run}, each in first-seen order."""
    return list(dict.fromkeys(k[0] for k in runs)), list(dict.fromkeys(k[1] for k in runs))


def plot_losses(runs: dict, seed: int):
    datasets, model_names = _datasets_models(runs)
    fig, axes = plots.panels(len(datasets), 3, size=(4.2, 3.0))
    for ax, d in zip(axes, datasets):
        for i, m in enumerate(model_names):
            df = runs[(d, m, seed)].history.df
            ax.plot(df.step, df.train_loss.rolling(8, min_periods=1).mean(), color=f"C{i}", alpha=0.45, lw=1)
            ax.plot(df.step, df.val_loss, color=f"C{i}", lw=1.6, label=models.LABELS[m])
        ax.set(title=d, xlabel="step", yscale="log")
    for ax in axes[::3]:
        ax.set_ylabel("loss (thin: train, thick: val)")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_surfaces(runs: dict, splits: dict, seed: int, n: int = 120):
    datasets, model_names = _datasets_models(runs)
    xx, yy, pts = pg.grid(GRID_LIM, n)
    pts = torch.as_tensor(pts)
    fig, axes = plt.subplots(len(model_names), len(datasets), figsize=(2.5 * len(datasets), 2.6 * len(model_names)),
                             squeeze=False)
    for c, d in enumerate(datasets):
        s, task = splits[d], pg.TASKS[d]
        clf = task.kind == "classification"
        for r, m in enumerate(model_names):
            run, ax = runs[(d, m, seed)], axes[r, c]
            with training.evaluating(run.model), torch.no_grad():
                z = predict(run.model, pts, task).numpy()
            plots.surface(ax, xx, yy, z, classification=clf, vlim=None if clf else 1.0)
            plots.points(ax, s.x_val, s.y_val, classification=clf, size=4)
            ax.set(xlim=EXTENT[:2], ylim=EXTENT[2:])
            ax.set_title(f"{d}: acc {100 * run.metric:.1f}%" if clf else f"{d}: MSE {run.metric:.3f}", fontsize="small")
            if c == 0:
                ax.set_ylabel(models.LABELS[m], fontsize="small")
    fig.tight_layout()
    return fig


def output_gif(run: ToyRun, split: pg.Split, path, fps: float = 8):
    """Training GIF of the output surface as filled contours (21 bands, ``plots.bands``) with the validation points
    on top, titled with the step."""
    snaps, name = run.snapshots, models.LABELS[run.label]
    loss = run.history.df.set_index("step")["val_loss"]
    titles = [f"{run.dataset} · {name}\nstep {s}" + (f" · val loss {loss.get(s - 1, float('nan')):.3f}" if s else "")
              for s in snaps.at]
    clf = run.task.kind == "classification"
    lo = 0.0 if clf else -1.0  # surface_gif's colour range (P(class 1), or the regression target's ±1)
    surfaces = [plots.bands(f["output"], 21, lo, 1.0) for f in snaps.frames]  # filled contours: small GIFs
    return animate.surface_gif(surfaces, titles, EXTENT, path, split.x_val, split.y_val, classification=clf,
                               fps=fps)


def hidden_gif(run: ToyRun, path, fps: float = 8):
    """Training GIF of every hidden unit's map (one row per layer) as filled contours (15 bands over each layer's
    final range), titled with the step."""
    snaps = run.snapshots
    first = {k: v.astype(np.float32) for k, v in snaps.frames[-1]["hidden"].items()}
    fig, images = plots.unit_grid(first, EXTENT, title="")
    lims = {k: max(float(np.abs(v).max()), 1e-6) for k, v in first.items()}  # unit_grid's colour range per layer

    def update(i):
        for layer, ims in images.items():
            maps = plots.bands(snaps.frames[i]["hidden"][layer], 15, -lims[layer], lims[layer])  # filled contours
            for u, im in enumerate(ims):
                im.set_data(maps[u])
        fig.suptitle(f"{run.dataset} · {models.LABELS[run.label]} hidden units · step {snaps.at[i]}",
                     fontsize="medium")

    return animate.write_gif(animate.render(fig, update, len(snaps.frames)), path, fps=fps)


def plot_attention(run: ToyRun, n: int = 80):
    """Heads' n_head x n_head attention weights at every point of an n x n grid over the plane (Heads runs only);
    returns (figure, weights (n * n, n_head, n_head))."""
    with torch.no_grad():
        att = run.model.attention(torch.as_tensor(pg.grid(GRID_LIM, n)[2])).numpy()
    fig = plots.attention_maps(att.reshape(n, n, *att.shape[-2:]), EXTENT,
                               title=f"{run.dataset}: attention weights of each slice (query) on each slice (key)")
    return fig, att


def attention_sharpness(att: np.ndarray) -> float:
    """Mean over points and queries of 1 - entropy/log(H): 0 = uniform mixing, 1 = one-hot."""
    H = att.shape[-1]
    ent = -(att * np.log(np.clip(att, 1e-12, None))).sum(-1)
    return float(1 - ent.mean() / np.log(H))


# ---------------------------------------------------------------- the original's sizes, and the ceiling study

# The original's Heads size per dataset and its logged final (train, validation) loss — cross-entropy for
# classification, MSE for regression — from its per-dataset commits and printed logs (docs/originals.md). plane
# has no logged number; gaussian's is "about 0.14".
ORIGINAL_SIZE = {"plane": (4, 8), "gaussian": (4, 8), "two_gaussians": (8, 16), "spiral": (8, 16),
                 "circle": (2, 4), "xor": (4, 16)}          # dataset -> (n_head, n_embd)
ORIGINAL_LOSS = {"gaussian": (None, 0.14), "two_gaussians": (0.236, 0.251), "spiral": (0.046, 0.050),
                 "circle": (0.047, 0.140), "xor": (0.037, 0.068)}


def heads_params(n_embd: int, n_head: int, n_out: int = 2) -> int:
    """Heads' parameter count, from a model built on the meta device (no random initial weights are drawn)."""
    with torch.device("meta"):
        return training.count_params(models.Heads(2, n_embd, n_head, n_out))


class StackedHeads(torch.nn.Module):
    """S independent Heads models evaluated as one batched computation (one per seed).

    Built from S ordinary ``models.Heads`` so each member starts exactly as ``train_one`` would start it. Adam is
    element-wise and the loss is the sum of the members' losses, so training the stack is training each member on
    its own — only faster on a CPU, where these 20-200-parameter models are all overhead."""

    def __init__(self, members):
        super().__init__()
        self.n_head, self.head_size = members[0].n_head, members[0].head_size
        for name, part in (("we", "embed.weight"), ("be", "embed.bias"), ("wo", "out.weight"), ("bo", "out.bias")):
            setattr(self, name, torch.nn.Parameter(torch.stack([m.get_parameter(part).detach() for m in members])))

    def forward(self, x):  # x: (S, B, 2) -> (S, B, out)
        e = torch.baddbmm(self.be[:, None], x, self.we.transpose(1, 2))
        S, B, _ = e.shape
        t = e.view(S * B, self.n_head, self.head_size)
        att = torch.softmax(t @ t.transpose(1, 2) / math.sqrt(self.head_size), dim=-1)
        mixed = (att @ t).view(S, B, -1)
        return torch.baddbmm(self.bo[:, None], mixed, self.wo.transpose(1, 2))


def _member_losses(out, y, task: pg.Task):
    """Per-member mean loss: out (S, B, n_out), y (S, B) -> (S,)."""
    S, B = y.shape
    if task.kind == "classification":
        return F.cross_entropy(out.reshape(S * B, -1), y.reshape(-1), reduction="none").view(S, B).mean(1)
    return ((out.squeeze(-1) - y) ** 2).mean(1)


def original_val_loss(model_out, y, task: pg.Task, batch_size: int = 64) -> np.ndarray:
    """The loss as the original logged it: the mean over validation batches of 64 of each batch's mean loss.
    model_out (S, N, n_out), y (N,) -> (S,)."""
    S, N = model_out.shape[:2]
    yy = y.expand(S, N)
    parts = [_member_losses(model_out[:, i:i + batch_size], yy[:, i:i + batch_size], task)
             for i in range(0, N, batch_size)]
    return torch.stack(parts, 1).mean(1).numpy()


@runtime.threads(1)  # see train_one
def train_heads_stack(split: pg.Split, seeds, n_embd: int, n_head: int, lr: float | None = None,
                      epochs: int | None = None, batch_size: int = 64, test: tuple | None = None) -> dict:
    """Train Heads(n_embd, n_head) once per seed on one split (the original recipe unless lr / epochs are given),
    all seeds at once, on one CPU thread. Returns per-seed arrays: ``metric`` (val accuracy or MSE), ``val_loss``
    (as the original logged it), ``train_loss`` (same, on the training set) and, with ``test`` = (x, y),
    ``test_metric``. Each seed's initialisation and batch order are those of ``train_one(split, "heads", seed)``."""
    task = split.task
    lr, epochs = lr or task.lr, epochs or task.epochs
    members, gens = [], []
    for s in seeds:
        torch.manual_seed(s)
        members.append(models.Heads(2, n_embd, n_head, task.n_out))
        gens.append(torch.Generator().manual_seed(s))
    model = StackedHeads(members)
    xt, yt, xv, yv = tensors(split)
    n, S = len(xt), len(members)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.stack([_epoch_order(n, g) for g in gens])  # (S, n)
        for i in range(0, n, batch_size):
            idx = order[:, i:i + batch_size]
            loss = _member_losses(model(xt[idx]), yt[idx], task).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = {"params": heads_params(n_embd, n_head, task.n_out)}
    with torch.no_grad():
        for name, x, y in (("val", xv, yv), ("train", xt, yt)):
            o = model(x.expand(S, *x.shape))
            out[f"{name}_loss"] = original_val_loss(o, y, task, batch_size)
            if name == "val":
                out["metric"] = _stack_metric(o, y, task)
        if test is not None:
            xs, ys = torch.as_tensor(test[0]), torch.as_tensor(test[1], dtype=yt.dtype)
            out["test_metric"] = _stack_metric(model(xs.expand(S, *xs.shape)), ys, task)
    return out


def _epoch_order(n: int, gen: torch.Generator) -> torch.Tensor:
    """One epoch of ``DataLoader(shuffle=True, generator=gen)``: the loader's iterator draws a base seed, its
    sampler a permutation and then (when the epoch is exhausted) a second, empty-sliced one — all advance ``gen``."""
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    order = torch.randperm(n, generator=gen)
    torch.randperm(n, generator=gen)
    return order


def _stack_metric(o, y, task: pg.Task) -> np.ndarray:
    if task.kind == "classification":
        return (o.argmax(-1) == y).float().mean(1).numpy()
    return ((o.squeeze(-1) - y) ** 2).mean(1).numpy()


def size_label(n_head: int, n_embd: int) -> str:
    """The original's naming: heads<H>_e<E>."""
    return f"heads{n_head}_e{n_embd}"


def logged_verdict(values, logged: float | None) -> str:
    """Is the original's single logged loss a plausible draw from our seeds? Within 2 sd of our mean (seeds.within
    with tol = 2 sd); the word and its numbers come from the values."""
    s = seeds_mod.summary(values)
    if logged is None:
        return "no logged number"
    if s["n"] < 2:
        return "cannot be judged with one seed"
    w = seeds_mod.within(values, logged, tol=2 * s["sd"])
    word = "consistent with our seeds" if w["ok"] else f"ours {'lower' if w['diff'] < 0 else 'higher'}"
    return f"{word} (ours − logged {w['diff']:+.3f}; 2 sd {w['tol']:.3f})"


def reach(values_pct, ceiling_pct: float, tol: float) -> dict:
    """Does the mean of ``values_pct`` come within ``tol`` points of the Bayes ceiling? (seeds.within; a mean above
    the ceiling, possible on a finite set, counts as reaching it.)"""
    gap = -seeds_mod.within(values_pct, ceiling_pct, tol)["diff"]
    return {"gap": gap, "ok": bool(np.isfinite(gap) and gap <= tol), "tol": tol}


def reach_word(r: dict) -> str:
    if not np.isfinite(r["gap"]):
        return "—"
    where = (f"{r['gap']:.2f} points below it" if r["gap"] >= 0
             else f"{-r['gap']:.2f} points above it, as a finite sample can be")
    return f"{'reaches the ceiling' if r['ok'] else 'falls short'} ({where}; target ≤ {r['tol']:g})"


def faithful_sizes(splits: dict, seeds, ceilings: dict, epochs_scale: float = 1.0) -> pd.DataFrame:
    """Heads at the original's own size per dataset, the original recipe, over seeds: our validation loss (as the
    original logged it) next to the original's logged one, accuracy / MSE next to the Bayes ceiling / floor."""
    rows = []
    for d, split in splits.items():
        task, (h, e) = split.task, ORIGINAL_SIZE[d]
        r = train_heads_stack(split, list(seeds), e, h, epochs=scaled_epochs(task, epochs_scale))
        logged_train, logged_val = ORIGINAL_LOSS.get(d, (None, None))
        clf = task.kind == "classification"
        scale = 100.0 if clf else 1.0
        metric = scale * r["metric"]
        rows.append({
            "dataset": d, "task": task.kind, "size": size_label(h, e), "params": r["params"],
            "loss": "cross-entropy" if clf else "MSE",
            "val loss (ours)": seeds_mod.pm(r["val_loss"], 3), "val loss (original)": logged_val,
            "verdict": logged_verdict(r["val_loss"], logged_val),
            "train loss (ours)": seeds_mod.pm(r["train_loss"], 3), "train loss (original)": logged_train,
            "metric": "val accuracy %" if clf else "val MSE",
            "result": seeds_mod.pm(metric, _digits(task.kind)), "Bayes": scale * ceilings[d],
            "reach": reach_word(reach(metric, scale * ceilings[d], tolerance(d))) if clf else "",
            "loss_mean": float(np.mean(r["val_loss"])), "metric_mean": float(np.mean(metric)),
            "metric_sd": seeds_mod.summary(metric)["sd"], "seeds": len(r["metric"]),
            "failed": int((~np.isfinite(r["val_loss"])).sum()),
        })
    return pd.DataFrame(rows)


def glue_faithful(res, table: pd.DataFrame) -> None:
    """<dataset>_orig_size, _orig_params, _orig_loss_pm, _orig_verdict, _orig_pm, _orig_reach (classification), and
    the counts the prose needs."""
    for key, value in (("size", "size"), ("params", lambda r: int(r["params"])), ("loss_pm", "val loss (ours)"),
                       ("verdict", "verdict"), ("pm", "result"),
                       ("reach", lambda r: r["reach"] if r["task"] == "classification" else None)):
        res.glue_rows(table, f"{{dataset}}_orig_{key}", value)
    logged = table[table["val loss (original)"].notna()]
    res.glue("orig_consistent", int(logged.verdict.str.startswith("consistent").sum()))
    res.glue("orig_logged", len(logged))
    clf = table[table.task == "classification"]
    res.glue("orig_reached", ", ".join(clf.dataset[clf.reach.str.startswith("reaches")]) or "none")
    res.glue("orig_short", ", ".join(clf.dataset[clf.reach.str.startswith("falls")]) or "none")


def styled_faithful(table: pd.DataFrame):
    cols = ["dataset", "size", "params", "loss", "val loss (ours)", "val loss (original)", "verdict",
            "metric", "result", "Bayes", "reach", "seeds"]
    out = table.assign(**{"val loss (original)": [("—" if v is None or v != v else f"{v:.3f}")
                                                  for v in table["val loss (original)"]], "Bayes": _bayes_text(table)})
    return out[cols].style.hide(axis="index")


@dataclass(frozen=True)
class HeadsConfig:
    n_embd: int
    n_head: int
    lr: float
    epochs_mult: float   # multiplies the dataset's original epoch count

    @property
    def label(self) -> str:
        return f"{size_label(self.n_head, self.n_embd)} · lr {self.lr:g} · epochs ×{self.epochs_mult:g}"


def ceiling_grid(widths, heads, lrs, epoch_mults, max_params: int = MAX_PARAMS) -> list[HeadsConfig]:
    """Every width x heads x lr x epochs combination with n_head dividing n_embd and at most max_params parameters
    (classification)."""
    return [HeadsConfig(e, h, float(lr), float(m)) for e in widths for h in heads for lr in lrs for m in epoch_mults
            if h <= e and e % h == 0 and heads_params(e, h) <= max_params]


def ceiling_study(splits: dict, seeds, configs, epochs_scale: float = 1.0, n_test: int = 5000,
                  progress: bool = True) -> pd.DataFrame:
    """Heads over a grid of configurations x classification datasets x seeds: validation accuracy (the original's
    500 points, used to choose) and accuracy on an independent held-out draw of n_test points (used to judge)."""
    jobs = [(d, c) for d in splits if splits[d].task.kind == "classification" for c in configs]
    tests = {d: pg.generate(d, n_test, splits[d].task.noise, TEST_SEED) for d in dict.fromkeys(d for d, _ in jobs)}

    def one(d: str, c: HeadsConfig) -> dict:
        epochs = scaled_epochs(splits[d].task, c.epochs_mult, epochs_scale)
        r = train_heads_stack(splits[d], list(seeds), c.n_embd, c.n_head, lr=c.lr, epochs=epochs, test=tests[d])
        return {"dataset": d, "config": c.label, "n_embd": c.n_embd, "n_head": c.n_head, "lr": c.lr,
                "epochs": epochs, "params": r["params"], "val": list(100 * r["metric"].astype(float)),
                "test": list(100 * r["test_metric"].astype(float))}

    return pd.DataFrame(training.grid(jobs, one, desc="ceiling study", progress=progress))


def ceiling_pivot(study: pd.DataFrame) -> pd.DataFrame:
    """Configs x datasets: validation accuracy % mean ± sd over seeds."""
    t = study.assign(cell=[seeds_mod.pm(v, 1) for v in study.val])
    out = t.pivot_table(index=["config", "params"], columns="dataset", values="cell", aggfunc="first", sort=False)
    return out[[d for d in dict.fromkeys(study.dataset)]].reset_index()


def best_configs(study: pd.DataFrame, ceilings: dict, max_params: int = MAX_PARAMS) -> pd.DataFrame:
    """Per dataset, the configuration with the best mean validation accuracy (≤ max_params), judged on the
    held-out test draw against the Bayes ceiling with the dataset's tolerance."""
    rows = []
    for d, g in study[study.params <= max_params].groupby("dataset", sort=False):
        best = g.loc[g.val.map(np.mean).idxmax()]
        ceiling, tol = 100 * ceilings[d], tolerance(d)
        r = reach(best.test, ceiling, tol)
        rows.append({"dataset": d, "best config": best.config, "params": int(best.params),
                     "val accuracy %": seeds_mod.pm(best.val, 1), "test accuracy %": seeds_mod.pm(best.test, 1),
                     "Bayes": round(ceiling, 1), "gap": r["gap"], "target": tol, "verdict": reach_word(r),
                     "ok": r["ok"], "seeds": len(best.test)})
    return pd.DataFrame(rows)


def glue_best(res, best: pd.DataFrame) -> None:
    """<dataset>_best_config, _best_test_pm, _best_verdict, _best_gap, and the counts the prose needs."""
    for key, value in (("config", "best config"), ("test_pm", "test accuracy %"), ("verdict", "verdict"),
                       ("gap", lambda r: float(r["gap"]))):
        res.glue_rows(best, f"{{dataset}}_best_{key}", value)
    res.glue("ceiling_met", int(best.ok.sum()))
    res.glue("ceiling_total", len(best))
    res.glue("ceiling_max_params", int(best.params.max()) if len(best) else 0)
    res.glue("ceiling_target_word", "meet" if len(best) and best.ok.all() else "do not meet")
