"""Chapter 3's repaired recipe on the full CIFAR-10 (or MNIST), on whatever device is here, for N epochs.

Prints the accuracy-vs-epoch curve with the training seconds of each epoch and writes it as CSV/JSON, so the
full-profile figure can be argued from a CPU run when no GPU is lent (README, chapter 3).

    NBHELPERS_DATA=../shared/data python tools/vision_repaired_cpu.py --epochs 14 --out /tmp/v
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from nbhelpers import runtime
from nbhelpers.data import images
from nbhelpers.experiments import vision as E
from nbhelpers.models import vision as V


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10", choices=list(images.DATASETS))
    ap.add_argument("--model", default="convformer", choices=list(V.ALL_MODELS))
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--batch", type=int, default=E.REPAIRED.batch_size)
    ap.add_argument("--lr", type=float, default=E.REPAIRED.lr)
    ap.add_argument("--n-train", type=int, default=0, help="0 = the whole training set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="folder for <dataset>_<model>_curve.csv / .json")
    a = ap.parse_args(argv)
    if a.epochs < 1 or a.batch < 1:
        ap.error("--epochs and --batch must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    runtime.keep_freed_memory()
    device = runtime.pick_device(a.device)
    data = images.load(a.dataset).subset(a.n_train or None, None)       # fails clearly when the data is absent
    recipe = dataclasses.replace(E.REPAIRED, batch_size=a.batch, lr=a.lr)
    print(f"{a.model} on {a.dataset}: {len(data.x_train)} train / {len(data.x_test)} test, {a.epochs} epochs, "
          f"device {device}, bf16 {recipe.bf16 and runtime.bf16_fast(device)}, threads {torch.get_num_threads()}",
          flush=True)
    t0 = time.perf_counter()
    r = E.train_model(data, a.model, recipe, a.epochs, device, seed=a.seed, bug_compatible=False, progress=True)
    wall = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{a.dataset}_{a.model}_curve"
    r.curve.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".json").write_text(json.dumps({
        "dataset": a.dataset, "model": a.model, "params": r.params, "epochs": a.epochs, "seed": a.seed,
        "recipe": dataclasses.asdict(recipe), "device": str(device), "threads": torch.get_num_threads(),
        "bf16": r.bf16, "wall_s": wall, "status": r.history.status, "max_acc": r.max_acc,
        "final_acc": float(r.curve.test_acc.iloc[-1]), "curve": r.curve.to_dict("records"),
        "versions": runtime.versions()}, indent=1))
    print(r.curve.to_string(index=False))
    print(f"params {r.params:,}  max test acc {100 * r.max_acc:.2f} %  final {100 * r.curve.test_acc.iloc[-1]:.2f} %"
          f"  wall {wall:.0f} s  ({wall / a.epochs:.0f} s / epoch)")
    return 0 if r.history.ok else 1


if __name__ == "__main__":
    sys.exit(main())
