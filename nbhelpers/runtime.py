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


def bf16_fast(device) -> bool:
    """Whether bfloat16 autocast is a real speed-up here: a CUDA GPU with native bf16 (Ampere or newer; a T4 only
    emulates it), or a CPU with AMX tiles (Sapphire Rapids or newer)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


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

    @property
    def wall_s(self) -> float:
        return time.time() - self.started

    def header(self) -> str:
        v = " · ".join(f"{k} {val}" for k, val in self.versions.items())
        dev = self.device.type
        if dev == "cuda":
            dev += f" ({torch.cuda.get_device_name(self.device)})"
        return (f"Run: profile {self.profile} · device {dev} · seed {self.seed} · {v} · "
                f"threads {torch.get_num_threads()}")

    def as_dict(self) -> dict:
        return {"profile": self.profile, "seed": self.seed, "device": self.device.type,
                "versions": self.versions, "wall_s": round(self.wall_s, 2)}


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
    """Seed everything, choose the device, print the run header and return the Run."""
    run = Run(profile=profile, seed=seed, device=pick_device(device))
    seed_everything(seed)
    print(run.header())
    return run
