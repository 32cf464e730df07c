import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")


def run_book(*args, cwd=ROOT, timeout=900):
    """Run the book runner as the Makefile does; returns the CompletedProcess. A test book with its own profile
    files in ``cwd/profiles`` gets them through $NBHELPERS_PROFILES (the package's otherwise)."""
    env = {**os.environ, **({"NBHELPERS_PROFILES": str(Path(cwd) / "profiles")}
                            if (Path(cwd) / "profiles").is_dir() else {})}
    return subprocess.run([sys.executable, "-m", "nbhelpers.book", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every chapter under the smoke profile, executed and built into a temporary output folder (once)."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run_book("--profile", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def synthetic_images(name="cifar100", n=40, side=8, channels=3, classes=100):
    """A tiny random image dataset (uint8 N×H×W×C, int64 labels) for the data-pipeline tests."""
    import numpy as np
    from nbhelpers.data import images
    rng = np.random.default_rng(0)
    return images.ImageData(name, rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8),
                            np.arange(n, dtype=np.int64) % classes,
                            rng.integers(0, 256, (n // 2, side, side, channels), dtype=np.uint8),
                            np.arange(n // 2, dtype=np.int64) % classes, [f"c{i}" for i in range(classes)])


def gif_frames(path):
    """Every frame of a GIF as the browser shows it (composited over the previous ones): (n, H, W, 3) uint8.
    The book's GIFs draw each frame over the last with unchanged pixels transparent (``animate.encode_gif``)."""
    import numpy as np
    from PIL import Image, ImageSequence

    return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(path))])
