"""Chapter 2 experiment: train the faithful model, one ablation per cause of the drop and the repaired model on
GP pairs, over several seeds; evaluate teacher-forced and autoregressive predictions against the truth, the exact
GP posterior (the oracle) and a parameter-free baseline; decide each cause by the numbers.

Rows (``ROWS``): the faithful model, one change per cause, and the repaired model. Rows that do not train
(``teacher_forced``, ``heads``) evaluate the faithful model's weights another way.
"""
from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ... import chapter
from ... import train as training
from . import data as data
from . import models as models
from ...viz import animate, plots

REGIMES = ("shuffle", "full_infer", "half_half", "infer")


@dataclass(frozen=True)
class Row:
    label: str
    cause: str
    model: str = "faithful"          # faithful | repaired
    switches: dict = field(default_factory=dict)
    regime: str = "shuffle"
    loss: str = "original"
    teacher_forced: bool = False     # evaluate the rollout with the true previous values (no training)
    consistent_heads: bool = False   # evaluate with the heads it was trained with (no training)
    trains: bool = True
    decide_on: str = "first_abs"     # the metric that decides whether this cause matters


ROWS = {
    "faithful": Row("Faithful (original)", "—"),
    "series_qk": Row("+ series flag in q/k", "(1) series identity not in q/k", switches={"series_qk": True}),
    "infer_order": Row("trained in the inference layout", "(2) training order ≠ inference order", regime="infer"),
    "full_infer": Row("original's full_infer regime", "(2) the original's alternative order", regime="full_infer"),
    "half_half": Row("original's half_half regime", "(2) the original's four-way mix", regime="half_half"),
    "teacher_forced": Row("teacher-forced rollout", "(3) exposure bias", teacher_forced=True, trains=False,
                          decide_on="rollout_rmse"),
    "no_relu": Row("no ReLU before softmax", "(4) ReLU of the scores", switches={"no_relu": True}),
    "exact_nll": Row("exact Gaussian NLL", "(5) non-exact loss", loss="exact"),
    "heads": Row("inferred with the training heads", "(6) 1 vs 32 heads", consistent_heads=True, trains=False),
    "residual": Row("μ as residual on nearest seen value", "(7) μ from scratch", switches={"residual": True}),
    "repaired": Row("Repaired", "all of them", model="repaired", regime="infer", loss="exact",
                    switches={"on_baseline": True}),
    "attention_only": Row("Repaired without the baseline residual", "control: μ from scratch", model="repaired",
                          regime="infer", loss="exact", switches={"on_baseline": False}),
    "interp_base": Row("Repaired on the interpolation alone", "control: no smoothing", model="repaired",
                       regime="infer", loss="exact", switches={"on_baseline": True, "smooth": False}),
}
CONTROLS = ("attention_only", "interp_base")  # the repaired model's controls, trained whenever it is
ABLATIONS = tuple(k for k, r in ROWS.items() if k != "faithful" and r.model == "faithful")
TRAINED = tuple(k for k, r in ROWS.items() if r.trains)
METRICS = ("first_step", "first_abs", "toward", "gap_slope", "gap_corr", "rollout_rmse", "tf_r2", "loglik")


@dataclass
class Config:
    n_points: int = 400      # points per example (half per series)
    context: int = 50        # training: the first `context` points are inputs only (full_infer: the lowest 2x)
    context_p: int = 50      # inference: series-0 points seen before the rollout starts...
    pool: int = 120          # ...picked at random among its `pool` lowest (the original: 50 of 120)
    embed: int = 512         # faithful embedding width
    train_heads: int = 1     # faithful: heads it is trained with (the original built a new model with 1)...
    infer_heads: int = 32    # ...and heads it is rebuilt with for inference (the saved spec said 32)
    width: int = 64          # repaired model width
    layers: int = 2          # repaired model blocks per stream
    heads: int = 4           # repaired model attention heads
    self_feed: bool = True   # repaired model: train on its own one-step predictions (models.Repaired)
    batch: int = 64
    lr: float = 3e-4
    steps: int = 20000
    evals: int = 10          # validation evaluations over the run (one pass over Batches = one evaluation interval)

    @property
    def first(self) -> int:
        """Index of the first predicted point in the inference layout (series 1, then series 0)."""
        return self.n_points // 2 + self.context_p

    def check(self) -> None:
        n = self.n_points // 2
        if self.n_points % 2 or self.n_points < 8:
            raise ValueError(f"parameter n_points={self.n_points} is not allowed: expected an even number >= 8")
        if not 1 <= self.context_p <= self.pool <= n:
            raise ValueError(f"parameters context_p={self.context_p} / context_pool={self.pool} are not allowed: "
                             f"expected 1 <= context_p <= context_pool <= n_points / 2 = {n}")
        if not 1 <= 2 * self.context < self.n_points:
            raise ValueError(f"parameter context={self.context} is not allowed: expected 2 * context < n_points "
                             f"({self.n_points})")
        for name, value, h, of in (("embed", self.embed, self.train_heads, " of the faithful model"),
                                   ("embed", self.embed, self.infer_heads, " of the faithful model"),
                                   ("width", self.width, self.heads, "")):
            if value % h:
                raise ValueError(f"parameter {name}={value} is not allowed: expected a multiple of the {h} heads{of}")


def config(p: dict) -> Config:
    """The notebook's checked parameters as a ``Config``."""
    return Config(n_points=p["n_points"], context=p["context"], context_p=p["context_p"], pool=p["context_pool"],
                  embed=p["embed"], train_heads=p["train_heads"], infer_heads=p["infer_heads"], width=p["width"],
                  layers=p["layers"], self_feed=p["self_feed"], batch=p["batch"], steps=p["steps"])


def row_keys(p: dict) -> tuple[list, list]:
    """The rows the notebook runs (the faithful model, the chosen ablations, the repaired model and its control)
    and those of them also trained on noisy pairs."""
    rows = ["faithful", *(ABLATIONS if "all" in p["ablations"] else p["ablations"]), "repaired", *CONTROLS]
    return rows, [k for k in (TRAINED if "all" in p["noisy_rows"] else p["noisy_rows"]) if k in rows]


def _validate(p: dict) -> None:
    config(p).check()  # shapes that cannot work (a width not split by the heads, ...) fail here, before any compute
    if not {"faithful", "repaired"} <= set(row_keys(p)[1]):
        raise ValueError(f"parameter noisy_rows={p['noisy_rows']!r} is not allowed: it must include 'faithful' and "
                         "'repaired'")


def start(namespace: dict, **specs) -> chapter.Opening:
    """The notebook's opening: ``chapter.start`` with this chapter's cross-parameter checks (``Config.check`` and
    the noisy rows), run before anything is seeded."""
    return chapter.start(namespace, __name__, validate=_validate, **specs)


class Splits(NamedTuple):
    """What ``load`` draws: training and validation pairs, and test pairs in the inference layout."""

    train: data.Pairs
    val: data.Pairs
    test: data.Pairs


def load(cfg: Config, n_train: int, n_test: int, seed: int, noise: float = 0.0, device="cpu") -> Splits:
    """``n_train`` pairs split 80/20 into train and val (seeds ``seed`` and ``seed + 1``; ``device`` only speeds up
    the draws) and ``n_test`` test pairs in the inference layout (``seed + 2``, drawn on the CPU)."""
    n_fit = int(0.8 * n_train)
    return Splits(data.make_pairs(n_fit, cfg.n_points, noise=noise, seed=seed, device=device),
                  data.make_pairs(n_train - n_fit, cfg.n_points, noise=noise, seed=seed + 1, device=device),
                  data.inference_pairs(n_test, cfg.n_points, cfg.context_p, cfg.pool, seed + 2, noise=noise))


def to_tensor(pairs: data.Pairs, device="cpu") -> torch.Tensor:
    """Packed (N, T, 3) = (x, flag, y) float32 tensor in the pairs' own layout."""
    return torch.as_tensor(np.stack([pairs.x, pairs.s, pairs.y], -1), dtype=torch.float32, device=device)


def _gather(inp: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.gather(inp, 1, order[..., None].expand_as(inp))


def _by_x(inp):
    return _gather(inp, torch.argsort(inp[..., 0], dim=1, stable=True))


def _by_block(srt: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``srt`` reordered by ``block`` (per row), keeping the order within a block."""
    T = srt.shape[1]
    return _gather(srt, torch.argsort(block * T + torch.arange(T), dim=1))


def seen_then_rest(inp: torch.Tensor, seen: int, context: int):
    """The original's ``rearange_tr_2d``: sorted by x, the lowest 2·context points (both series), then the rest of
    series ``seen``, then the rest of the other series (the targets). Returns (inp, first target index per row)."""
    srt = _by_x(inp)
    pos = torch.arange(srt.shape[1])
    block = torch.where(pos < 2 * context, 0, torch.where(srt[..., 1] == seen, 1, 2))
    return _by_block(srt, block), 2 * context + ((pos >= 2 * context) & (srt[..., 1] == seen)).sum(1)


def infer_layout(inp: torch.Tensor, context_p: int, pool: int, gen: torch.Generator):
    """``data.inference_layout`` for a batch tensor, the context points drawn afresh per example."""
    srt = _by_x(inp)
    is0 = srt[..., 1] == 0
    rank0 = (is0.long().cumsum(1) - 1).clamp(min=0)
    pick = torch.zeros(len(inp), pool, dtype=torch.bool)
    pick.scatter_(1, torch.argsort(torch.rand(len(inp), pool, generator=gen), 1)[:, :context_p], True)
    picked = is0 & (rank0 < pool) & torch.gather(pick, 1, rank0.clamp(max=pool - 1))
    block = torch.where(~is0, 0, torch.where(picked, 1, 2))
    return _by_block(srt, block), torch.full((len(inp),), srt.shape[1] // 2 + context_p)


def arrange(raw: torch.Tensor, regime: str, cfg: Config, gen: torch.Generator):
    """Order one batch of examples (generation order) for training, as the original's ``batch_regime_2d``.

    shuffle: **one** random permutation of the columns for the whole batch, targets after ``context``;
    full_infer: ``seen_then_rest`` with the seen series drawn once per batch (as the original's code;
    docs/originals.md says per example); half_half: per batch, a quarter each of full_infer seen 1, seen 0,
    shuffle, and the raw order;
    infer: the inference layout (series 1 seen, context_p of series 0 from its lowest ``pool``).
    Returns (inp, first target index per row)."""
    training.choose("regime", regime, REGIMES)
    if regime == "infer":
        return infer_layout(raw, cfg.context_p, cfg.pool, gen)
    p = float(torch.rand((), generator=gen))
    if regime == "full_infer":
        return seen_then_rest(raw, 1 if p <= 0.5 else 0, cfg.context)
    if regime == "half_half" and p <= 0.5:
        return seen_then_rest(raw, 1 if p <= 0.25 else 0, cfg.context)
    if regime == "shuffle" or p <= 0.75:
        raw = raw[:, torch.randperm(raw.shape[1], generator=gen)]
    return raw, torch.full((len(raw),), cfg.context)


class Batches:
    """``steps`` random batches per pass, arranged by the regime; targets from each row's first target. One pass
    over Batches = one evaluation interval (one ``train.fit`` "epoch")."""

    def __init__(self, pairs: data.Pairs, regime: str, cfg: Config, steps: int, seed: int):
        self.raw = to_tensor(pairs)
        self.regime, self.cfg, self.steps = regime, cfg, steps
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, idx):
        inp, first = arrange(self.raw[idx], self.regime, self.cfg, self.gen)
        mask = (torch.arange(inp.shape[1]) >= first[:, None]).float()
        return inp, torch.stack([inp[..., 2], mask], -1)

    def __iter__(self):
        for _ in range(self.steps):
            yield self.batch(torch.randint(len(self.raw), (self.cfg.batch,), generator=self.gen))


def build(row: Row, cfg: Config) -> torch.nn.Module:
    if row.model == "repaired":
        return models.Repaired(width=cfg.width, heads=cfg.heads, layers=cfg.layers, self_feed=cfg.self_feed,
                               **row.switches)
    return models.Faithful(embed=cfg.embed, heads=cfg.train_heads, **row.switches)


@dataclass(kw_only=True)
class Trained(training.Run):
    """One trained row (``label``: its key in ``ROWS``); ``snapshots``: its training-GIF rollouts when recorded
    (``train_one``)."""


@dataclass
class Snap:
    """Which runs record training frames, and of what: rows ``keys`` of seed ``seed`` record ``frames`` mean
    rollouts of one test pair (``pair``: its packed (1, T, 3) array in the inference layout), evenly spaced over
    training, step 0 included. ``snap_spec`` builds one from the test pairs."""
    pair: np.ndarray
    frames: int
    seed: int
    keys: tuple = ("faithful", "repaired")

    def wants(self, key: str, seed: int) -> bool:
        return self.frames > 0 and seed == self.seed and key in self.keys


def example_pair(test: data.Pairs, gap: float = 3.0, among: int = 50) -> int:
    """The test pair the rollout figures show: among the first ``among``, the one whose offset gap c0 - c1 is
    closest to ``gap`` (a clear gap, so a drop towards the seen series is visible)."""
    return int(np.abs((test.c[:, 0] - test.c[:, 1])[:among] - gap).argmin())


def snap_spec(test: data.Pairs, index: int, frames: int, seed: int, keys=("faithful", "repaired")) -> Snap:
    return Snap(to_tensor(test)[index:index + 1].numpy(), frames, seed, tuple(keys))


@dataclass
class RolloutProbe:
    """A ``train.Snapshots`` probe: the mean rollout and σ of one test pair (``pair``: packed (1, T, 3)), as the
    evaluation sees it. A faithful model is switched to its inference heads for the call (as ``for_row`` does) and
    back to its training heads after, so training goes on exactly as without the probe. (A class, not a closure:
    it comes back from a forked worker with the run's ``snapshots``.)"""

    pair: np.ndarray
    cfg: Config

    def __call__(self, model):
        faithful = isinstance(model, models.Faithful)
        if faithful:
            heads, model.heads = model.heads, self.cfg.infer_heads
        try:
            pred, sd = rollout(model, torch.as_tensor(self.pair), self.cfg.first)
        finally:
            if faithful:
                model.heads = heads
        return pred[0].astype(np.float32), sd[0].astype(np.float32)


def train_one(label: str, train_pairs: data.Pairs, val_pairs: data.Pairs, cfg: Config, seed: int, device="cpu",
              snap: Snap | None = None) -> Trained:
    """Train row ``label``'s model with Adam (cfg.lr), batch cfg.batch, cfg.steps steps in its regime and loss,
    evaluated on the validation pairs cfg.evals times (one pass over ``Batches`` = one evaluation interval = one
    ``train.fit`` epoch).

    ``snap``: also record ``snap.frames`` rollouts of ``snap.pair`` evenly over training (``train.Snapshots``: eval
    mode, no_grad, nothing else changes), kept as ``Trained.snapshots`` (``at``: the steps; ``frames``: (mean
    rollout, σ) of each)."""
    row = ROWS[label]
    torch.manual_seed(seed)
    model = build(row, cfg).to(device)
    per_interval = max(1, cfg.steps // cfg.evals)
    intervals = max(1, cfg.steps // per_interval)
    val = Batches(val_pairs, row.regime, cfg, 1, seed + 1).batch(torch.arange(min(256, len(val_pairs.x))))
    vin, vt = (t.to(device) for t in val)
    loss, nll = models.masked_loss(row.loss), models.masked_loss("exact")
    snaps = None
    if snap is not None:
        snaps = training.Snapshots(RolloutProbe(snap.pair, cfg), training.even_steps(per_interval * intervals,
                                                                                     snap.frames))
        snaps.start(model)
    hist = training.fit(model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                        Batches(train_pairs, row.regime, cfg, per_interval, seed), loss, epochs=intervals,
                        device=device, progress=False, on_step=snaps,
                        evaluate=lambda m: {"val_loss": float(loss(m(vin), vt)), "val_nll": float(nll(m(vin), vt))},
                        desc=label)
    return Trained(label=label, seed=seed, model=model.eval(), history=hist, params=training.count_params(model),
                   snapshots=snaps)


_SHARED: dict = {}  # the data a forked worker inherits (never pickled)


def _train_job(label: str, seed: int, snap: Snap | None, cfg: Config) -> Trained:
    torch.set_num_threads(1)
    return train_one(label, _SHARED["train"], _SHARED["val"], cfg, seed, "cpu", snap)


def run_grid(keys, train_pairs: data.Pairs, val_pairs: data.Pairs, cfg: Config, seeds, device="cpu",
             progress: bool = True, workers: int = 1, snap: Snap | None = None) -> dict:
    """{seed: {key: Trained}} for every seed and every trained row among ``keys``.

    workers > 1 (CPU only): train that many models at once in forked processes of one torch thread each; every
    run is seeded on its own, so the results are the same as with one worker at one thread. ``snap``: the runs
    it names (``Snap.wants``) also record training-GIF frames (``train_one``).
    """
    jobs = [(k, s, snap if snap is not None and snap.wants(k, s) else None) for s in seeds for k in keys
            if ROWS[k].trains]
    if workers > 1 and str(device) == "cpu" and len(jobs) > 1:
        _SHARED.update(train=train_pairs, val=val_pairs)
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_train_job, *job, cfg) for job in jobs]
                runs = training.grid(futures, lambda f: f.result(), desc="models", progress=progress)
        finally:
            _SHARED.clear()
    else:
        runs = training.grid(jobs, lambda k, s, sn: train_one(k, train_pairs, val_pairs, cfg, s, device, sn),
                             desc="models", progress=progress)
    return {s: {r.label: r for r in runs if r.seed == s} for s in seeds}


def has_row(trained: dict, key: str) -> bool:
    """Whether one seed's trained models can evaluate row ``key`` (rows that do not train use the faithful one)."""
    return (key if ROWS[key].trains else "faithful") in trained


def for_row(trained: dict, key: str, cfg: Config) -> torch.nn.Module:
    """The model that evaluates row ``key`` from one seed's trained models, set to the row's inference heads:
    a faithful-type model is rebuilt with ``infer_heads`` as the original did, unless the row is ``heads``."""
    row = ROWS[key]
    model = trained[key if row.trains else "faithful"].model
    if isinstance(model, models.Faithful):
        model.heads = cfg.train_heads if row.consistent_heads else cfg.infer_heads
    return model


# ---------------------------------------------------------------- inference

@torch.no_grad()
def teacher_forced(model, inp: torch.Tensor, batch: int = 128) -> np.ndarray:
    """(N, T, 2) one-step predictions with the true previous values."""
    dev = next(model.parameters()).device
    return torch.cat([model(inp[i:i + batch].to(dev)).cpu() for i in range(0, len(inp), batch)]).numpy()


@torch.no_grad()
def rollout(model, inp: torch.Tensor, first: int, sample: bool = False, seed: int = 0, batch: int = 256):
    """Autoregressive prediction of positions first..T-1: each prediction (the mean, or a draw from N(μ, σ)
    when ``sample``) replaces the true value before the next step. Returns (N, T - first) predictions and σ."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    preds, sds = [], []
    for i in range(0, len(inp), batch):
        cur, ss = inp[i:i + batch].clone().to(dev), []
        for t in range(first, cur.shape[1]):
            out = model(cur[:, :t + 1])[:, t]  # causal: row t depends on points < t only
            mu, sd = out[:, 0], out[:, 1].exp()
            cur[:, t, 2] = mu + sd * torch.randn(mu.shape, generator=gen, device=dev) if sample else mu
            ss.append(sd)
        preds.append(cur[:, first:, 2].cpu())
        sds.append(torch.stack(ss, 1).cpu())
    return torch.cat(preds).numpy(), torch.cat(sds).numpy()


def seen_at(test: data.Pairs, x) -> np.ndarray:
    """Series 1 (seen in full, the first half of the inference layout) interpolated at x (N, m)."""
    n = test.x.shape[1] // 2
    return np.stack([np.interp(xi, test.x[i, :n], test.y[i, :n]) for i, xi in enumerate(np.asarray(x))])


def first_step_stats(pred0, test: data.Pairs, first: int) -> dict:
    """The drop, measured: signed first-step error (prediction − truth), its mean absolute value, the share of
    pairs where it points towards the seen series, and its dependence on the offset gap c0 − c1 (slope, corr)."""
    y0 = test.y[:, first]
    err = np.asarray(pred0) - y0
    towards = np.sign(seen_at(test, test.x[:, first:first + 1])[:, 0] - y0)
    gap = test.c[:, 0] - test.c[:, 1]
    ok = len(gap) > 2 and err.std() > 0
    return {"first_step": float(err.mean()), "first_abs": float(np.abs(err).mean()),
            "toward": float((np.sign(err) == towards).mean()),
            "gap_slope": float(np.polyfit(gap, err, 1)[0]) if ok else 0.0,
            "gap_corr": float(np.corrcoef(err, gap)[0, 1]) if ok else 0.0}


def evaluate(model, row: Row, test: data.Pairs, cfg: Config) -> dict:
    """First-step statistics, rollout RMSE and teacher-forced R² on test pairs in the inference layout."""
    inp, first = to_tensor(test), cfg.first
    y = test.y[:, first:]
    tf = teacher_forced(model, inp)[:, first:]
    pred = tf[..., 0] if row.teacher_forced else rollout(model, inp, first)[0]
    r2 = 1 - ((y - tf[..., 0]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return {**first_step_stats(pred[:, 0], test, first), "rollout_rmse": float(np.sqrt(((pred - y) ** 2).mean())),
            "tf_r2": float(r2)}


@torch.no_grad()
def smooth_share(model, test: data.Pairs, cfg: Config) -> float:
    """The repaired model's mean blend weight on the smoothers (1 − its weight on the interpolation) over the
    target points, teacher-forced: near 0 where it interpolates, near 1 where it smooths the seen series."""
    inp = to_tensor(test).to(next(model.parameters()).device)
    w = torch.cat([model.blend_weights(inp[i:i + 128]) for i in range(0, len(inp), 128)])
    return float(1 - w[:, cfg.first:, 0].mean())


def target_loglik(model, test: data.Pairs, cfg: Config) -> float:
    """Mean over target points of log N(y_t | μ_t, σ_t), teacher-forced (= the chain rule of the joint)."""
    out = teacher_forced(model, to_tensor(test))[:, cfg.first:]
    y, mu, sd = test.y[:, cfg.first:], out[..., 0], np.exp(out[..., 1])
    return float((-0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)).mean())


def baseline(test: data.Pairs, cfg: Config) -> dict:
    """The parameter-free baseline: series 1 interpolated at each target x plus the context's mean offset."""
    n, first = cfg.n_points // 2, cfg.first
    level = (test.y[:, n:first] - seen_at(test, test.x[:, n:first])).mean(1, keepdims=True)
    mean = seen_at(test, test.x[:, first:]) + level
    y = test.y[:, first:]
    return {"mean": mean, **first_step_stats(mean[:, 0], test, first),
            "rollout_rmse": float(np.sqrt(((mean - y) ** 2).mean())), "tf_r2": float("nan"), "loglik": float("nan")}


def oracle(test: data.Pairs, cfg: Config, noise: float = 0.0, loglik: bool = False) -> dict:
    """The exact GP posterior of every test pair's targets given its observed points: mean, sd, and the metrics.

    ``loglik`` (noisy pairs): mean per-point log p(y_targets | observed). Also the flag-convention check: the mean
    probability the Gaussian posterior puts on c0 < c1 and the mean bound on what knowing c0 > c1 could add."""
    first, kern, pairs = cfg.first, test.kernel, list(zip(test.x, test.s, test.y))
    n_t = test.x.shape[1] - first
    obs = np.arange(test.x.shape[1]) < first
    post = ((m, np.sqrt(np.clip(np.diag(c), 0, None))) for m, c in
            (data.posterior(x, s, y, obs, kern, noise) for x, s, y in pairs))
    mean, sd = (np.array(a) for a in zip(*post))
    viol, bound = zip(*(data.order_violation(x, s, y, obs, kern, noise) for x, s, y in pairs))
    lls = [data.log_likelihood(x, s, y, obs, kern, noise) / n_t for x, s, y in pairs] if loglik else []
    return {"mean": mean, "sd": sd, **first_step_stats(mean[:, 0], test, first),
            "rollout_rmse": float(np.sqrt(((mean - test.y[:, first:]) ** 2).mean())), "tf_r2": float("nan"),
            "order_violation": float(np.mean(viol)), "order_bound_per_point": float(np.mean([b / n_t for b in bound])),
            "loglik": float(np.mean(lls)) if loglik else float("nan")}


# ---------------------------------------------------------------- tables over seeds

def runs_table(clean: dict, noisy: dict, test: data.Pairs, noisy_test: data.Pairs, cfg: Config,
               keys=None) -> pd.DataFrame:
    """One line per (seed, row): every metric of ``METRICS`` (loglik from the row's noisy-trained model, NaN where
    it was not trained on noisy pairs)."""
    lines = []
    for seed, trained in clean.items():
        for key in [k for k in keys or ROWS if has_row(trained, k)]:
            row = ROWS[key]
            m = evaluate(for_row(trained, key, cfg), row, test, cfg)
            src = noisy.get(seed, {})
            m["loglik"] = (target_loglik(for_row(src, key, cfg), noisy_test, cfg)
                           if has_row(src, key) else float("nan"))
            lines.append({"seed": seed, "key": key, "model": row.label, "cause": row.cause, **m})
    return pd.DataFrame(lines)


def summarise(runs: pd.DataFrame, refs: dict) -> pd.DataFrame:
    """Mean and sd over seeds per row (columns <metric> and <metric>_sd, n_seeds, and loglik_n: the seeds with a
    noisy-trained model), then the reference rows ``refs`` ({key: (label, metrics dict)}: the oracle and the
    baseline, sd 0)."""
    g = runs.groupby("key", sort=False)
    mean, sd = g[list(METRICS)].mean(), g[list(METRICS)].std(ddof=1).fillna(0.0)
    out = mean.join(sd.add_suffix("_sd"))
    out["n_seeds"] = g.size()
    out["loglik_n"] = g["loglik"].count()  # the noisy rows train on the first noisy_seeds seeds only
    out.insert(0, "model", g["model"].first())
    out.insert(1, "cause", g["cause"].first())
    for key, (label, m) in refs.items():
        out.loc[key] = {"model": label, "cause": "—", "n_seeds": 0, "loglik_n": 0,
                        **{k: m.get(k, float("nan")) for k in METRICS}, **{f"{k}_sd": 0.0 for k in METRICS}}
    return out


def compare(base: pd.Series, other: pd.Series, metric: str, floor: float = 0.0, higher_is_better: bool = False
            ) -> dict:
    """Is ``other`` different from ``base`` on ``metric`` (lower is better, unless ``higher_is_better``, as for
    ``loglik``) beyond seed noise?

    diff = other − base (its sign flipped when higher is better, so a negative diff is always an improvement); se
    from the two seed spreads; significant when |diff| > 2·se (and se is known: at least two seeds each).
    share = the part of base's excess over ``floor`` (the oracle) that ``other`` removes.
    """
    sign = -1.0 if higher_is_better else 1.0
    d = sign * float(other[metric] - base[metric])
    n = f"{metric}_n" if f"{metric}_n" in base.index else "n_seeds"  # seeds that measured it
    n1, n2 = int(base[n]), int(other[n])  # 0: a reference row (oracle, baseline), exact
    se = math.sqrt(base[f"{metric}_sd"] ** 2 / max(n1, 1) + other[f"{metric}_sd"] ** 2 / max(n2, 1))
    excess = sign * float(base[metric] - floor)
    share = -d / excess if excess > 1e-12 else 0.0
    known = n1 != 1 and n2 != 1 and math.isfinite(d)
    return {"diff": d, "se": se, "share": share, "known": known, "significant": known and abs(d) > 2 * se}


def verdict(c: dict) -> str:
    """The word for one comparison (glued into the prose, so it follows the numbers)."""
    if not c["known"]:
        return "cannot be decided with one seed"
    if not c["significant"]:
        return "does not matter (within seed noise)"
    if c["diff"] > 0:
        return "makes it worse"
    return "explains most of the error" if c["share"] >= 0.5 else "matters, but explains less than half of the error"


def beats(c: dict, than: str) -> str:
    """The word for a repair against its control (lower is better)."""
    if not c["known"]:
        return f"cannot be told apart from {than} with one seed"
    if not c["significant"]:
        return f"does no better than {than} (within seed noise)"
    return f"beats {than}" if c["diff"] < 0 else f"is worse than {than}"


def causes_table(summ: pd.DataFrame) -> pd.DataFrame:
    """One line per ablation present: the metric it is decided on, faithful vs ablation (mean ± sd), the
    difference, the share of the faithful model's excess over the oracle it removes, and the verdict."""
    base, floor = summ.loc["faithful"], summ.loc["oracle"]
    lines = []
    for key in [k for k in ABLATIONS if k in summ.index]:
        m = ROWS[key].decide_on
        c = compare(base, summ.loc[key], m, floor=float(floor[m]))
        lines.append({"key": key, "cause": ROWS[key].cause, "metric": m,
                      "faithful": pm(base, m), "ablation": pm(summ.loc[key], m), "difference": c["diff"],
                      "share of excess removed": c["share"], "verdict": verdict(c)})
    return pd.DataFrame(lines)


def pm(row: pd.Series, metric: str, digits: int = 3) -> str:
    v, s = float(row[metric]), float(row[f"{metric}_sd"])
    if not math.isfinite(v):
        return "—"
    return f"{v:.{digits}f} ± {s:.{digits}f}" if row["n_seeds"] >= 2 else f"{v:.{digits}f}"


def drop_verdict(summ: pd.DataFrame) -> str:
    """Is the faithful model's first step a steady drop towards the seen series, over seeds? Series 1 (seen) is
    always the lower curve, so a model that mixes in the seen series errs by −(its share)·gap: the slope of the
    first-step error against the offset gap must be negative beyond seed noise, with a clear correlation."""
    f = summ.loc["faithful"]
    n = int(f["n_seeds"])
    if n < 2:
        return "a single seed, which cannot show a steady drop"
    if f["gap_slope"] + 2 * f["gap_slope_sd"] / math.sqrt(n) < 0 and f["gap_corr"] < -0.3:
        return "a steady drop towards the seen series that grows with the gap"
    return "no steady drop towards the seen series"


# the original's numbers (docs/originals.md, from its README figure and logs): one plotted rollout whose seen
# series sat near −2 and target near +2 (a gap of about 4) and whose first prediction landed about 1.6 below the truth
ORIGINAL = {"first_err": -1.6, "gap": 4.0, "tf_r2": 0.87}


def slope_word(slope: float, original: float = ORIGINAL["first_err"] / ORIGINAL["gap"]) -> str:
    """Our first-step error per unit of offset gap against the original's one example (about −0.4)."""
    if slope >= 0:
        return "no slope towards the seen series at all, unlike"
    ratio = slope / original
    if 0.5 <= ratio <= 2:
        return "a slope close to"
    return "a steeper slope than" if ratio > 2 else "a shallower slope than"


COLUMNS = {"model": "model", "cause": "cause ablated", "first_step": "first step (signed)",
           "first_abs": "|first step|", "toward": "towards seen", "gap_slope": "slope vs gap",
           "rollout_rmse": "rollout RMSE", "tf_r2": "TF R²", "loglik": "log-lik/pt (noisy)"}


def display_table(summ: pd.DataFrame, columns=COLUMNS) -> pd.DataFrame:
    """The summary as mean ± sd strings for reading."""
    cells = {name: [pm(r, c) for _, r in summ.iterrows()] for c, name in columns.items() if c not in ("model", "cause")}
    return pd.DataFrame({"model": summ["model"], "cause ablated": summ["cause"], "seeds": summ["n_seeds"], **cells})


def glue(res, summ: pd.DataFrame, row: str = "{key}") -> None:
    """Glue every metric (mean) and its sd of every row of a summary as <row>_<metric>[_sd], ``row`` a key pattern
    over the row's key and columns (the OOD table: ``ood_{kernel}_{key}``); NaN becomes '—'."""
    rows = [{**r, "key": key, "metric": m} for key, r in summ.iterrows() for m in METRICS]
    res.glue_rows(rows, row + "_{metric}", lambda r: _finite_or_dash(r[r["metric"]]))
    res.glue_rows(rows, row + "_{metric}_sd", lambda r: _finite_or_dash(r[r["metric"] + "_sd"]))


def _finite_or_dash(v):
    return float(v) if math.isfinite(v) else "—"


def ood_table(clean: dict, tests: dict, noisy: dict, noisy_tests: dict, oracles: dict, baselines: dict,
              cfg: Config, keys=("faithful", "repaired")) -> pd.DataFrame:
    """Every kernel x (models over seeds, baseline, oracle): mean ± sd of every metric — trained on RBF only."""
    parts = []
    for kern, test in tests.items():
        runs = runs_table(clean, noisy, test, noisy_tests[kern], cfg, keys)
        s = summarise(runs, {"baseline": ("parameter-free baseline", baselines[kern]),
                           "oracle": ("GP oracle (knows the kernel)", oracles[kern])})
        s.insert(0, "kernel", kern)
        parts.append(s)
    return pd.concat(parts)


# ---------------------------------------------------------------- figures

SEEN, CONTEXT, TRUTH, MEAN, SAMPLE, BASE = "black", "tab:red", "0.35", "goldenrod", "lightskyblue", "tab:green"


def plot_pairs(pairs: data.Pairs, k: int = 4):
    """k pairs, sorted by x: the two series interleave, each at its own x values."""
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), sharey=True)
    srt = data.sort_by_x(pairs)
    for i, ax in enumerate(axes):
        for flag, lab, col in ((0, "series 0 (flag 0, larger offset)", "C0"),
                               (1, "series 1 (flag 1, lower curve)", "C3")):
            sel = srt.s[i] == flag
            ax.plot(srt.x[i, sel], srt.y[i, sel], ".-", ms=2, lw=0.8, color=col, label=lab)
        ax.set(title=f"c0 = {pairs.c[i, 0]:.2f}, c1 = {pairs.c[i, 1]:.2f}", xlabel="x")
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_histories(trained: dict, column: str = "val_nll"):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    plots.curves(axes[0], {k: t.history.df for k, t in trained.items()}, "train_loss", smooth=25, logy=False)
    axes[0].set_title("training loss (each row's own loss)")
    plots.curves(axes[1], {k: t.history.df for k, t in trained.items()}, column, logy=False)
    axes[1].set_title("validation Gaussian NLL (teacher-forced, own regime)")
    axes[1].legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def _panel(ax, test, i, cfg, pred=None, samples=None, band=None, base=None, title=""):
    n, first = cfg.n_points // 2, cfg.first
    x, y = test.x[i], test.y[i]
    ax.plot(x[:n], y[:n], ".", ms=2, color=SEEN, label="series 1 (seen)")
    ax.plot(x[n:first], y[n:first], "o", ms=3, color=CONTEXT, label="series 0 context")
    ax.plot(x[first:], y[first:], "-", lw=1, color=TRUTH, label="series 0 truth")
    if band is not None:
        m, sd = band
        ax.fill_between(x[first:], m - 2 * sd, m + 2 * sd, color="0.8", alpha=0.7, lw=0, label="oracle ±2σ")
    if base is not None:
        ax.plot(x[first:], base, ":", lw=1.2, color=BASE, label="parameter-free baseline")
    if samples is not None:
        for j, smp in enumerate(samples):
            ax.plot(x[first:], smp, "-", lw=0.7, color=SAMPLE, alpha=0.8, label="sample rollouts" if j == 0 else None)
    if pred is not None:
        ax.plot(x[first:], pred, "-", lw=1.8, color=MEAN, label="mean rollout")
    ax.set_title(title, fontsize="small")


def plot_rollouts(trained: dict, test: data.Pairs, cfg: Config, oracle_out: dict, base_out: dict, index: int = 0,
                  n_samples: int = 5, seed: int = 0, keys=None):
    """One test pair, one panel per row's model (one seed): mean rollout (gold), sample rollouts (light blue), the
    oracle's mean ± 2σ band behind and the baseline dotted; the oracle itself in the last panel."""
    keys = [k for k in (keys or ROWS) if has_row(trained, k)]
    inp = to_tensor(test)[index:index + 1]
    fig, axes = plots.panels(len(keys) + 1, 3, size=(4.2, 3.0), sharex=True, sharey=True)
    band = (oracle_out["mean"][index], oracle_out["sd"][index])
    base = base_out["mean"][index]
    for ax, key in zip(axes, keys):
        row, model = ROWS[key], for_row(trained, key, cfg)
        if row.teacher_forced:
            pred, samples = teacher_forced(model, inp)[0, cfg.first:, 0], None
        else:
            pred = rollout(model, inp, cfg.first)[0][0]
            samples = rollout(model, inp.expand(n_samples, -1, -1), cfg.first, sample=True, seed=seed)[0]
        _panel(ax, test, index, cfg, pred, samples, band, base, row.label)
    _panel(axes[len(keys)], test, index, cfg, pred=band[0], band=band, base=base,
           title="GP oracle: posterior mean ± 2σ")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def rollout_gif(trained: dict, test: data.Pairs, cfg: Config, oracle_out: dict, index: int, path,
                keys=("faithful", "repaired"), fps: float = 5, dpi: int = 90):
    """Training GIF of one test pair's mean rollout, one panel per row (the runs that recorded
    ``Trained.snapshots``, see ``run_grid(..., snap=...)``), redrawn at every recorded step over the truth, the seen
    series, the context and the oracle's mean ± 2σ band; each panel is titled with its first-step error
    (prediction − truth)."""
    keys = [k for k in keys if k in trained and trained[k].snapshots is not None]
    if not keys:
        raise ValueError("no row recorded training frames: train them with run_grid(..., snap=snap_spec(...))")
    at = {k: trained[k].snapshots.at for k in keys}
    preds = {k: [pred for pred, _ in trained[k].snapshots.frames] for k in keys}
    mean, sd = oracle_out["mean"][index], oracle_out["sd"][index]
    y, y0 = test.y[index], test.y[index, cfg.first]
    lo, hi = min(y.min(), (mean - 2 * sd).min()), max(y.max(), (mean + 2 * sd).max())
    pad = 0.2 * (hi - lo)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.9), dpi=dpi, sharey=True, squeeze=False)
    lines, dots, x0 = [], [], test.x[index, cfg.first]
    for ax, k in zip(axes[0], keys):
        _panel(ax, test, index, cfg, pred=preds[k][0], band=(mean, sd))
        lines.append(ax.lines[-1])  # the mean rollout, drawn last
        dots.append(ax.plot([x0], [preds[k][0][0]], "o", ms=6, color=MEAN, mec="black", mew=0.8,
                            label="first step")[0])
        ax.set(ylim=(lo - pad, hi + pad), xlabel="x")
    axes[0, 0].set_ylabel("y")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize="small", frameon=False)
    sup = fig.suptitle(" ", fontsize="medium")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    total = max(int(at[k][-1]) for k in keys)

    def update(i):
        for ax, line, dot, k in zip(axes[0], lines, dots, keys):
            pred = preds[k][min(i, len(preds[k]) - 1)]
            line.set_ydata(pred)
            dot.set_ydata([pred[0]])
            ax.set_title(f"{ROWS[k].label}: first-step error {pred[0] - y0:+.2f}", fontsize="small")
        step = max(int(at[k][min(i, len(at[k]) - 1)]) for k in keys)
        sup.set_text(f"mean rollout of one test pair · training step {step:,} of {total:,}")

    return animate.write_gif(animate.render(fig, update, max(len(at[k]) for k in keys)), path, fps=fps)


def plot_drop(trained: dict, test: data.Pairs, cfg: Config, oracle_out: dict, base_out: dict,
              keys=("faithful", "heads", "repaired")):
    """First-step error of every test pair against the offset gap c0 - c1 (one seed): a model that copied the
    seen series would sit on the dotted line (error = −gap); the oracle and the baseline for reference."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    gap = test.c[:, 0] - test.c[:, 1]
    y0 = test.y[:, cfg.first]
    inp = to_tensor(test)
    for key in [k for k in keys if has_row(trained, k)]:
        pred = teacher_forced(for_row(trained, key, cfg), inp)[:, cfg.first, 0]  # the first step is the same either way
        ax.scatter(gap, pred - y0, s=8, alpha=0.6, label=ROWS[key].label)
    ax.scatter(gap, base_out["mean"][:, 0] - y0, s=8, alpha=0.6, marker="x", color=BASE, label="baseline")
    ax.scatter(gap, oracle_out["mean"][:, 0] - y0, s=8, alpha=0.6, color="k", label="GP oracle")
    ax.plot([0, gap.max()], [0, -gap.max()], "k:", lw=1, label="error = −gap (copying series 1)")
    ax.set(xlabel="offset gap c0 − c1", ylabel="first-step error (prediction − truth)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def head_majority(weights: np.ndarray, t: int, k: int = 5, top: int = 10) -> np.ndarray:
    """The original's attention plot points: each head's top-k keys of row t, the ``top`` most frequent."""
    idx = np.argsort(-weights[:, t, :t], axis=1)[:, :k].ravel()
    vals, counts = np.unique(idx, return_counts=True)
    return vals[np.argsort(-counts, kind="stable")[:top]]


def plot_attention(trained: dict, test: data.Pairs, cfg: Config, index: int = 0,
                   keys=("faithful", "series_qk", "repaired"), offsets=(0, None)):
    """For chosen predicted points (the first one, and one in the middle of the rollout), the attention weight on
    every earlier point (mean over heads) against that point's x; series 1 black, series 0 red; orange dots: the
    original's head-majority of each head's top 5; the dashed line is the query's x."""
    n, first, T = cfg.n_points // 2, cfg.first, cfg.n_points
    ts = [first + (o if o is not None else (T - first) // 2) for o in offsets]
    inp = to_tensor(test)[index:index + 1]
    keys = [k for k in keys if has_row(trained, k)]
    fig, axes = plt.subplots(len(ts), len(keys), figsize=(4.2 * len(keys), 2.7 * len(ts)), squeeze=False)
    x = test.x[index]
    for c, key in enumerate(keys):
        model = for_row(trained, key, cfg)
        faithful = isinstance(model, models.Faithful)
        with torch.no_grad():
            dev = inp.to(next(model.parameters()).device)
            heads = model.head_weights(dev)[0].cpu().numpy() if faithful else None
            att = heads.mean(0) if faithful else model.attention(dev)[0].cpu().numpy()
        for r, t in enumerate(ts):
            ax, w = axes[r, c], att[t, :t]
            ax.vlines(x[:min(t, n)], 0, w[:n], color=SEEN, lw=1, label="series 1 points")
            if t > n:
                ax.vlines(x[n:t], 0, w[n:t], color=CONTEXT, lw=1.4, label="series 0 points")
            if faithful:
                top = head_majority(heads, t)
                ax.plot(x[top], w[top], "o", ms=4, color="darkorange", label="head-majority top 5")
            ax.axvline(x[t], ls="--", color="0.4", lw=1, label="query x")
            ax.set_title(f"{ROWS[key].label}: point {t - first + 1} of the rollout", fontsize="small")
            ax.set(xlabel="x of the attended point", ylabel="weight" if c == 0 else None)
    axes[0, 0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def attention_stats(trained: dict, test: data.Pairs, cfg: Config, key: str) -> dict:
    """At the first predicted point (64 test pairs): the attention share on series-0 points, the largest weight
    relative to a uniform 1/t (1 = uniform attention), and for the faithful model the standard deviation of its
    scaled scores over the points it sees (near 0: the softmax is flat whatever the ReLU and the heads do)."""
    n, first = cfg.n_points // 2, cfg.first
    model = for_row(trained, key, cfg)
    inp = to_tensor(test)[:64].to(next(model.parameters()).device)
    with torch.no_grad():
        att = model.attention(inp)[:, first, :first].cpu()
        sd = float(model.scores(inp)[:, :, first, :first].std()) if isinstance(model, models.Faithful) else float("nan")
    return {"own_series": float(att[:, n:].sum(-1).mean()), "peak_vs_uniform": float(att.max(-1).values.mean() * first),
            "score_sd": sd}
