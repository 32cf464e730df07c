"""Seeding, device choice and the one-line run header every chapter prints first."""
from __future__ import annotations

import os
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if name not in DEVICES:
        raise ValueError(f"device={name!r} is not allowed; choose one of {', '.join(DEVICES)}")
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    elif not available[name]:
        raise ValueError(f"device={name!r} was requested but is not available on this machine")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the heap (the runner's KERNEL_MALLOC, for a process that was not
    started by the runner): without it a CPU training step page-faults its large activation buffers in afresh.
    Returns False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim, m_top_pad, m_mmap = -1, -2, -3       # mallopt parameter numbers (malloc.h)
        return all(libc.mallopt(k, v) == 1 for k, v in ((m_mmap, 1 << 30), (m_trim, 1 << 31 - 1), (m_top_pad, 1 << 30)))
    except (OSError, AttributeError):
        return False


def amp_for(device) -> torch.dtype | None:
    """The autocast dtype that is a real speed-up on ``device``, or None for plain fp32.

    - CUDA, compute capability 8.0+ (Ampere or newer: A100, L4, H100, RTX 30xx+): bfloat16, native in the tensor
      cores; needs no loss scaling.
    - CUDA 7.x (Volta V100, Turing T4 — Colab's free GPU): float16 tensor cores, no native bf16 (a T4 only emulates
      it), so float16; ``train.fit`` then scales the loss with a GradScaler.
    - Older CUDA GPUs (no tensor cores): None.
    - CPU with AMX tiles (Sapphire Rapids or newer): bfloat16; any other CPU: None (without AMX, reduced-precision
      matrix products gain little or are slower than fp32).
    - MPS (Apple GPUs): None. torch gained MPS autocast only in 2.5 (float16; bfloat16 later, macOS 14+) and
      GradScaler support for MPS after that, its AMP reference documents per-op autocast behaviour for CUDA and
      CPU only (ops such as scaled_dot_product_attention have failed under MPS autocast), and the book supports
      torch >= 2.1: Macs train in fp32.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16 if major >= 7 else None
    if device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return torch.bfloat16
    return None


def versions() -> dict[str, str]:
    import nbhelpers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__.split("+")[0],
        "numpy": np.__version__,
        "nbhelpers": nbhelpers.__version__,
    }


@dataclass
class Run:
    """What a chapter run is: profile, seed, device, versions, and when it started."""

    profile: str
    seed: int
    device: torch.device
    versions: dict = field(default_factory=versions)
    started: float = field(default_factory=time.time)
    origins: dict = field(default_factory=dict)   # {parameter: "set" | "profile <name>" | "default"} (params.check)

    @property
    def wall_s(self) -> float:
        return time.time() - self.started

    def header(self) -> str:
        v = " · ".join(f"{k} {val}" for k, val in self.versions.items())
        dev = self.device.type
        if dev == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        line = (f"Run: profile {self.profile} · device {dev} · seed {self.seed} · {v} · "
                f"threads {torch.get_num_threads()}")
        by: dict = {}
        for name, origin in self.origins.items():
            if origin != "default":
                by.setdefault(origin, []).append(name)
        return line + "".join(f"\n  {origin}: {', '.join(names)}" for origin, names in by.items())

    def machine(self) -> str:
        """The hardware in words, for the book's compute page: the GPU's name, or the CPU's core count."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"{os.cpu_count()} CPU cores" + (" (Apple GPU)" if self.device.type == "mps" else "")

    def as_dict(self) -> dict:
        return {"profile": self.profile, "seed": self.seed, "device": self.device.type, "machine": self.machine(),
                "versions": self.versions, "wall_s": round(self.wall_s, 2), "origins": self.origins}


@contextmanager
def threads(n: int):
    """Use ``n`` intra-op CPU threads inside the block (tiny models run fastest, and share a busy machine best, on
    one), then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start(profile: str, seed: int, device: str = "auto") -> Run:
    """Seed everything, choose the device, print the run header (with where each parameter's value came from, as
    the latest ``params.check`` found it) and return the Run."""
    from . import params

    run = Run(profile=profile, seed=seed, device=pick_device(device), origins=dict(params.last_origins or {}))
    seed_everything(seed)
    print(run.header())
    return run
