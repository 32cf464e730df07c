"""Chapter 1 experiment: train Heads / tanh MLP / ReLU MLP on the six playground tasks, over seeds.

The notebook calls ``train_one`` / ``run_grid`` / ``summarise`` and the figure functions below; nothing else
about the experiment lives in the notebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from .. import train as training
from ..data import playground as pg
from ..models import toy as models
from ..viz import animate, plots

GRID_LIM = 6.5
EXTENT = (-GRID_LIM, GRID_LIM, -GRID_LIM, GRID_LIM)


@dataclass
class ToyRun:
    dataset: str
    model_name: str
    seed: int
    model: torch.nn.Module
    history: training.History
    metric: float            # validation accuracy (classification) or MSE (regression)
    params: int
    snapshots: training.Snapshots | None = None
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> pg.Task:
        return pg.TASKS[self.dataset]


def tensors(split: dict):
    task = split["task"]
    y_dtype = torch.long if task.kind == "classification" else torch.float32
    return (torch.as_tensor(split["x_train"]), torch.as_tensor(split["y_train"], dtype=y_dtype),
            torch.as_tensor(split["x_val"]), torch.as_tensor(split["y_val"], dtype=y_dtype))


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


def grid_probe(task: pg.Task, n: int = 60):
    """A Snapshots probe: output surface and every hidden unit's map on an n x n grid (float16 to save memory)."""
    xx, yy, pts = pg.grid(GRID_LIM, n)
    pts = torch.as_tensor(pts)

    def probe(model):
        hid = {k: v.T.reshape(-1, n, n).numpy().astype(np.float16) for k, v in model.hidden(pts).items()}
        return {"output": predict(model, pts, task).reshape(n, n).numpy().astype(np.float16), "hidden": hid}

    return probe


def train_one(split: dict, model_name: str, seed: int, epochs: int | None = None, frames: int = 0,
              n_embd: int = 8, n_head: int = 4, batch_size: int = 64) -> ToyRun:
    """Train one model on one split with the original recipe (Adam, the task's lr and epochs, batch 64)."""
    task = split["task"]
    epochs = epochs or task.epochs
    torch.manual_seed(seed)
    model = models.build(model_name, task.n_out, n_embd=n_embd, n_head=n_head)
    xt, yt, xv, yv = tensors(split)
    loader = DataLoader(TensorDataset(xt, yt), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    lf = loss_fn(task)
    snaps = None
    if frames:
        total = epochs * len(loader)
        snaps = training.Snapshots(grid_probe(task), np.linspace(0, total, frames).round()[1:])
        snaps.record(0, model)
    hist = training.fit(model, torch.optim.Adam(model.parameters(), lr=task.lr), loader, lf, epochs=epochs,
                        evaluate=lambda m: {"val_loss": float(lf(m(xv), yv))}, eval_every=1,
                        on_step=snaps, progress=False)
    return ToyRun(split["task"].name, model_name, seed, model, hist, score(model, xv, yv, task),
                  models.count_params(model), snaps)


def run_grid(splits: dict, model_names, seeds, epochs_scale: float = 1.0, progress: bool = True, **kw):
    """Every dataset x model x seed; returns {(dataset, model, seed): ToyRun}."""
    from tqdm.std import tqdm

    jobs = [(d, m, s) for d in splits for m in model_names for s in seeds]
    runs = {}
    for d, m, s in tqdm(jobs, desc="runs", disable=not progress, mininterval=5):
        epochs = max(1, round(pg.TASKS[d].epochs * epochs_scale))
        runs[(d, m, s)] = train_one(splits[d], m, s, epochs=epochs, **kw)
    return runs


def summarise(runs: dict, ceilings: dict) -> pd.DataFrame:
    """One row per dataset x model: metric mean ± sd over seeds, params, the Bayes ceiling/floor, failures."""
    rows = []
    keys = sorted({(d, m) for d, m, _ in runs}, key=lambda k: (pg.DATASETS.index(k[0]), models.MODELS.index(k[1])))
    for d, m in keys:
        rs = [r for (dd, mm, _), r in runs.items() if (dd, mm) == (d, m)]
        vals = np.array([r.metric for r in rs])
        task = pg.TASKS[d]
        clf = task.kind == "classification"
        scale = 100 if clf else 1
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
    return {f"params_{m}_{kind}": models.count_params(models.build(m, n_out, n_embd=n_embd, n_head=n_head))
            for kind, n_out in (("reg", 1), ("clf", 2)) for m in models.MODELS} | {"n_head_used": n_head}


def glue_results(res, table: pd.DataFrame) -> None:
    """Glue every row of the results table for the prose: <dataset>_<model>_pm ('m ± sd'), _sd, and <dataset>_bayes."""
    for _, row in table.iterrows():
        key = f"{row.dataset}_{row.model_key}"
        res.glue(f"{key}_pm", mean_sd(row["mean"], row["sd"], 1 if row.task == "classification" else 4))
        res.glue(f"{key}_sd", float(row["sd"]) if not np.isnan(row["sd"]) else 0.0)
    for d, bayes in table.groupby("dataset", sort=False)["Bayes"].first().items():
        res.glue(f"{d}_bayes", float(bayes))


def styled(table: pd.DataFrame):
    """The results table as the reader sees it: mean ± sd next to the Bayes ceiling/floor."""
    out = table.assign(**{"result (mean ± sd)": [
        mean_sd(m, s, 1 if t == "classification" else 4) for m, s, t in zip(table["mean"], table["sd"], table.task)]})
    out["Bayes ceiling / floor"] = [f"{b:.1f}" if t == "classification" else f"{b:.4f}"
                                    for b, t in zip(out.Bayes, out.task)]
    cols = ["dataset", "model", "params", "metric", "result (mean ± sd)", "Bayes ceiling / floor", "seeds", "diverged"]
    return out[cols].style.hide(axis="index")


def training_gifs(splits_all: dict, seed: int, frames: int, folder, epochs_scale: float = 1.0,
                  model_names=("heads", "mlp"), **kw) -> dict:
    """Train one run per dataset x model with frame capture; write <folder>/<dataset>_<model>_{final,hidden}.gif."""
    from pathlib import Path

    folder, out = Path(folder), {}
    for d, split in splits_all.items():
        for m in model_names:
            epochs = max(1, round(pg.TASKS[d].epochs * epochs_scale))
            run = train_one(split, m, seed, epochs=epochs, frames=frames, **kw)
            out[f"{d}_{m}_final"] = output_gif(run, split, folder / f"{d}_{m}_final.gif")
            out[f"{d}_{m}_hidden"] = hidden_gif(run, folder / f"{d}_{m}_hidden.gif")
    return out


def mean_sd(mean: float, sd: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" if np.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


# ---------------------------------------------------------------- figures

def plot_datasets(splits: dict):
    fig, axes = plt.subplots(1, len(splits), figsize=(2.6 * len(splits), 2.9), squeeze=False)
    for ax, (name, s) in zip(axes[0], splits.items()):
        clf = s["task"].kind == "classification"
        plots.points(ax, s["x_train"], s["y_train"], classification=clf, size=8)
        ax.set(title=f"{name} ({s['task'].kind[:5]}.)", xlim=EXTENT[:2], ylim=EXTENT[2:], xticks=[], yticks=[],
               aspect="equal")
    fig.tight_layout()
    return fig


def plot_losses(runs: dict, seed: int):
    datasets = list(dict.fromkeys(d for d, _, _ in runs))
    model_names = list(dict.fromkeys(m for _, m, _ in runs))
    fig, axes = plots.panels(len(datasets), 3, size=(4.2, 3.0))
    for ax, d in zip(axes, datasets):
        for i, m in enumerate(model_names):
            df = runs[(d, m, seed)].history.df
            color = f"C{i}"
            ax.plot(df.step, df.train_loss.rolling(8, min_periods=1).mean(), color=color, alpha=0.45, lw=1)
            ax.plot(df.step, df.val_loss, color=color, lw=1.6, label=models.LABELS[m])
        ax.set(title=d, xlabel="step", yscale="log")
    for ax in axes[::3]:
        ax.set_ylabel("loss (thin: train, thick: val)")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_surfaces(runs: dict, splits: dict, seed: int, n: int = 120):
    datasets = list(dict.fromkeys(d for d, _, _ in runs))
    model_names = list(dict.fromkeys(m for _, m, _ in runs))
    xx, yy, pts = pg.grid(GRID_LIM, n)
    pts = torch.as_tensor(pts)
    fig, axes = plt.subplots(len(model_names), len(datasets), figsize=(2.5 * len(datasets), 2.6 * len(model_names)),
                             squeeze=False)
    for c, d in enumerate(datasets):
        s, task = splits[d], pg.TASKS[d]
        clf = task.kind == "classification"
        for r, m in enumerate(model_names):
            run, ax = runs[(d, m, seed)], axes[r, c]
            with torch.no_grad():
                z = predict(run.model.eval(), pts, task).numpy()
            plots.surface(ax, xx, yy, z, classification=clf, vlim=None if clf else 1.0)
            plots.points(ax, s["x_val"], s["y_val"], classification=clf, size=4)
            unit = "acc" if clf else "MSE"
            value = f"{100 * run.metric:.1f}%" if clf else f"{run.metric:.3f}"
            ax.set(xlim=EXTENT[:2], ylim=EXTENT[2:])
            ax.set_title(f"{d}: {unit} {value}", fontsize="small")
            if c == 0:
                ax.set_ylabel(models.LABELS[m], fontsize="small")
    fig.tight_layout()
    return fig


def output_gif(run: ToyRun, split: dict, path, fps: float = 8):
    """Training GIF of the output surface with the validation points on top, titled with the step."""
    snaps, name = run.snapshots, models.LABELS[run.model_name]
    loss = run.history.df.set_index("step")["val_loss"]
    titles = [f"{run.dataset} · {name}\nstep {s}" + (f" · val loss {loss.get(s - 1, float('nan')):.3f}" if s else "")
              for s in snaps.at]
    return animate.surface_gif([f["output"] for f in snaps.frames], titles, EXTENT, path, split["x_val"],
                               split["y_val"], classification=run.task.kind == "classification", fps=fps)


def hidden_gif(run: ToyRun, path, fps: float = 8):
    """Training GIF of every hidden unit's map (one row per layer), titled with the step."""
    snaps = run.snapshots
    first = {k: v.astype(np.float32) for k, v in snaps.frames[-1]["hidden"].items()}
    fig, images = plots.unit_grid(first, EXTENT, title="")

    def update(i):
        for layer, ims in images.items():
            for u, im in enumerate(ims):
                im.set_data(snaps.frames[i]["hidden"][layer][u].astype(np.float32))
        fig.suptitle(f"{run.dataset} · {models.LABELS[run.model_name]} hidden units · step {snaps.at[i]}",
                     fontsize="medium")

    return animate.write_gif(animate.render(fig, update, len(snaps.frames)), path, fps=fps)


def attention_figure(run: ToyRun, n: int = 80):
    """Heads' n_head x n_head attention weights at every point of the plane (Heads runs only)."""
    xx, yy, pts = pg.grid(GRID_LIM, n)
    with torch.no_grad():
        att = run.model.attention(torch.as_tensor(pts)).numpy()
    H = att.shape[-1]
    fig = plots.attention_maps(att.reshape(n, n, H, H), EXTENT,
                               title=f"{run.dataset}: attention weights of each slice (query) on each slice (key)")
    return fig, att


def attention_sharpness(att: np.ndarray) -> float:
    """Mean over points and queries of 1 - entropy/log(H): 0 = uniform mixing, 1 = one-hot."""
    H = att.shape[-1]
    ent = -(att * np.log(np.clip(att, 1e-12, None))).sum(-1)
    return float(1 - ent.mean() / np.log(H))
