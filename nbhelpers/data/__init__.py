"""Datasets. Everything on disk lives under one root: ``$NBHELPERS_DATA`` (default ``~/.cache/nbhelpers``)."""
import os
from pathlib import Path


def data_root() -> Path:
    """The data folder: torchvision's own layout (e.g. ``MNIST/raw``) and ``<name>.npz`` array caches."""
    return Path(os.environ.get("NBHELPERS_DATA") or Path.home() / ".cache" / "nbhelpers").expanduser()
