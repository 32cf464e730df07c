"""Chapter 2 experiment: train the faithful model, one ablation per cause and the repaired model on GP pairs;
evaluate teacher-forced and autoregressive predictions against the truth and the exact GP posterior (the oracle).

Rows of every table (``ROWS``): the faithful model, one switch flipped per cause of the drop, and the repaired
model. ``teacher_forced`` needs no training: it is the faithful model evaluated with the true previous values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .. import train as training
from ..data import gp as data
from ..models import gp as models
from ..viz import plots

REGIMES = ("shuffle", "full_infer", "half_half")


@dataclass(frozen=True)
class Row:
    label: str
    cause: str
    model: str = "faithful"          # faithful | repaired
    switches: dict = field(default_factory=dict)
    regime: str = "shuffle"
    loss: str = "original"
    teacher_forced: bool = False     # evaluate the rollout with the true previous values (no training)
    trains: bool = True


ROWS = {
    "faithful": Row("Faithful (original)", "—"),
    "series_qk": Row("+ series flag in q/k", "(1) series identity not in q/k", switches={"series_qk": True}),
    "full_infer": Row("train in inference order", "(2) training order ≠ inference order", regime="full_infer"),
    "half_half": Row("half_half regime", "(2) half of each order", regime="half_half"),
    "teacher_forced": Row("teacher-forced rollout", "(3) exposure bias", teacher_forced=True, trains=False),
    "no_relu": Row("no ReLU before softmax", "(4) ReLU keeps attention broad", switches={"no_relu": True}),
    "exact_nll": Row("exact Gaussian NLL", "(5) non-exact loss", loss="exact"),
    "repaired": Row("Repaired", "all five", model="repaired", regime="full_infer", loss="exact"),
}
TRAINED = tuple(k for k, r in ROWS.items() if r.trains)


@dataclass
class Config:
    n_points: int = 400      # points per example (half per series)
    context: int = 50        # training: the first `context` points of each sequence are not targets
    context_p: int = 20      # inference: points of series 0 seen before the rollout starts
    embed: int = 512         # faithful embedding width
    width: int = 64          # repaired model width
    layers: int = 2          # repaired model blocks per stream
    heads: int = 4           # repaired model attention heads
    self_feed: bool = True   # repaired model: train on its own one-step predictions (models.Repaired)
    batch: int = 64
    lr: float = 3e-4
    steps: int = 20000
    evals: int = 10          # validation evaluations (= "epochs" of train.fit) over the run

    @property
    def first(self) -> int:
        """Index of the first predicted point in the inference layout (series 1, then series 0)."""
        return self.n_points // 2 + self.context_p


def to_tensor(pairs: dict, device="cpu") -> torch.Tensor:
    """Packed (N, T, 3) = (x, flag, y) float32 tensor in the pairs' own layout."""
    return torch.as_tensor(np.stack([pairs["x"], pairs["s"], pairs["y"]], -1), dtype=torch.float32, device=device)


def arrange(raw: torch.Tensor, srt: torch.Tensor, regime: str, gen: torch.Generator) -> torch.Tensor:
    """Order a batch of examples for training: ``shuffle`` = random permutation of all points; ``full_infer`` =
    the inference order (series 1 sorted by x, then series 0 sorted); ``half_half`` = each example either way."""
    if regime not in REGIMES:
        raise ValueError(f"regime={regime!r} is not allowed; choose one of {', '.join(REGIMES)}")
    if regime == "full_infer":
        return srt
    perm = torch.argsort(torch.rand(raw.shape[:2], generator=gen), dim=1)
    shuffled = torch.gather(raw, 1, perm[..., None].expand_as(raw))
    if regime == "shuffle":
        return shuffled
    pick = torch.rand(len(raw), generator=gen) < 0.5
    return torch.where(pick[:, None, None], shuffled, srt)


class Batches:
    """``steps_per_epoch`` random batches per pass, arranged by the regime; targets = positions >= context."""

    def __init__(self, pairs: dict, regime: str, cfg: Config, steps_per_epoch: int, seed: int):
        self.raw, self.srt = to_tensor(pairs), to_tensor(data.sort_by_x(pairs))
        self.regime, self.cfg, self.steps = regime, cfg, steps_per_epoch
        self.gen = torch.Generator().manual_seed(seed)
        T = self.raw.shape[1]
        self.mask = (torch.arange(T) >= cfg.context).float()

    def batch(self, idx):
        inp = arrange(self.raw[idx], self.srt[idx], self.regime, self.gen)
        return inp, torch.stack([inp[..., 2], self.mask.expand(len(idx), -1)], -1)

    def __iter__(self):
        for _ in range(self.steps):
            yield self.batch(torch.randint(len(self.raw), (self.cfg.batch,), generator=self.gen))


def build(row: Row, cfg: Config) -> torch.nn.Module:
    if row.model == "repaired":
        return models.Repaired(width=cfg.width, heads=cfg.heads, layers=cfg.layers, self_feed=cfg.self_feed)
    return models.Faithful(embed=cfg.embed, **row.switches)


@dataclass
class Trained:
    key: str
    row: Row
    model: torch.nn.Module
    history: training.History
    params: int


def train_row(key: str, train_pairs: dict, val_pairs: dict, cfg: Config, seed: int, device="cpu") -> Trained:
    """Train one row's model with Adam (cfg.lr), batch cfg.batch, cfg.steps steps in its regime and loss."""
    row = ROWS[key]
    torch.manual_seed(seed)
    model = build(row, cfg).to(device)
    per_epoch = max(1, cfg.steps // cfg.evals)
    batches = Batches(train_pairs, row.regime, cfg, per_epoch, seed)
    val = Batches(val_pairs, row.regime, cfg, 1, seed + 1).batch(torch.arange(min(256, len(val_pairs["x"]))))
    vin, vt = val[0].to(device), val[1].to(device)
    loss = models.masked_loss(row.loss)
    nll = models.masked_loss("exact")
    hist = training.fit(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), batches, loss,
                        epochs=max(1, cfg.steps // per_epoch), device=device, progress=False,
                        evaluate=lambda m: {"val_loss": float(loss(m(vin), vt)), "val_nll": float(nll(m(vin), vt))},
                        desc=key)
    return Trained(key, row, model.eval(), hist, models.count_params(model))


def train_rows(keys, train_pairs, val_pairs, cfg: Config, seed: int, device="cpu", progress: bool = True) -> dict:
    from tqdm.std import tqdm

    return {k: train_row(k, train_pairs, val_pairs, cfg, seed, device)
            for k in tqdm(keys, desc="models", disable=not progress, mininterval=5)}


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
        cur = inp[i:i + batch].clone().to(dev)
        ys, ss = [], []
        for t in range(first, cur.shape[1]):
            out = model(cur[:, :t + 1])[:, t]  # causal: row t depends on points < t only
            mu, sd = out[:, 0], out[:, 1].exp()
            yt = mu + sd * torch.randn(mu.shape, generator=gen, device=dev) if sample else mu
            cur[:, t, 2] = yt
            ys.append(yt)
            ss.append(sd)
        preds.append(torch.stack(ys, 1).cpu())
        sds.append(torch.stack(ss, 1).cpu())
    return torch.cat(preds).numpy(), torch.cat(sds).numpy()


def gauss_loglik(y, mu, sd):
    return -0.5 * ((y - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def evaluate(tr: Trained, test: dict, cfg: Config) -> dict:
    """First-step error (signed: the drop), |first-step error|, rollout RMSE and teacher-forced R² on test pairs
    (inference layout, sorted) whose targets are series 0 after its first context_p points."""
    inp, first = to_tensor(test), cfg.first
    y = test["y"][:, first:]
    tf = teacher_forced(tr.model, inp)[:, first:]
    pred = tf[..., 0] if tr.row.teacher_forced else rollout(tr.model, inp, first)[0]
    err0 = pred[:, 0] - y[:, 0]
    r2 = 1 - ((y - tf[..., 0]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return {"first_step": float(err0.mean()), "first_abs": float(np.abs(err0).mean()),
            "rollout_rmse": float(np.sqrt(((pred - y) ** 2).mean())), "tf_r2": float(r2)}


def target_loglik(model, test: dict, cfg: Config) -> float:
    """Mean over target points of log N(y_t | μ_t, σ_t), teacher-forced (= the chain rule of the joint)."""
    out = teacher_forced(model, to_tensor(test))[:, cfg.first:]
    return float(gauss_loglik(test["y"][:, cfg.first:], out[..., 0], np.exp(out[..., 1])).mean())


def oracle(test: dict, cfg: Config, noise: float = 0.0, loglik: bool = False) -> dict:
    """The exact GP posterior of every test pair's targets given its observed points: mean, sd, and the metrics.

    ``loglik`` (noisy pairs): mean per-point log p(y_targets | observed). Also the flag-convention check: the mean
    probability the Gaussian posterior puts on c0 < c1 and the mean bound on what knowing c0 > c1 could add."""
    first, kern = cfg.first, test["kernel"]
    T = test["x"].shape[1]
    obs = np.arange(T) < first
    means, sds, lls, viol, bound = [], [], [], [], []
    for x, s, y in zip(test["x"], test["s"], test["y"]):
        m, c = data.posterior(x, s, y, obs, kern, noise)
        means.append(m)
        sds.append(np.sqrt(np.clip(np.diag(c), 0, None)))
        if loglik:
            lls.append(data.log_likelihood(x, s, y, obs, kern, noise) / (T - first))
        p, b = data.order_violation(x, s, y, obs, kern, noise)
        viol.append(p)
        bound.append(b / (T - first))
    mean, sd = np.array(means), np.array(sds)
    y = test["y"][:, first:]
    err0 = mean[:, 0] - y[:, 0]
    out = {"mean": mean, "sd": sd, "first_step": float(err0.mean()), "first_abs": float(np.abs(err0).mean()),
           "rollout_rmse": float(np.sqrt(((mean - y) ** 2).mean())), "tf_r2": float("nan"),
           "order_violation": float(np.mean(viol)), "order_bound_per_point": float(np.mean(bound))}
    if loglik:
        out["loglik"] = float(np.mean(lls))
    return out


# ---------------------------------------------------------------- tables

def results_table(clean: dict, noisy: dict, test: dict, noisy_test: dict, cfg: Config, oracle_clean: dict,
                  oracle_noisy: dict) -> pd.DataFrame:
    """One row per model (+ the oracle): first-step drop, |first-step error|, rollout RMSE, teacher-forced R² on
    noise-free pairs, and target log-likelihood per point on noisy pairs (models trained on noisy pairs)."""
    rows = []
    for key, row in ROWS.items():
        tr = clean[key if row.trains else "faithful"]
        tr = replace(tr, row=row)
        m = evaluate(tr, test, cfg)
        src = noisy.get(key if row.trains else "faithful")
        m["loglik"] = target_loglik(src.model, noisy_test, cfg) if src is not None else float("nan")
        rows.append({"key": key, "model": row.label, "cause": row.cause, "params": tr.params, "regime": row.regime,
                     "loss": row.loss, **m})
    rows.append({"key": "oracle", "model": "GP oracle (exact posterior)", "cause": "—", "params": 0,
                 "regime": "—", "loss": "—", **{k: oracle_clean[k] for k in ("first_step", "first_abs",
                                                                         "rollout_rmse", "tf_r2")},
                 "loglik": oracle_noisy["loglik"]})
    return pd.DataFrame(rows)


COLUMNS = {"model": "model", "cause": "cause ablated", "first_step": "first-step error (drop)",
           "first_abs": "mean |first-step error|", "rollout_rmse": "rollout RMSE", "tf_r2": "teacher-forced R²",
           "loglik": "target log-lik / point (noisy)"}


def styled(table: pd.DataFrame, columns=COLUMNS):
    cols = [c for c in columns if c in table]
    return table[cols].rename(columns=columns).style.hide(axis="index").format(na_rep="—", precision=3)


def ood_table(clean: dict, noisy: dict, tests: dict, noisy_tests: dict, oracles: dict, cfg: Config,
              keys=("faithful", "repaired")) -> pd.DataFrame:
    """Every kernel x (models, oracle): first-step error, rollout RMSE, target log-lik — trained on RBF only."""
    rows = []
    for kern, test in tests.items():
        for key in keys:
            m = evaluate(clean[key], test, cfg)
            m["loglik"] = target_loglik(noisy[key].model, noisy_tests[kern], cfg) if key in noisy else float("nan")
            rows.append({"kernel": kern, "key": key, "model": ROWS[key].label, **m})
        o = oracles[kern]
        rows.append({"kernel": kern, "key": "oracle", "model": "GP oracle (knows the kernel)",
                     **{k: o[k] for k in ("first_step", "first_abs", "rollout_rmse", "tf_r2", "loglik")}})
    return pd.DataFrame(rows)


def glue_table(res, table: pd.DataFrame, prefix: str = "") -> None:
    """Glue every metric of every row as <prefix><key>_<metric> (NaN becomes the string '—')."""
    for _, r in table.iterrows():
        for col in ("first_step", "first_abs", "rollout_rmse", "tf_r2", "loglik"):
            v = float(r[col])
            res.glue(f"{prefix}{r['key']}_{col}", v if math.isfinite(v) else "—")


# ---------------------------------------------------------------- figures

SEEN, CONTEXT, TRUTH, MEAN, SAMPLE = "black", "tab:red", "0.35", "goldenrod", "lightskyblue"


def plot_pairs(pairs: dict, k: int = 4):
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), sharey=True)
    n = pairs["x"].shape[1] // 2
    for i, ax in enumerate(axes):
        for sl, lab, col in ((slice(n, None), "series 0 (flag 0, larger offset)", "C0"),
                             (slice(0, n), "series 1 (flag 1, lower curve)", "C3")):
            ax.plot(pairs["x"][i, sl], pairs["y"][i, sl], ".-", ms=2, lw=0.8, color=col, label=lab)
        ax.set(title=f"c0 = {pairs['c'][i, 0]:.2f}, c1 = {pairs['c'][i, 1]:.2f}", xlabel="x")
    axes[0].set_ylabel("y")
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_histories(trained: dict, column: str = "val_nll"):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    plots.curves(axes[0], {k: t.history.df for k, t in trained.items()}, "train_loss", smooth=25, logy=False)
    axes[0].set_title("training loss (each row's own loss)")
    plots.curves(axes[1], {k: t.history.df for k, t in trained.items()}, column, logy=False)
    axes[1].set_title("validation Gaussian NLL (teacher-forced)")
    axes[1].legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    return fig


def _panel(ax, test, i, cfg, pred=None, samples=None, band=None, title=""):
    n, first = cfg.n_points // 2, cfg.first
    x, y = test["x"][i], test["y"][i]
    ax.plot(x[:n], y[:n], ".", ms=2, color=SEEN, label="series 1 (seen)")
    ax.plot(x[n:first], y[n:first], "o", ms=3, color=CONTEXT, label="series 0 context")
    ax.plot(x[first:], y[first:], "-", lw=1, color=TRUTH, label="series 0 truth")
    if band is not None:
        m, sd = band
        ax.fill_between(x[first:], m - 2 * sd, m + 2 * sd, color="0.8", alpha=0.7, lw=0, label="oracle ±2σ")
    if samples is not None:
        for j, smp in enumerate(samples):
            ax.plot(x[first:], smp, "-", lw=0.7, color=SAMPLE, alpha=0.8, label="sample rollouts" if j == 0 else None)
    if pred is not None:
        ax.plot(x[first:], pred, "-", lw=1.8, color=MEAN, label="mean rollout")
    ax.set_title(title, fontsize="small")


def plot_rollouts(trained: dict, test: dict, cfg: Config, oracle_out: dict, index: int = 0, n_samples: int = 5,
                  seed: int = 0):
    """One test pair, one panel per row's model: mean rollout (gold), sample rollouts (light blue), the oracle's
    mean ± 2σ band behind, and the oracle itself in the last panel."""
    keys = [k for k in ROWS if ROWS[k].trains or ROWS[k].teacher_forced]
    inp = to_tensor(test)[index:index + 1]
    fig, axes = plots.panels(len(keys) + 1, 3, size=(4.2, 3.0), sharex=True, sharey=True)
    band = (oracle_out["mean"][index], oracle_out["sd"][index])
    for ax, key in zip(axes, keys):
        row = ROWS[key]
        tr = trained[key if row.trains else "faithful"]
        if row.teacher_forced:
            pred = teacher_forced(tr.model, inp)[0, cfg.first:, 0]
            samples = None
        else:
            pred = rollout(tr.model, inp, cfg.first)[0][0]
            samples = rollout(tr.model, inp.expand(n_samples, -1, -1), cfg.first, sample=True, seed=seed)[0]
        _panel(ax, test, index, cfg, pred, samples, band, row.label)
    _panel(axes[len(keys)], test, index, cfg, pred=band[0], band=band, title="GP oracle: posterior mean ± 2σ")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_drop(trained: dict, test: dict, cfg: Config, oracle_out: dict, keys=("faithful", "series_qk", "repaired")):
    """First-step error of every test pair against the offset gap c0 - c1: the faithful model's drop follows the
    gap (it copies the lower series), the repaired model and the oracle do not."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    gap = test["c"][:, 0] - test["c"][:, 1]
    y0 = test["y"][:, cfg.first]
    inp = to_tensor(test)
    for key in keys:
        pred = teacher_forced(trained[key].model, inp)[:, cfg.first, 0]  # the first step is the same either way
        ax.scatter(gap, pred - y0, s=8, alpha=0.6, label=ROWS[key].label)
    ax.scatter(gap, oracle_out["mean"][:, 0] - y0, s=8, alpha=0.6, color="k", label="GP oracle")
    ax.plot([0, gap.max()], [0, -gap.max()], "k:", lw=1, label="error = −gap (copying series 1)")
    ax.set(xlabel="offset gap c0 − c1", ylabel="first-step error (prediction − truth)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def gap_correlation(tr: Trained, test: dict, cfg: Config) -> float:
    """Correlation over test pairs between the first-step error and the offset gap c0 - c1 (-1: copying series 1)."""
    err = teacher_forced(tr.model, to_tensor(test))[:, cfg.first, 0] - test["y"][:, cfg.first]
    gap = test["c"][:, 0] - test["c"][:, 1]
    return float(np.corrcoef(err, gap)[0, 1]) if len(gap) > 2 and err.std() > 0 else 0.0


def plot_attention(trained: dict, test: dict, cfg: Config, index: int = 0, keys=("faithful", "series_qk", "repaired"),
                   offsets=(0, None)):
    """For chosen predicted points (the first one, and one in the middle of the rollout), the attention weight on
    every earlier point, against that point's x; series 1 black, series 0 red; the dashed line is the query's x."""
    n, first, T = cfg.n_points // 2, cfg.first, cfg.n_points
    ts = [first + (o if o is not None else (T - first) // 2) for o in offsets]
    inp = to_tensor(test)[index:index + 1]
    fig, axes = plt.subplots(len(ts), len(keys), figsize=(4.2 * len(keys), 2.7 * len(ts)), squeeze=False)
    x = test["x"][index]
    for c, key in enumerate(keys):
        with torch.no_grad():
            att = trained[key].model.attention(inp.to(next(trained[key].model.parameters()).device))[0].cpu().numpy()
        for r, t in enumerate(ts):
            ax, w = axes[r, c], att[t, :t]
            ax.vlines(x[:min(t, n)], 0, w[:n], color=SEEN, lw=1, label="series 1 points")
            if t > n:
                ax.vlines(x[n:t], 0, w[n:t], color=CONTEXT, lw=1.4, label="series 0 points")
            ax.axvline(x[t], ls="--", color="0.4", lw=1, label="query x")
            ax.set_title(f"{ROWS[key].label}: point {t - first + 1} of the rollout", fontsize="small")
            ax.set(xlabel="x of the attended point", ylabel="weight" if c == 0 else None)
    axes[0, 0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def attention_mass(trained: dict, test: dict, cfg: Config, key: str) -> float:
    """Mean attention the first predicted point puts on series-0 points (its own series), over test pairs."""
    n, first = cfg.n_points // 2, cfg.first
    model = trained[key].model
    with torch.no_grad():
        att = model.attention(to_tensor(test)[:64].to(next(model.parameters()).device))[:, first, :first].cpu()
    return float(att[:, n:].sum(-1).mean())
