"""Chapter 2 at the original's geometry, repaired model only: evidence for the targets where the full profile
(every row, 20k steps each) cannot run.

Same data and code as the notebook (``nbhelpers.chapters.ch02_gp_sequences.experiment``): 150k pairs of 400
distinct points (80/20 split), the original's inference layout (all of series 1, then 50 series-0 points picked
among its lowest 120), the repaired model trained in that layout with the exact NLL, Adam, batch 64. Prints the
metrics on the first ``--n-eval`` test pairs after every evaluation interval (``steps / evals`` steps: one pass over
``Batches``), then a final JSON line on all ``--n-test`` sorted test pairs (mean |first-step error|, rollout RMSE;
with ``--noise`` also the teacher-forced target log-likelihood per point against the exact GP posterior's, and the
gap).

Model defaults are the chapter's full profile (``ch.Config``: 64 x 2, self-feeding, Adam 3e-4, a correction on a
learned blend of the interpolation and local-linear smoothers of the seen series; ``--no-smooth`` trains the
interpolation-only control, ``--no-on-baseline`` the attention-only control).

    python tools/ch02_full_geometry.py --steps 3000 --evals 3 --n-train 50000   # noise-free (1 CPU thread)
    python tools/ch02_full_geometry.py --steps 4000 --noise 0.1                 # noisy variant, loglik vs the oracle
    python tools/ch02_full_geometry.py --steps 4000 --no-self-feed              # trained on true values only
    python tools/ch02_full_geometry.py --steps 1000 --noise 0.1 --no-smooth     # the base: interpolation alone
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from nbhelpers import runtime
from nbhelpers import train as training
from nbhelpers.chapters.ch02_gp_sequences import data
from nbhelpers.chapters.ch02_gp_sequences import experiment as ch
from nbhelpers.chapters.ch02_gp_sequences import models


def positive(kind):
    def parse(text):
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=positive(int), default=4000)
    ap.add_argument("--width", type=positive(int), default=ch.Config.width, help="repaired model width")
    ap.add_argument("--layers", type=positive(int), default=ch.Config.layers, help="blocks per stream")
    ap.add_argument("--lr", type=positive(float), default=ch.Config.lr)
    ap.add_argument("--self-feed", action=argparse.BooleanOptionalAction, default=ch.Config.self_feed,
                    help="train on its own one-step predictions (models.Repaired)")
    ap.add_argument("--on-baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="the repaired model (a correction on the parameter-free baseline); off: the attention-only "
                         "control that predicts mu from scratch")
    ap.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                    help="the base is a learned blend of the interpolation and local-linear smoothers (models.Repaired)"
                         "; off: the interpolation alone (the repair before the noisy target was met)")
    ap.add_argument("--noise", type=float, default=0.0, help="observation noise sigma_n (0 = noise-free pairs)")
    ap.add_argument("--n-train", type=positive(int), default=150_000)
    ap.add_argument("--n-test", type=positive(int), default=500)
    ap.add_argument("--n-eval", type=positive(int), default=64, help="test pairs for the progress lines")
    ap.add_argument("--evals", type=positive(int), default=8)
    ap.add_argument("--threads", type=positive(int), default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    if a.noise < 0:
        ap.error(f"--noise must be >= 0, got {a.noise}")
    if a.width % ch.Config.heads:
        ap.error(f"--width must be divisible by the {ch.Config.heads} attention heads, got {a.width}")
    device = runtime.pick_device(a.device)
    torch.set_num_threads(a.threads)

    t0 = time.time()
    cfg = ch.Config(width=a.width, layers=a.layers, steps=a.steps, lr=a.lr, evals=a.evals, self_feed=a.self_feed)
    n_fit = int(0.8 * a.n_train)
    train = data.make_pairs(n_fit, cfg.n_points, noise=a.noise, seed=0, device=device)
    test = data.inference_pairs(a.n_test, cfg.n_points, cfg.context_p, cfg.pool, 2, noise=a.noise)
    head = test.head(a.n_eval)
    noisy = a.noise > 0
    ref = ch.oracle(head, cfg, noise=a.noise, loglik=noisy)
    base = ch.baseline(head, cfg)
    print(f"data {time.time() - t0:.0f} s; on {a.n_eval} pairs: oracle first |err| {ref['first_abs']:.4f}, "
          f"RMSE {ref['rollout_rmse']:.4f}" + (f", loglik {ref['loglik']:.4f}" if noisy else "")
          + f"; parameter-free baseline first |err| {base['first_abs']:.4f}, RMSE {base['rollout_rmse']:.4f}",
          flush=True)

    key = "repaired" if a.on_baseline else "attention_only"
    row = ch.ROWS[key]
    if a.on_baseline:
        row = dataclasses.replace(row, switches={**row.switches, "smooth": a.smooth})
    torch.manual_seed(0)
    model = ch.build(row, cfg).to(device)
    batches = ch.Batches(train, row.regime, cfg, max(1, cfg.steps // cfg.evals), seed=0)  # one evaluation interval

    def metrics(m, pairs, oracle_loglik=None):
        r = ch.evaluate(m, row, pairs, cfg)
        if noisy:
            r["loglik"] = ch.target_loglik(m, pairs, cfg)
            r["oracle_loglik"] = oracle_loglik
            r["gap"] = oracle_loglik - r["loglik"]
        return r

    def progress(m):
        r = metrics(m, head, ref.get("loglik"))
        print(f"  {time.time() - t0:5.0f} s", {k: round(v, 4) for k, v in r.items()}, flush=True)
        return r

    hist = training.fit(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), batches, models.masked_loss(row.loss),
                        epochs=cfg.evals, device=device, progress=False, evaluate=progress, desc=key)
    if hist.status != "ok":
        raise SystemExit(f"training stopped: {hist.reason}")
    model.eval()
    full_ref = ch.oracle(test, cfg, noise=a.noise, loglik=noisy)
    final = metrics(model, test, full_ref.get("loglik"))
    final.update(oracle_first_abs=full_ref["first_abs"], oracle_rmse=full_ref["rollout_rmse"])
    fb = ch.baseline(test, cfg)
    final.update(baseline_first_abs=fb["first_abs"], baseline_rmse=fb["rollout_rmse"])
    out = {**vars(a), "params": training.count_params(model), "train_s": round(hist.wall_s),
           **{k: round(v, 4) for k, v in final.items()}, "wall_s": round(time.time() - t0)}
    print("FINAL", json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
