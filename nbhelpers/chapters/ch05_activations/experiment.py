"""Chapter 5 experiment: the two-moons MLP with every activation variant, over seeds.

The notebook calls ``start`` / ``load`` / ``run_grid`` / ``summarise`` / ``glue`` and the figure functions below;
nothing else about the experiment lives in the notebook. The recipe is the original's: all training points in one
batch, BCE-with-logits, AdamW (lr 0.01, default weight decay 0.01), a fixed number of steps; ``train.fit``'s guard
stops a run whose loss becomes NaN/inf and records the step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch.nn import functional as F

from ... import chapter, runtime, seeds, train
from . import data as moons
from . import models
from ...viz import animate, plots

LAYERS = ("fc1", "fc2", "fc3")


def start(namespace: dict, **specs) -> chapter.Opening:
    """The notebook's opening (``chapter.start``): check the parameters ``specs`` and that the held-out moons are
    another draw than the training moons, then seed, print the run header and start the chapter's ``Results``."""
    return chapter.start(namespace, __name__, validate=_validate, **specs)


def _validate(p: dict) -> None:
    """The held-out moons must be another draw than the training moons."""
    if p["heldout_seed"] == p["data_seed"]:
        raise ValueError(f"parameter heldout_seed={p['heldout_seed']!r} is not allowed: it must differ from data_seed "
                         f"({p['data_seed']}), or the held-out moons repeat the training points")


def load(n: int = 100, noise: float = 0.1, data_seed: int = 42, heldout_n: int = 1000, heldout_seed: int = 1,
         grid_n: int = 200) -> moons.Moons:
    """Training moons (the original's), an independent held-out draw, and the plot grid spanning the data ±0.5."""
    _validate({"heldout_seed": heldout_seed, "data_seed": data_seed})
    X, y = moons.make(n, noise, data_seed)
    return moons.Moons(X, y, *moons.make(heldout_n, noise, heldout_seed), *moons.grid(X, grid_n))


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Share of points on the right side of logit 0; a NaN logit counts as wrong."""
    logits = logits.squeeze(-1)
    return float((((logits > 0).float() == y) & ~torch.isnan(logits)).float().mean())


def count_regions(labels: np.ndarray) -> int:
    """Connected areas (4-neighbour) of equal label on a 2-D grid of integer labels."""
    labels = np.asarray(labels)
    ny, nx = labels.shape
    idx = np.arange(ny * nx).reshape(ny, nx)
    right, down = labels[:, :-1] == labels[:, 1:], labels[:-1] == labels[1:]
    rows = np.concatenate([idx[:, :-1][right], idx[:-1][down]])
    cols = np.concatenate([idx[:, 1:][right], idx[1:][down]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(ny * nx, ny * nx))
    return int(connected_components(graph, directed=False)[0])


def arrangement_bound(lines: int) -> int:
    """Most regions that ``lines`` lines can cut the plane into: 1 + n + n(n-1)/2."""
    return 1 + lines + lines * (lines - 1) // 2


def pattern_ids(pattern: np.ndarray) -> np.ndarray:
    """One integer per row of a (points, k) pattern array: equal rows get equal ids (a hash of the pattern)."""
    return np.unique(np.asarray(pattern), axis=0, return_inverse=True)[1].ravel()


@dataclass(frozen=True)
class GridMaps:
    """A model on the plot grid, each (grid_n, grid_n)."""

    prob: np.ndarray            # P(class 1)
    cls: np.ndarray             # predicted class; 2 where the output is NaN
    regions: np.ndarray | None  # linear-region ids (None for a variant that is not piecewise linear)


def grid_maps(model: models.MoonsNet, data: moons.Moons, device="cpu") -> GridMaps:
    """The model's P(class 1), predicted class and linear-region ids on the plot grid."""
    shape, pts = data.xx.shape, torch.as_tensor(data.grid, device=device)
    with train.evaluating(model), torch.no_grad():
        logits = model(pts).squeeze(-1).cpu().numpy()
        pattern = model.pattern(pts)
    cls = np.where(np.isnan(logits), 2, logits > 0).astype(np.int64)
    with np.errstate(over="ignore"):
        prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    regions = None if pattern is None else pattern_ids(pattern.cpu().numpy()).reshape(shape)
    return GridMaps(prob.reshape(shape), cls.reshape(shape), regions)


def expressivity(model: models.MoonsNet, data: moons.Moons, device="cpu") -> tuple[int | None, int]:
    """(linear regions, decision regions) on the plot grid.

    Linear regions: connected areas where the activation pattern (``model.pattern``) is constant, i.e. where a
    piecewise-linear variant is one affine map (sgn: one constant). None for smooth variants. Decision regions:
    connected areas of each predicted class. Both are counts at grid resolution (lower bounds: a region thinner than
    a grid cell is missed).
    """
    maps = grid_maps(model, data, device)
    return None if maps.regions is None else count_regions(maps.regions), count_regions(maps.cls)


@dataclass(kw_only=True)
class MoonsRun(train.Run):
    """One training run; ``label`` is its variant (a key of ``models.VARIANTS``)."""

    steps: int                       # steps asked for
    steps_to_fit: int | None         # optimiser steps until the training accuracy first reached 100 %
    train_acc: float                 # final, on the training points
    train_loss: float
    heldout_acc: float
    grad_norms: np.ndarray           # (steps taken, 3): gradient norm of fc1, fc2, fc3 at each step
    linear_regions: int | None
    decision_regions: int

    @property
    def diverged(self) -> bool:
        return not self.history.ok

    @property
    def fitted(self) -> bool:
        """Ends the run at 100 % training accuracy (a run that reached it and lost it again does not count)."""
        return not self.diverged and self.train_acc == 1.0

    @property
    def outcome(self) -> str:
        if self.diverged:
            return f"diverged at step {self.history.stopped_at}"
        if self.steps_to_fit is None:
            return "never"
        return f"{self.steps_to_fit}" + ("" if self.fitted else " (lost later)")


def _group(pairs) -> dict:
    """{key: [its items]} from (key, item) pairs, the keys in the order they first come."""
    out: dict = {}
    for key, item in pairs:
        out.setdefault(key, []).append(item)
    return out


def by_variant(runs: dict) -> dict:
    """{variant: [its runs, one per seed]} from ``run_grid``'s {(variant, seed): MoonsRun}."""
    return _group((v, r) for (v, _), r in runs.items())


def heldout_by_variant(runs: dict) -> dict:
    """{variant: [held-out accuracy in % of each seed]}."""
    return {v: [100 * r.heldout_acc for r in rs] for v, rs in by_variant(runs).items()}


def _grad_norms(model) -> torch.Tensor:
    grads = ([p.grad.reshape(-1) for p in getattr(model, name).parameters()] for name in LAYERS)
    return torch.stack([torch.linalg.vector_norm(torch.cat(g)) for g in grads])


@runtime.threads(1)  # 100 points x 10 units: one CPU thread is fastest
def train_one(data: moons.Moons, variant: str, seed: int, steps: int = 1000, lr: float = 0.01, frames: int = 0,
              device="cpu") -> MoonsRun:
    """One run of the original recipe; ``frames`` > 1 records that many surfaces (steps 0 ... steps) for a GIF."""
    model = models.build(variant, seed).to(device)
    X, y = torch.as_tensor(data.X, device=device), torch.as_tensor(data.y, device=device)
    snaps, pts = None, torch.as_tensor(data.grid, device=device)
    if frames > 1:  # the probe: P(class 1) on the plot grid (float16 to save memory)
        snaps = train.Snapshots(lambda m: torch.sigmoid(m(pts)).reshape(data.xx.shape).cpu().numpy().astype(np.float16),
                                np.linspace(0, steps, frames).round()[1:])
        snaps.record(0, model)
    norms = []

    def on_step(step, m):
        norms.append(_grad_norms(m))
        if snaps is not None:
            snaps(step, m)

    hist = train.fit(model, train.optimizer("adamw", model.parameters(), lr=lr), [(X, y)], loss_fn, epochs=steps,
                     evaluate=lambda m: {"train_acc": accuracy(m(X), y)}, eval_every=1, on_step=on_step,
                     device=device, progress=False)
    if snaps is not None and not hist.ok:
        snaps.record(hist.stopped_at, model)  # the state the guard stopped on
    # a row's train_acc is measured after that row's optimiser step: first row at 100 % -> its step + 1 steps
    df = hist.df
    hit = df.step[df.train_acc == 1.0] if "train_acc" in df else df.step.iloc[:0]
    with train.evaluating(model), torch.no_grad():
        logits = model(X)
        loss, train_acc = float(loss_fn(logits, y)), accuracy(logits, y)
        heldout = accuracy(model(torch.as_tensor(data.X_test, device=device)),
                           torch.as_tensor(data.y_test, device=device))
    linear, decision = expressivity(model, data, device)
    return MoonsRun(label=variant, seed=seed, model=model, history=hist, params=train.count_params(model),
                    snapshots=snaps, steps=steps, steps_to_fit=int(hit.iloc[0]) + 1 if len(hit) else None,
                    train_acc=train_acc, train_loss=loss, heldout_acc=heldout,
                    grad_norms=torch.stack(norms).cpu().numpy() if norms else np.zeros((0, 3)),
                    linear_regions=linear, decision_regions=decision)


def run_grid(data: moons.Moons, variants, seeds, steps: int = 1000, lr: float = 0.01, frames: int = 0, device="cpu",
             progress: bool = True) -> dict:
    """Every variant x seed; frames are recorded for the first seed only. Returns {(variant, seed): MoonsRun}."""
    jobs = [(v, s) for v in variants for s in seeds]
    runs = train.grid(jobs, lambda v, s: train_one(data, v, s, steps, lr, frames if s == seeds[0] else 0, device),
                      progress=progress)
    return dict(zip(jobs, runs))


def summarise(runs: dict, line_acc: float | None = None) -> pd.DataFrame:
    """One row per variant: the first seed's run as the original would report it, and statistics over all seeds.
    With ``line_acc`` (the best straight line's training accuracy, ``best_line``) each row also gets its verdict over
    seeds (``verdict_phrase``) and the count of seeds per verdict (columns named after ``VERDICTS``)."""
    rows = []
    per_seed = verdicts(runs, line_acc) if line_acc is not None else {}
    for v, rs in by_variant(runs).items():
        first, spec = rs[0], models.VARIANTS[v]
        reached = [r.steps_to_fit for r in rs if r.steps_to_fit is not None]
        held = np.array([r.heldout_acc for r in rs])
        linear = [r.linear_regions for r in rs if r.linear_regions is not None]
        rows.append({
            "variant": v, "label": spec.label, "expected": spec.expected, "seeds": len(rs),
            "first_seed": first.seed, "first_outcome": first.outcome,
            "first_steps_to_fit": first.steps_to_fit if first.steps_to_fit is not None else np.nan,
            "first_train_acc": 100 * first.train_acc, "first_train_loss": first.train_loss,
            "fitted": sum(r.fitted for r in rs), "fit_rate": float(np.mean([r.fitted for r in rs])),
            "reached": len(reached), "diverged": sum(r.diverged for r in rs),
            "diverged_at": ", ".join(str(r.history.stopped_at) for r in rs if r.diverged),
            "median_steps_to_fit": float(np.median(reached)) if reached else np.nan,
            "heldout_mean": 100 * held.mean(), "heldout_sd": 100 * held.std(ddof=1) if len(held) > 1 else np.nan,
            "linear_regions": float(np.median(linear)) if linear else np.nan,
            "decision_regions": float(np.median([r.decision_regions for r in rs])),
        })
        if v in per_seed:
            rows[-1].update({"verdict": verdict_phrase(per_seed[v]), **{w: per_seed[v].count(w) for w in VERDICTS}})
    return pd.DataFrame(rows)


def _num(x, fmt="{:.0f}", missing="—"):
    return missing if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The results table as the book shows it (strings, one row per variant)."""
    first, n = (table.first_seed.iloc[0], table.seeds.iloc[0]) if len(table) else (0, 0)
    verdict = {f"verdict ({n} seeds)": table.verdict} if "verdict" in table else {}
    return pd.DataFrame({
        "variant": table.label,
        f"train acc % (seed {first})": [_num(a, "{:.0f}") for a in table.first_train_acc],
        f"train loss (seed {first})": [_num(x, "{:.3g}") for x in table.first_train_loss],
        f"steps to 100 % (seed {first})": table.first_outcome,
        f"fit rate ({n} seeds)": [f"{f}/{s}" for f, s in zip(table.fitted, table.seeds)],
        **verdict,
        "median steps to 100 %": [_num(x, "{:.0f}", "never") for x in table.median_steps_to_fit],
        "diverged": [f"{d}" + (f" (step {at})" if d else "") for d, at in zip(table.diverged, table.diverged_at)],
        "held-out acc %": [_num(m, "{:.1f}") + ("" if np.isnan(s) else f" ± {s:.1f}")
                           for m, s in zip(table.heldout_mean, table.heldout_sd)],
        "linear regions": [_num(x) for x in table.linear_regions],
        "decision regions": [_num(x) for x in table.decision_regions],
    }).set_index("variant")


def glue(res, table: pd.DataFrame) -> None:
    """Glue each variant's numbers (one row of ``summarise``'s table) for the prose, and <variant>_verdict when the
    table has verdicts (``summarise`` with ``line_acc``)."""
    values = {
        "outcome": "first_outcome", "fitted": lambda r: int(r.fitted), "fit_rate": lambda r: f"{r.fitted}/{r.seeds}",
        "median_steps": lambda r: _num(r.median_steps_to_fit, "{:.0f}", "never"),
        "heldout": lambda r: float(r.heldout_mean), "train_acc": lambda r: float(r.first_train_acc),
        "train_loss": lambda r: _num(r.first_train_loss, "{:.3g}", "NaN"),
        "linear_regions": lambda r: _num(r.linear_regions), "decision_regions": lambda r: _num(r.decision_regions),
        "diverged": lambda r: int(r.diverged), **({"verdict": "verdict"} if "verdict" in table else {})}
    for name, value in values.items():
        res.glue_rows(table, "{variant}_" + name, value)


def glue_groups(res, table: pd.DataFrame) -> None:
    """Glue which variants fitted at every seed, at some seeds, or at none (comma-separated labels, or "none")."""
    for key, mask in (("fit_every_seed", table.fitted == table.seeds),
                      ("fit_some_seeds", (table.fitted > 0) & (table.fitted < table.seeds)),
                      ("fit_no_seed", table.fitted == 0)):
        res.glue(key, ", ".join(table.label[mask]) or "none")
    res.glue("diverged_runs", int(table.diverged.sum()))


def registry_table(variants=None) -> pd.DataFrame:
    """The variants as the book lists them: what each computes and what the original reported."""
    return pd.DataFrame([{"variant": v.label, "name (files, parameters)": v.name, "forward": v.description,
                          "original": "fitted" if v.expected == "fit" else "failed",
                          "piecewise linear": "yes" if v.piecewise else "no"}
                         for v in (models.VARIANTS[n] for n in (variants or models.NAMES))]).set_index("variant")


def seed_table(runs: dict) -> pd.DataFrame:
    """Every run: variant, seed, outcome and final numbers (recorded in the metrics file)."""
    return pd.DataFrame([{
        "variant": v, "seed": s, "status": r.history.status, "stopped_at": r.history.stopped_at,
        "steps_to_fit": r.steps_to_fit, "fitted": r.fitted, "train_acc": r.train_acc, "train_loss": r.train_loss,
        "heldout_acc": r.heldout_acc, "linear_regions": r.linear_regions, "decision_regions": r.decision_regions,
    } for (v, s), r in runs.items()])


def divergence_note(runs: dict) -> str:
    """One sentence on every run the guard stopped (for the prose), or that none was stopped."""
    stopped = [r for r in runs.values() if r.diverged]
    if not stopped:
        return "In this run no seed of any variant diverged: the guard never had to stop a run."
    parts = []
    for r in stopped:
        bad = np.flatnonzero(~np.isfinite(r.grad_norms).all(1))
        grad = (f"; the gradient of step {bad[0]} was already non-finite although that step's loss was finite"
                if len(bad) else "")
        parts.append(f"{models.VARIANTS[r.label].label} (seed {r.seed}) at step {r.history.stopped_at}{grad}")
    return "The guard stopped " + "; ".join(parts) + "."


def gradient_stats(runs: dict, seed: int) -> dict:
    """Per variant (one seed): median and max gradient norm of fc1 over the steps, and the share of steps on which
    the training loss went up by more than 10 %."""
    out = {}
    for (v, s), r in runs.items():
        if s != seed:
            continue
        g = r.grad_norms[:, 0][np.isfinite(r.grad_norms[:, 0])]
        loss = r.history.df.train_loss.to_numpy()
        loss = loss[np.isfinite(loss)]
        out[v] = {"grad_median": float(np.median(g)) if len(g) else float("nan"),
                  "grad_max": float(g.max()) if len(g) else float("nan"),
                  "loss_up": float(np.mean(loss[1:] > 1.1 * loss[:-1])) if len(loss) > 1 else 0.0}
    return out


def glue_gradients(res, runs: dict, seed: int) -> None:
    """Glue <variant>_grad_median, _grad_max and _loss_up (see ``gradient_stats``; one seed) and
    <variant>_grad_max_all (largest finite fc1 gradient norm over all seeds) for the prose."""
    stats = [{"variant": v, **row} for v, row in gradient_stats(runs, seed).items()]
    for name in ("grad_median", "grad_max", "loss_up"):
        res.glue_rows(stats, "{variant}_" + name, name)
    fc1 = {v: np.concatenate([r.grad_norms[:, 0] for r in rs]) for v, rs in by_variant(runs).items()}
    res.glue_rows([{"variant": v, "g": g[np.isfinite(g)]} for v, g in fc1.items()], "{variant}_grad_max_all",
                  lambda r: float(r["g"].max()) if len(r["g"]) else float("nan"))


# distance of a pre-activation to the nearest pole of the activation: 1/x at 0, tan at pi/2 + k pi
POLE_DISTANCE = {"inv": torch.abs, "tan": lambda h: (torch.remainder(h, torch.pi) - torch.pi / 2).abs()}


def pole_stats(runs: dict, data: moons.Moons, seed: int, eps: float = 0.05) -> dict:
    """For 1/x and tan (one seed): the share of training points with some pre-activation (fc1 or fc2 output)
    within ``eps`` of a pole, at initialisation and at the end, and the largest |pre-activation| at the end."""
    X, out = torch.as_tensor(data.X), {}
    for (v, s), r in runs.items():
        act = models.VARIANTS[v].act1
        if s != seed or act not in POLE_DISTANCE:
            continue
        dist, row = POLE_DISTANCE[act], {}
        for when, model in (("init", models.build(v, s)), ("final", r.model.cpu())):
            with torch.no_grad():
                h = torch.cat(model.preactivations(X), dim=1)
            row[f"near_pole_{when}"] = float((dist(h) < eps).any(1).float().mean())
            row[f"max_pre_{when}"] = float(h.abs().max())
        out[v] = row
    return out


def glue_poles(res, poles: dict) -> None:
    """Glue <variant>_near_pole_{init, final} and <variant>_max_pre_{init, final} (``pole_stats``) for the prose."""
    rows = [{"variant": v, **row} for v, row in poles.items()]
    for name in ("near_pole_init", "max_pre_init", "near_pole_final", "max_pre_final"):
        res.glue_rows(rows, "{variant}_" + name, name)


# ---------------------------------------------------------------- verdicts: the words the prose glues
# A run's verdict comes from its final state and the tail of its loss curve (the last TAIL of the steps, at least
# TAIL_MIN steps, plus the final loss), checked in this order:
#   "fails"          the guard stopped it (NaN/inf loss);
#   "fits"           it ends at 100 % training accuracy;
#   "still learning" the loss is still going down steadily: on at least STEADY_SHARE of the tail's steps, by at
#                    least STEADY_DROP (relative) over the tail, and without a jump (a one-step rise of more than
#                    JUMP, relative) in the second half of the run: more steps could change the verdict;
#   "fails"          it ends no better than the best straight line on the training points (``best_line``): the
#                    network has not used its nonlinearity, which is what this chapter asks about;
#   "plateaus"       above the line, short of 100 %, and the loss has stopped moving: its tail stays within a
#                    factor 1 + FLAT_TOL (largest / smallest);
#   "unstable"       above the line, short of 100 %, and the loss still jumps about (neither steady nor flat).
# The thresholds are loose on purpose: 1 % over a tenth of the run separates "still falling" from the float noise
# of a converged loss (a run stuck short of 100 % moves less than 0.5 % over its last 100 of 1000 steps); three
# steps down in four lets a falling loss have a small bump (exp × exp early on does); 5 % separates a converged
# plateau from the jumps of 1/x and tan (tens of per cent); and the
# no-jump condition keeps a pole variant's calm stretch between two pole crossings from passing for learning
# (the runs that fit have no such jump at all in their second half).
TAIL, TAIL_MIN = 0.1, 10
STEADY_SHARE, STEADY_DROP, JUMP = 0.75, 0.01, 0.1
FLAT_TOL = 0.05
VERDICTS = ("fits", "plateaus", "still learning", "unstable", "fails")  # the order the prose lists them in


def best_line(X, y, X_test=None, y_test=None) -> dict:
    """The best any straight line does on the training points: training accuracy (exact: an optimal line can be
    moved until it passes through two training points, so every such line is tried; points on it count as right,
    which makes this an upper bound) and, when held-out points are given, that line's held-out accuracy."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    i, j = np.triu_indices(len(X), 1)
    d, rel = X[j] - X[i], X[None, :, :] - X[i][:, None, :]
    side = np.sign(d[:, None, 0] * rel[:, :, 1] - d[:, None, 1] * rel[:, :, 0])  # (lines, points)
    on = (side == 0).sum(1)
    up = ((side > 0) & (y == 1)).sum(1) + ((side < 0) & (y == 0)).sum(1)
    down = ((side < 0) & (y == 1)).sum(1) + ((side > 0) & (y == 0)).sum(1)
    right = np.maximum(up, down) + on
    k = int(np.argmax(right))
    out = {"train_acc": float(right[k] / len(X))}
    if X_test is not None:
        rel_t = np.asarray(X_test, dtype=np.float64) - X[i[k]]
        s = np.sign(d[k, 0] * rel_t[:, 1] - d[k, 1] * rel_t[:, 0])
        pred = (s > 0) if up[k] >= down[k] else (s < 0)
        out["heldout_acc"] = float(np.mean(pred.astype(int) == np.asarray(y_test)))
    return out


def verdict(loss, train_acc: float, diverged: bool, line_acc: float) -> str:
    """One run's verdict (see the rules above): ``loss`` is the loss at every step followed by the final loss."""
    if diverged:
        return "fails"
    if train_acc >= 1.0:
        return "fits"
    loss = np.asarray(loss, dtype=np.float64)
    n = max(TAIL_MIN, int(np.ceil(TAIL * (len(loss) - 1))))
    tail = loss[-(n + 1):]
    half = loss[len(loss) // 2:]
    if len(tail) > 1 and np.isfinite(half).all():
        steady = np.mean(np.diff(tail) < 0) >= STEADY_SHARE and tail[-1] <= (1 - STEADY_DROP) * tail[0]
        if steady and not (half[1:] > (1 + JUMP) * half[:-1]).any():
            return "still learning"
    if train_acc <= line_acc:
        return "fails"
    if np.isfinite(tail).all() and tail.min() > 0 and tail.max() <= (1 + FLAT_TOL) * tail.min():
        return "plateaus"
    return "unstable"


def run_verdict(r: MoonsRun, line_acc: float) -> str:
    loss = np.append(r.history.df.train_loss.to_numpy(dtype=np.float64), r.train_loss)
    return verdict(loss, r.train_acc, r.diverged, line_acc)


def verdict_phrase(verdicts) -> str:
    """Over seeds: 'fits at every seed', or counts such as 'fits at 4 of 5 seeds and fails at 1'."""
    verdicts = list(verdicts)
    if not verdicts:
        return "was not run"
    n = len(verdicts)
    counts = [(v, verdicts.count(v)) for v in VERDICTS if v in verdicts]
    word = {"still learning": "is still learning", "unstable": "is unstable"}
    if len(counts) == 1:
        v = counts[0][0]
        return f"{word.get(v, v)} at every seed" if n > 1 else f"{word.get(v, v)} (one seed)"
    parts = [f"{word.get(v, v)} at {c}" + (f" of {n} seeds" if i == 0 else "") for i, (v, c) in enumerate(counts)]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def verdicts(runs: dict, line_acc: float) -> dict:
    """{variant: [verdict per seed]} in the order of the runs."""
    return {v: [run_verdict(r, line_acc) for r in rs] for v, rs in by_variant(runs).items()}


def agreement(expected: str, seed_verdicts) -> str:
    """Does our run bear out the original's verdict ("fit" or "fail") for one variant? "every seed" when every seed
    gives it, "some seeds" when some do, "no seed" when none does while at least one seed is decided, "undecided"
    when every seed is still learning."""
    want = "fits" if expected == "fit" else "fails"
    if all(v == "still learning" for v in seed_verdicts):
        return "undecided"
    hits = sum(v == want for v in seed_verdicts)
    return "every seed" if hits == len(seed_verdicts) else "some seeds" if hits else "no seed"


def _labels(names) -> str:
    return ", ".join(models.VARIANTS[v].label for v in names)


def agreement_note(seed_verdicts: dict) -> str:
    """One sentence: for how many variants the original's fit/fail verdict holds at every seed, and where not."""
    groups = _group((agreement(models.VARIANTS[v].expected, vs), v) for v, vs in seed_verdicts.items())
    parts = [f"The original's verdict (fitted or failed) holds at every seed for {len(groups.get('every seed', []))} "
             f"of the {len(seed_verdicts)} variants"]
    for key, what in (("some seeds", "it holds at some seeds only for"), ("no seed", "at no seed for"),
                      ("undecided", "it is not yet decided (every seed still learning) for")):
        if groups.get(key):
            parts.append(f"{what} {_labels(groups[key])}")
    return "; ".join(parts) + "."


def _by_phrase(names, seed_verdicts: dict) -> str:
    """'a, b (phrase); c (other phrase)': variants sharing a verdict phrase listed together."""
    groups = _group((verdict_phrase(seed_verdicts[v]), v) for v in names)
    return "; ".join(f"{_labels(vs)} ({phrase})" for phrase, vs in groups.items())


def seeds_note(seed_verdicts: dict) -> str:
    """Whether seeds matter for the variants the original saw fit: which of them end short of 100 % at some or all
    seeds, and what those seeds do instead."""
    fit = [v for v in seed_verdicts if models.VARIANTS[v].expected == "fit"]
    mixed = [v for v in fit if 0 < seed_verdicts[v].count("fits") < len(seed_verdicts[v])]
    none = [v for v in fit if "fits" not in seed_verdicts[v]]
    if not fit:
        return "No variant the original saw fit was run."
    if not mixed and not none:
        return "Every variant the original saw fit fits at every seed of this run."
    out = []
    if mixed:
        out.append("Seeds matter: " + "; ".join(f"{models.VARIANTS[v].label} {verdict_phrase(seed_verdicts[v])}"
                                                for v in mixed) + ".")
    if none:
        out.append(f"Of the variants the original saw fit, {len(none)} fit at no seed of this run: "
                   + _by_phrase(none, seed_verdicts) + ".")
    return " ".join(out)


def group_names(seed_verdicts: dict, word: str) -> str:
    """Labels of the variants whose every seed got ``word`` ("none" when there is none)."""
    return _labels(v for v, vs in seed_verdicts.items() if vs and all(x == word for x in vs)) or "none"


def heldout_note(runs: dict, seed_verdicts: dict) -> str:
    """Held-out accuracy of the variants that fit at every seed: the best and the worst, and whether their gap is
    beyond seed noise (``seeds.differ``: |difference of means| > 2 standard errors)."""
    fitted = [v for v, vs in seed_verdicts.items() if all(x == "fits" for x in vs)]
    if len(fitted) < 2:
        return ("Fewer than two variants fit at every seed in this run, so held-out accuracy cannot compare fitted "
                "variants.")
    pcts = heldout_by_variant(runs)
    held = {v: pcts.get(v, []) for v in fitted}
    means = {v: seeds.summary(h)["mean"] for v, h in held.items()}
    lo, hi = min(fitted, key=means.get), max(fitted, key=means.get)
    c = seeds.differ(held[lo], held[hi])
    span = (f"On fresh moons the {len(fitted)} variants that fit at every seed score from {means[lo]:.1f} % "
            f"({models.VARIANTS[lo].label}) to {means[hi]:.1f} % ({models.VARIANTS[hi].label})")
    if not c["known"]:
        return span + ": with one seed, whether that gap is more than seed noise cannot be decided."
    if not c["significant"]:
        return (span + f", a gap within seed noise (2 se = {2 * c['se']:.1f} points): 100 % on the training points "
                "does not rank them, and neither do fresh moons.")
    return (span + f", a gap beyond seed noise (2 se = {2 * c['se']:.1f} points): reaching 100 % on the training "
            "points does not make their boundaries equally good.")


def versus_line(values, line: float) -> str:
    """'above' / 'below' the line's accuracy when the mean is more than 2 standard errors away, else 'level with'."""
    s = seeds.summary(values)
    if not s["n"]:
        return "not measured against"
    margin = 2 * s["sd"] / np.sqrt(s["n"])
    return "above" if s["mean"] - margin > line else "below" if s["mean"] + margin < line else "level with"


def glue_vs_line(res, runs: dict, line_heldout: float) -> None:
    """Glue <variant>_vs_line: its held-out accuracy (%, over seeds) against the best straight line's
    (``line_heldout``, %), as ``versus_line`` words it."""
    res.glue_rows([{"variant": v, "held": h} for v, h in heldout_by_variant(runs).items()], "{variant}_vs_line",
                  lambda r: versus_line(r["held"], line_heldout))


def rank_word(values: dict, key) -> str:
    """'the largest' / 'the 3rd largest' of ``values[key]`` among the finite values."""
    finite = sorted((x for x in values.values() if np.isfinite(x)), reverse=True)
    if key not in values or not np.isfinite(values[key]):
        return "not measured"
    k = finite.index(values[key]) + 1
    return "the largest" if k == 1 else f"the {k}{'nd' if k == 2 else 'rd' if k == 3 else 'th'} largest"


def loss_note(runs: dict, seed: int, line_acc: float) -> str:
    """The first seed's final training loss grouped by the run's verdict: 'fits: x² 2e-05, ...; fails: ...'."""
    groups = _group((run_verdict(r, line_acc), f"{models.VARIANTS[v].label} {_num(r.train_loss, '{:.2g}', 'NaN')}")
                    for (v, s), r in runs.items() if s == seed)
    return "; ".join(f"{w}: {', '.join(groups[w])}" for w in VERDICTS if w in groups)


def regions_word(n) -> str:
    """How a variant's median count of decision regions reads: a clean boundary has 2."""
    if n is None or not np.isfinite(n):
        return "has no decision regions to count"
    return f"shatters into {n:.0f} decision regions" if n > 2 else f"keeps {n:.0f} decision regions"


def decision_note(table: pd.DataFrame, seed_verdicts: dict, poles=("inv_inv", "tan_tan")) -> str:
    """Do decision regions tell the pole variants apart from the ones that fit at every seed (medians over seeds)?"""
    counts = table.set_index("variant").decision_regions
    fitted = [v for v, vs in seed_verdicts.items() if vs and all(x == "fits" for x in vs) and v in counts]
    poles = [v for v in poles if v in counts]
    pole_text = " and ".join(f"{models.VARIANTS[v].label} {counts[v]:.0f}" for v in poles)
    if not poles:
        return "No pole variant was run."
    if not fitted:
        return f"No variant fits at every seed in this run to compare with; the pole variants have {pole_text}."
    top = max(fitted, key=lambda v: counts[v])
    apart = all(counts[v] > counts[top] for v in poles)
    return (f"The variants that fit at every seed have at most {counts[top]:.0f} decision regions "
            f"({models.VARIANTS[top].label}); the pole variants have {pole_text} — "
            + ("more than any of them: decision regions tell the pole failures apart." if apart else
               "not more than every one of them: decision regions alone do not tell the pole failures apart."))


def finest_note(table: pd.DataFrame) -> str:
    """Which piecewise-linear variant cuts the plane into the most linear regions (median over seeds)."""
    counts = table.set_index("variant").linear_regions.dropna()
    counts = counts[[v for v in counts.index if v != "sgn"]]  # sgn's regions never move
    if counts.empty:
        return "No trainable piecewise-linear variant was run."
    names = [f"{models.VARIANTS[v].label} ({n:.0f})" for v, n in counts.sort_values(ascending=False).items()]
    return "From the most linear regions to the fewest: " + ", ".join(names) + "."


def poles_within(m: float) -> int:
    """How many poles of tan (π/2 + kπ) lie in [-m, m]."""
    if not np.isfinite(m) or m < np.pi / 2:
        return 0
    return 2 * int(np.floor((m - np.pi / 2) / np.pi) + 1)


def gradient_word(max_norm: float) -> str:
    """'no gradient' when the largest gradient norm over a run is exactly 0, else 'a gradient'."""
    return "no gradient" if max_norm == 0 else "a gradient"


def agreement_counts(seed_verdicts: dict) -> dict:
    """How many variants bear out the original's verdict at every seed / some seeds / no seed / undecided."""
    groups = _group((agreement(models.VARIANTS[v].expected, vs), v) for v, vs in seed_verdicts.items())
    return {k: len(groups.get(k, [])) for k in ("every seed", "some seeds", "no seed", "undecided")}


# ---------------------------------------------------------------- figures

def plot_data(data: moons.Moons):
    """The training moons (the original's) and the held-out draw."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.9))
    for ax, (X, y, name) in zip(axes, [(data.X, data.y, f"training: {len(data.X)} points"),
                                       (data.X_test, data.y_test, f"held out: {len(data.X_test)} points")]):
        plots.points(ax, X, y, size=10 if len(X) <= 200 else 4)
        ax.set(title=name, xlim=data.extent[:2], ylim=data.extent[2:], aspect="equal", xticks=[], yticks=[])
    axes[1].legend(fontsize="x-small", loc="lower left")
    fig.tight_layout()
    return fig


def _status(r: MoonsRun) -> str:
    if r.diverged:
        return r.outcome
    status = f"train acc {100 * r.train_acc:.0f} %"
    if r.steps_to_fit is not None:
        status += f" · 100 % at step {r.steps_to_fit}" + ("" if r.fitted else ", then lost")
    return status


def plot_final_surfaces(runs: dict, data: moons.Moons, seed: int, cols: int = 4):
    """The summary grid: every variant's final P(class 1) with the training points, titled with its outcome."""
    mine = [(v, r) for (v, s), r in runs.items() if s == seed]
    fig, axes = plots.panels(len(mine), cols, size=(3.1, 2.55))
    for ax, (v, r) in zip(axes, mine):
        prob = grid_maps(r.model, data, next(r.model.parameters()).device).prob
        plots.surface(ax, data.xx, data.yy, prob)
        plots.points(ax, data.X, data.y, size=9)
        ax.set(xlim=data.extent[:2], ylim=data.extent[2:])
        ax.set_title(f"{models.VARIANTS[v].label}\n{_status(r)}", fontsize="small")
        if not np.isfinite(prob).any():
            ax.text(0.5, 0.5, "NaN weights:\nnothing to draw", transform=ax.transAxes, ha="center", va="center",
                    fontsize="small", color="#b2182b")
        if models.VARIANTS[v].expected == "fail":
            ax.title.set_color("#b2182b")
    fig.suptitle(f"Final decision surfaces, seed {seed} (red titles: expected to fail)", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_losses(runs: dict, seed: int):
    """Training loss per step of every variant (one seed), split by what the original reported."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, expected in zip(axes, ("fit", "fail")):
        hist = {models.VARIANTS[v].label: r.history.df for (v, s), r in runs.items()
                if s == seed and models.VARIANTS[v].expected == expected}
        if hist:
            plots.curves(ax, hist, lw=1.2)
            ax.legend(fontsize="x-small", ncol=2)
        ax.set_title(f"expected to {expected} (seed {seed})")
    fig.tight_layout()
    return fig


def plot_grad_norms(runs: dict, seed: int, variants=("relu", "inv_inv", "tan_tan", "sgn")):
    """Gradient norm of each layer at every step: smooth for relu, spikes of many orders of magnitude at the poles of
    1/x and tan, exactly zero below the output layer for sgn (zeros cannot be drawn on the log axis)."""
    variants = [v for v in variants if (v, seed) in runs]
    if not variants:
        return None
    fig, axes = plots.panels(len(variants), len(variants), size=(3.2, 3.0), sharey=True)
    for ax, v in zip(axes, variants):
        g = runs[(v, seed)].grad_norms
        for i, layer in enumerate(LAYERS):
            vals = np.where(g[:, i] > 0, g[:, i], np.nan)
            ax.plot(np.arange(len(vals)), vals, lw=0.8, label=layer, alpha=0.85)
            if len(g) and not (g[:, i] != 0).any():
                ax.text(0.03, 0.06 + 0.09 * i, f"{layer}: exactly 0 at every step", transform=ax.transAxes,
                        fontsize="x-small", color=f"C{i}")
        ax.set(yscale="log", xlabel="step", title=models.VARIANTS[v].label)
    axes[0].set_ylabel("gradient norm")
    axes[-1].legend(fontsize="x-small", loc="upper right")
    fig.tight_layout()
    return fig


def plot_regions(runs: dict, data: moons.Moons, seed: int):
    """Linear regions of the piecewise-linear variants on the plot grid (random colours), the decision boundary
    (black) and the training points."""
    mine = [(v, r) for (v, s), r in runs.items() if s == seed and models.VARIANTS[v].piecewise]
    if not mine:
        return None
    fig, axes = plots.panels(len(mine), len(mine), size=(3.0, 2.5))
    ext = data.extent
    for ax, (v, r) in zip(axes, mine):
        maps = grid_maps(r.model, data, next(r.model.parameters()).device)
        colours = np.random.default_rng(0).uniform(0.25, 1.0, (maps.regions.max() + 1, 3))
        ax.imshow(colours[maps.regions], origin="lower", extent=ext, interpolation="nearest", aspect="equal")
        if np.isfinite(maps.prob).all() and 0 < (maps.prob > 0.5).mean() < 1:
            ax.contour(data.xx, data.yy, maps.prob, levels=[0.5], colors="black", linewidths=1.2)
        plots.points(ax, data.X, data.y, size=8)
        ax.set(xlim=ext[:2], ylim=ext[2:], xticks=[], yticks=[])
        ax.set_title(f"{models.VARIANTS[v].label}: {r.linear_regions} regions", fontsize="small")
    fig.suptitle(f"Linear regions on the plot grid, seed {seed}", fontsize="medium")
    fig.tight_layout()
    return fig


GIF_BYTES = 800_000  # per GIF: the chapter shows twelve, and its page (with the site's scripts) stays under 8 MB


def write_gifs(runs: dict, data: moons.Moons, folder, seed: int, fps: float = 12, max_bytes: int = GIF_BYTES) -> dict:
    """One training GIF per variant (the runs of ``seed`` recorded frames): <folder>/<variant>.gif.

    Frames are drawn as the original's filled contours (``plots.bands``) with the training points, titled with the
    step and the training loss; a diverged run ends on the state the guard stopped on. A GIF above ``max_bytes`` is
    written again from fewer, evenly spaced frames, never at a lower resolution (``animate.write_gif``).
    """
    folder, out = Path(folder), {}
    w, h = data.extent[1] - data.extent[0], data.extent[3] - data.extent[2]
    for (v, s), r in runs.items():
        if s != seed or r.snapshots is None:
            continue
        loss = r.history.df.set_index("step").train_loss
        values = [loss.get(step, r.train_loss) for step in r.snapshots.at]  # the last step has no row: final loss
        titles = [f"{models.VARIANTS[v].label} · step {step} · " + (f"loss {x:.3g}" if np.isfinite(x) else
                                                                   "loss NaN: diverged")
                  for step, x in zip(r.snapshots.at, values)]
        out[v] = animate.surface_gif([plots.bands(f) for f in r.snapshots.frames], titles, data.extent,
                                     folder / f"{v}.gif", data.X, data.y, fps=fps, size=(3.8, 3.8 * h / w + 0.45),
                                     max_bytes=max_bytes)
    return out
