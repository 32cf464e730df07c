"""Training throughput: the original chapter-3 pipeline vs ours, in one process.

Original: a torchvision-style dataset (PIL image -> ToTensor -> Normalize per sample) behind a DataLoader, batch 64,
Adam 1e-4. Ours: the whole uint8 dataset resident on the device (nbhelpers.data.images.DeviceBatches), batched
conversion/normalisation on the device — at the same batch 64, and at batch 256 (+ bf16
autocast on a GPU). Prints images/s per model and the ratio against the original pipeline.

    python bench/ch03_throughput.py                       # MNIST, cnn/vit/hybrid, auto device
    python bench/ch03_throughput.py --dataset cifar10 --steps 200 --device cuda
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from nbhelpers import runtime
from nbhelpers.data import images
from nbhelpers.chapters.ch03_vit_hybrid import models as V


class PerSample(Dataset):
    """What torchvision's MNIST/CIFAR datasets do per item: PIL image from the uint8 array, then the transform."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i]
        return self.transform(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)), int(self.y[i])


def throughput(model, batches, steps: int, device, warmup: int = 5, amp: bool = False) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stream = (b for _ in itertools.count() for b in batches)  # epochs back to back
    seen, t0 = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            t0, seen = time.perf_counter(), 0
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    sync()
    return seen / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "cifar10"))
    ap.add_argument("--models", nargs="+", default=["cnn", "vit", "hybrid"], choices=V.MODELS)
    ap.add_argument("--steps", type=int, default=40, help="timed optimiser steps per pipeline (after 5 warm-up)")
    ap.add_argument("--device", default="auto", choices=runtime.DEVICES)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the original pipeline")
    args = ap.parse_args(argv)

    device = runtime.pick_device(args.device)
    data = images.load(args.dataset)
    stats = tuple(s * data.shape[-1] for s in images.MNIST_STATS)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*stats)])
    original = DataLoader(PerSample(data.x_train, data.y_train, tf), batch_size=64, shuffle=True,
                          num_workers=args.workers, pin_memory=device.type == "cuda",
                          persistent_workers=args.workers > 0)
    ours64 = images.DeviceBatches(data.x_train, data.y_train, 64, device, stats)
    ours256 = images.DeviceBatches(data.x_train, data.y_train, 256, device, stats)
    amp = device.type == "cuda"
    print(f"{runtime.Run('bench', 0, device).header()}\ndataset {args.dataset}, {args.steps} timed steps each\n")
    print(f"{'model':8s} {'original img/s':>15s} {'ours b64 img/s':>15s} {'ratio':>6s} "
          f"{'ours b256' + (' bf16' if amp else '') + ' img/s':>20s} {'ratio':>6s}")
    for name in args.models:
        rates = []
        for batches, bs_amp in ((original, False), (ours64, False), (ours256, amp)):
            torch.manual_seed(0)
            model = V.build(name, data.shape, data.num_classes, bug_compatible=True).to(device)
            rates.append(throughput(model, batches, args.steps, device, amp=bs_amp))
        print(f"{name:8s} {rates[0]:15.0f} {rates[1]:15.0f} {rates[1] / rates[0]:6.2f} {rates[2]:20.0f} "
              f"{rates[2] / rates[0]:6.2f}")


if __name__ == "__main__":
    main()
