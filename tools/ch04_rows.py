"""Chapter 4's rows at full size, a chosen few at a time, on whatever device is here.

The notebook runs every row; on a 2-core CPU the full profile takes hours. This runs the rows named (e.g. the
repaired model and its no-attention control) with the notebook's own code and recipe, prints each run's final and
max test accuracy with its wall time, and writes them as JSON — so a full-size figure can be measured on a CPU
and quoted in the README with the command that produced it.

    NBHELPERS_DATA=../shared/data python tools/ch04_rows.py --rows repaired repaired_noattn --seeds 0 --out /tmp/u
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nbhelpers import runtime, seeds as S
from nbhelpers.chapters.ch04_ultimus import experiment as ch

ROWS = {r.key: r for r in ch.faithful_rows(ch.ORIGINAL_MAX_LR, 512) + ch.repair_rows(0.01, 512, 0.02, 256)
        + [ch.ablation(a, ch.ORIGINAL_MAX_LR, 512) for a in ch.ABLATIONS]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", required=True, choices=sorted(ROWS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--n-train", type=int, default=0, help="0 = all 50,000")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, required=True, help="folder for ultimus_rows.json")
    a = ap.parse_args(argv)
    if a.epochs < 1:
        ap.error("--epochs must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    runtime.keep_freed_memory()   # as the runner does for its kernels: without it a CPU epoch takes about twice as long
    a.out.mkdir(parents=True, exist_ok=True)
    run = runtime.start("full", a.seeds[0], a.device)
    data = ch.load(a.n_train, 0)
    results = {}
    for key in a.rows:
        t0 = time.perf_counter()
        runs = ch.run_grid(data, [ROWS[key]], a.seeds, a.epochs, run.device, diverge_factor=20.0)[key]
        wall = time.perf_counter() - t0
        results[key] = {"label": runs[0].label, "params": runs[0].params, "seeds": a.seeds,
                        "final": [100 * r.final_acc for r in runs], "max": [100 * r.max_acc for r in runs],
                        "final_pm": S.pm(ch.finals(runs)), "outcome": ch.outcome(runs), "wall_s": round(wall, 1),
                        "curves": [r.curve.to_dict(orient="list") for r in runs]}
        print(f"{key}: final {results[key]['final_pm']} %, max {S.pm(results[key]['max'])} %, "
              f"{results[key]['outcome']}, {wall:.0f} s", flush=True)
        (a.out / "ultimus_rows.json").write_text(json.dumps({"run": run.as_dict(), "epochs": a.epochs,
                                                              "n_train": len(data.x_train), "rows": results},
                                                             indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
