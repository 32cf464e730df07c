"""Chapter 4 speed: 24 epochs of the spec (faithful, 25,488-parameter) Ultimus model, three pipelines, one process.

- original: the original's data path — a per-sample Dataset (PIL image -> reflect-pad 4 + random crop 32, flip,
  ToTensor, Normalize, a 16×16 erased square p .5 filled with 0 = the mean after normalisation) behind a DataLoader
  with worker processes, batch 512;
- eager: the whole uint8 dataset resident on the device, batched augmentation there (images.DeviceBatches), the
  eager model;
- fast: the same data path plus the fast path of nbhelpers.chapters.ch04_ultimus.experiment (channels-last,
  torch.compile in "reduce-overhead" mode = CUDA graphs, fused Adam, static shapes).
All three train with train.fit (the chapter's loop, guard included) and the original recipe at a tenth of its
peak, so that every run completes its epochs. Each pipeline gets one warm-up epoch first (compilation, cuDNN
autotuning, worker start-up; reported separately), then the timed epochs. Prints seconds and ratios.

    python bench/ch04_speed.py                                      # 24 epochs, all 50k images, auto device
    python bench/ch04_speed.py --epochs 1 --n-train 5000 --device cpu   # a CPU-sized check
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from nbhelpers import runtime
from nbhelpers import train as training
from nbhelpers.chapters.ch04_ultimus import experiment as ch
from nbhelpers.chapters.ch04_ultimus import models as U
from ch03_throughput import PerSample  # the per-sample Dataset of the chapter-3 bench (same folder)


def original_loader(data, batch_size: int, workers: int, pin: bool) -> DataLoader:
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(*ch.STATS),
        transforms.RandomErasing(p=0.5, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0),  # 16×16 of 32×32
    ])
    return DataLoader(PerSample(data.x_train, data.y_train, tf), batch_size=batch_size, shuffle=True,
                      num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


def timed(label: str, model, stepper, batches, recipe, epochs: int, device, compiled: bool) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {}
    for phase, n in (("warm-up", 1), ("timed", epochs)):
        opt = recipe.optimizer_for(model.parameters(), fused=compiled and device.type == "cuda")
        sched = recipe.scheduler_for(opt, n * len(batches))
        sync()
        t0 = time.perf_counter()
        hist = training.fit(stepper, opt, batches, ch.Tally(), epochs=n, scheduler=sched, device=device,
                            diverge_factor=None, progress=False, desc=label)
        sync()
        out[phase] = time.perf_counter() - t0
        if not hist.ok:
            raise RuntimeError(f"{label}: {hist.reason}")
    out["samples_per_s"] = hist.samples / out["timed"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--n-train", type=int, default=0, help="training images, 0 for all 50000")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="auto", choices=runtime.DEVICES)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of the original pipeline")
    ap.add_argument("--fast", default="auto", choices=("auto", "on", "off"),
                    help="fast path: auto compiles on CUDA only")
    ap.add_argument("--skip-original", action="store_true")
    args = ap.parse_args(argv)

    device = runtime.pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data = ch.load(args.n_train)
    recipe = ch.original(ch.ORIGINAL_MAX_LR / 10, args.batch_size)
    print(f"{runtime.Run('bench', 0, device).header()}\nspec model ({U.PARAMS_FAITHFUL:,} params), "
          f"{len(data.y_train)} images, batch {args.batch_size}, {args.epochs} timed epochs\n")
    fast = {"auto": "auto", "on": True, "off": False}[args.fast]
    pipelines = {}
    torch.manual_seed(0)
    model = U.build("faithful").to(device)
    pipelines["eager (device-resident)"] = timed("eager", model, model, ch.train_batches(data, args.batch_size, device),
                                                 recipe, args.epochs, device, False)
    torch.manual_seed(0)
    model = U.build("faithful").to(device)
    stepper = ch.fast_model(model, device, fast)
    compiled = stepper is not model
    pipelines["fast (device-resident" + (", compiled)" if compiled else ", not compiled on this device)")] = timed(
        "fast", model, stepper, ch.train_batches(data, args.batch_size, device, drop_last=compiled), recipe,
        args.epochs, device, compiled)
    if not args.skip_original:
        torch.manual_seed(0)
        model = U.build("faithful").to(device)
        pipelines[f"original DataLoader ({args.workers} workers)"] = timed(
            "original", model, model, original_loader(data, args.batch_size, args.workers, device.type == "cuda"),
            recipe, args.epochs, device, False)
    base = pipelines.get(next((k for k in pipelines if k.startswith("original")), ""), None)
    print(f"{'pipeline':48s} {'warm-up s':>10s} {f'{args.epochs} epochs s':>14s} {'img/s':>9s} "
          f"{'vs original':>12s} {'vs eager':>9s}")
    eager = pipelines["eager (device-resident)"]["timed"]
    for name, r in pipelines.items():
        vs_orig = f"{base['timed'] / r['timed']:.2f}x" if base else "—"
        print(f"{name:48s} {r['warm-up']:10.2f} {r['timed']:14.2f} {r['samples_per_s']:9.0f} {vs_orig:>12s} "
              f"{eager / r['timed']:8.2f}x")


if __name__ == "__main__":
    main()
