"""One chapter-3 model with one recipe on the full dataset, on whatever device is here, for N epochs.

Prints the accuracy-vs-epoch curve with the training seconds of each epoch and writes it as CSV/JSON, so a
full-size figure can be measured on a CPU when no GPU is lent (README, chapter 3): the repaired recipe and its
control, or one of the original's table-1 models trained longer than its 1 epoch.

    NBHELPERS_DATA=../shared/data python tools/ch03_curve.py --epochs 10 --out /tmp/v
    NBHELPERS_DATA=../shared/data python tools/ch03_curve.py --model convnet --epochs 10 --out /tmp/v   # control
    NBHELPERS_DATA=../shared/data python tools/ch03_curve.py --recipe original --model vit --dataset mnist \
        --epochs 14 --out /tmp/t1     # table 1's ViT (bug-compatible, the original recipe) for 14 epochs
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
from nbhelpers.chapters.ch03_vit_hybrid import experiment as ch
from nbhelpers.chapters.ch03_vit_hybrid import models as V


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10", choices=list(images.DATASETS))
    ap.add_argument("--model", default="convformer", choices=list(V.ALL_MODELS))
    ap.add_argument("--recipe", default="repaired", choices=["repaired", "original"],
                    help="original: the chapter-3 original's recipe with its bug-compatible models")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="0: the recipe's")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the recipe's (its rate for the dataset)")
    ap.add_argument("--n-train", type=int, default=0, help="0 = the whole training set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="folder for <dataset>_<model>_<recipe>_curve.csv / .json")
    a = ap.parse_args(argv)
    if a.epochs < 1 or a.batch < 0 or a.lr < 0:
        ap.error("--epochs must be >= 1, --batch and --lr >= 0")
    if a.recipe == "original" and a.model not in V.MODELS:
        ap.error(f"--recipe original trains the original's models: {', '.join(V.MODELS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    runtime.keep_freed_memory()
    device = runtime.pick_device(a.device)
    data = images.load(a.dataset).subset(a.n_train or None, None)       # fails clearly when the data is absent
    base = ch.REPAIRED if a.recipe == "repaired" else ch.ORIGINAL
    recipe = dataclasses.replace(base, batch_size=a.batch or base.batch_size)
    if a.lr:   # one rate for every dataset, the recipe's per-dataset rates included
        recipe = dataclasses.replace(recipe, lr=a.lr, dataset_lr=())
    print(f"{a.model} on {a.dataset}: {len(data.x_train)} train / {len(data.x_test)} test, {a.epochs} epochs, "
          f"device {device}, precision {runtime.amp_for(device) if recipe.amp else 'fp32'}, "
          f"threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    r = ch.train_one(data, a.model, recipe, a.epochs, device, seed=a.seed, bug_compatible=a.recipe == "original",
                    progress=True)
    wall = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"{a.dataset}_{a.model}_{a.recipe}_curve"
    r.curve.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".json").write_text(json.dumps({
        "dataset": a.dataset, "model": a.model, "recipe_name": a.recipe, "params": r.params, "epochs": a.epochs,
        "seed": a.seed,
        "recipe": dataclasses.asdict(recipe), "device": str(device), "threads": torch.get_num_threads(),
        "amp": r.amp, "wall_s": wall, "status": r.history.status, "acc": r.acc, "max_acc": r.max_acc,
        "final_acc": float(r.curve.test_acc.iloc[-1]), "curve": r.curve.to_dict("records"),
        "versions": runtime.versions()}, indent=1))
    print(r.curve.to_string(index=False))
    print(f"params {r.params:,}  the chapter's accuracy ({ch.RULES[recipe.report]}) {100 * r.acc:.2f} %  "
          f"last epoch without TTA {100 * r.curve.test_acc.iloc[-1]:.2f} %"
          f"  wall {wall:.0f} s  ({wall / a.epochs:.0f} s / epoch)")
    return 0 if r.history.ok else 1


if __name__ == "__main__":
    sys.exit(main())
