"""Image datasets (MNIST, CIFAR-10, CIFAR-100) as uint8 arrays, and a device-resident batcher with augmentation.

Loading order: the array cache ``<root>/<name>.npz`` (keys x_train, y_train, x_test, y_test, classes;
uint8 N×H×W×C, int64 labels) is read first; otherwise torchvision loads the dataset from its own layout under
the root (``download=True`` fetches it online and finds existing files offline) and the cache is written.
Nothing is ever substituted: a dataset that cannot be found is a ``DataUnavailable`` error saying where we
looked and how to provide it.

Integrity (every read is verified before use; a failure is one ``DataCorrupt`` naming the file, what is wrong and
the fix — nothing is trained on it):

- torchvision's files under the root (``MNIST/raw/*.gz``, ``cifar-10-batches-py/*``, the ``.tar.gz`` archives) by
  the md5s torchvision publishes in its dataset classes (``resources``, ``train_list``/``test_list``/``meta``,
  ``tgz_md5``), checked with ``torchvision.datasets.utils.check_integrity`` before torchvision reads them; MNIST's
  unpacked ``*-ubyte`` files must equal their verified archive.
- array caches: read completely (a truncated or half-written file fails here, and zip's CRC catches flipped bytes),
  shapes/dtypes/labels checked, and the sha256 of the file compared with ``<name>.npz.sha256`` written beside it
  by ``save_cache`` (``sha256sum -c`` format). A cache without that file (written by older code) is read and
  checked as above, then its checksum is recorded (when the folder is writable).
- MNIST and CIFAR-10, which the book documents, must also have the canonical content: ``CANONICAL_SHA256`` is the
  sha256 of the arrays (see ``content_sha256``: independent of how the .npz was zipped), checked for a cache and
  for what torchvision decoded before it is cached. CIFAR-100 has no recorded canonical content (it is not
  available in this workplace); its cache is checked by its recorded checksum only.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data_root

DATASETS = ("mnist", "cifar10", "cifar100")
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
# per-dataset channel statistics of the training set (pixel values in [0, 1])
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
MNIST_STATS = STATS["mnist"]  # what the chapter-3 original used for every dataset
_TORCHVISION = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
_KEYS = ("x_train", "y_train", "x_test", "y_test")
# content_sha256 of the canonical datasets (torchvision's order; uint8 N×H×W×C, int64 labels, class names):
# MNIST decoded by torchvision from its md5-verified files; CIFAR-10 from the documented cache of the shared data
# folder (lossless, original order; ../shared/data/README.md).
CANONICAL_SHA256 = {
    "mnist": "5278f0cb4b82dcdcc9e1b8ba7dde33b32018713aad94e584ca025440742376fc",
    "cifar10": "769723d0ee5f91f2394b6b910f7408ea1130f6d1492dfbdfaee3efbfc041ecca",
}


class DataUnavailable(FileNotFoundError):
    """The dataset is not on disk and could not be downloaded."""


class DataCorrupt(RuntimeError):
    """A dataset file is on disk but is not the dataset: truncated, unreadable, or its checksum does not match.

    Deliberately not a ``DataUnavailable``: code that skips a missing dataset must not skip a damaged one
    silently. The message names the file, what is wrong with it, and the fix."""


@dataclass
class ImageData:
    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list

    @property
    def shape(self) -> tuple:
        return self.x_train.shape[1:]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "ImageData":
        """The first n examples of each split (the files' original order is already shuffled)."""
        return ImageData(self.name, self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test],
                         self.y_test[:n_test], self.classes)


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not allowed; choose one of {', '.join(DATASETS)}")
    return name


def cache_path(name: str, root: Path | None = None) -> Path:
    return Path(root or data_root()) / f"{name}.npz"


def checksum_path(path: Path) -> Path:
    """Where the sha256 of an array cache is recorded: ``<name>.npz.sha256`` (``sha256sum -c`` format)."""
    return path.with_name(path.name + ".sha256")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def content_sha256(data: ImageData) -> str:
    """sha256 of the arrays themselves (keys, dtypes, shapes, bytes, class names): the same however the .npz
    holding them was written (np.savez stamps the time into the zip, so the file's own hash is not canonical)."""
    h = hashlib.sha256()
    for key in _KEYS:
        a = np.ascontiguousarray(getattr(data, key))
        h.update(f"{key} {a.dtype.str} {a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    h.update("\n".join(data.classes).encode())
    return h.hexdigest()


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _record_checksum(path: Path, digest: str | None = None) -> None:
    digest = digest or file_sha256(path)
    _write_atomic(checksum_path(path), lambda tmp: Path(tmp).write_text(f"{digest}  {path.name}\n"))


def save_cache(data: ImageData, root: Path | None = None) -> Path:
    """Write the array cache atomically (lossless; uint8 images, int64 labels) and its sha256 beside it.

    The old checksum file goes first, so a crash at any point leaves either no checksum (recorded on the next
    load) or the right one, never a false mismatch."""
    known = CANONICAL_SHA256.get(data.name)
    if known and content_sha256(data) != known:
        raise DataCorrupt(f"refusing to write the {TITLES.get(data.name, data.name)} cache: these arrays are not "
                          f"the canonical dataset (content sha256 {content_sha256(data)[:16]}…, canonical "
                          f"{known[:16]}…)")
    path = cache_path(data.name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test,
                 classes=np.array(data.classes))
        digest = file_sha256(Path(tmp))
        checksum_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _record_checksum(path, digest)
    return path


def _cache_fix(name: str, path: Path) -> str:
    files = f"{path} and {checksum_path(path).name}" if checksum_path(path).exists() else str(path)
    real = (f", or copy the real {path.name} (content sha256 {CANONICAL_SHA256[name][:16]}…) from a data folder "
            f"that has it (in this repository's CI: ../shared/data)") if name in CANONICAL_SHA256 else ""
    return (f"Fix: delete {files} and run again: the cache is re-created from torchvision's "
            f"{_TORCHVISION[name]} files under {path.parent} (downloaded when online){real}.")


def _from_cache(name: str, path: Path) -> ImageData:
    """Read and verify an array cache; any problem is one DataCorrupt naming the file and the fix."""
    def damaged(what: str) -> DataCorrupt:
        return DataCorrupt(f"array cache {path} is damaged: {what}; nothing was trained on it. "
                           f"{_cache_fix(name, path)}")

    try:
        with np.load(path, allow_pickle=False) as z:
            missing = set(_KEYS) | {"classes"}
            missing -= set(z.files)
            if missing:
                raise damaged(f"it lacks the array(s) {', '.join(sorted(missing))}")
            x_train, y_train, x_test, y_test = (z[k] for k in _KEYS)  # reads everything (zip CRC checked)
            classes = [str(c) for c in z["classes"]]
    except DataCorrupt:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise damaged(f"it is truncated or not a readable .npz archive ({type(e).__name__}: {e})") from e
    recorded_at = checksum_path(path)
    recorded = None
    if recorded_at.exists():
        try:
            recorded = recorded_at.read_text().split()[0].lower()
        except (OSError, UnicodeDecodeError, IndexError):
            recorded = "(unreadable)"
        actual = file_sha256(path)
        if actual != recorded:
            raise DataCorrupt(
                f"array cache {path} does not match the checksum recorded beside it when it was written "
                f"({recorded_at.name}: sha256 {recorded[:16]}…, the file now: {actual[:16]}…): it was changed or "
                f"damaged since; nothing was trained on it. {_cache_fix(name, path)}")
    if x_train.ndim == 3:  # allow N×H×W for one-channel sets
        x_train, x_test = x_train[..., None], x_test[..., None]
    problems = []
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        problems.append(f"images must be uint8, got {x_train.dtype}/{x_test.dtype}")
    if x_train.ndim != 4 or x_test.shape[1:] != x_train.shape[1:]:
        problems.append(f"image shapes {x_train.shape} and {x_test.shape} are not N×H×W×C with one image size")
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if y.ndim != 1 or len(y) != len(x) or (y.size and y.dtype.kind not in "iu"):
            problems.append(f"{split} labels {y.dtype} {y.shape} do not match {len(x)} images")
        elif y.size and (y.min() < 0 or y.max() >= len(classes)):
            problems.append(f"{split} labels outside 0..{len(classes) - 1}")
    if problems:
        raise damaged("; ".join(problems))
    data = ImageData(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), classes)
    known = CANONICAL_SHA256.get(name)
    if known:
        got = content_sha256(data)
        if got != known:
            raise DataCorrupt(
                f"array cache {path} is not the canonical {TITLES[name]}: the sha256 of its arrays is {got[:16]}…, "
                f"the real dataset's is {known[:16]}… (a wrong, partial or modified dataset); nothing was trained "
                f"on it. {_cache_fix(name, path)}")
    elif recorded is None:  # a cache written before checksums were recorded: read and checked above, record now
        try:
            _record_checksum(path)
        except OSError:
            pass  # a read-only data folder: checked on every load as above, just without the recorded checksum
    return data


def _check_files(name: str, root: Path) -> None:
    """Verify torchvision's files under ``root`` by torchvision's own published md5s before torchvision reads
    them (it checks them only when it downloads). Only files that are present are checked: absent ones are
    torchvision's to download (verified by it) or the caller's DataUnavailable."""
    import gzip

    import torchvision
    from torchvision.datasets.utils import check_integrity, calculate_md5

    cls = getattr(torchvision.datasets, _TORCHVISION[name])

    def bad(path: Path, what: str) -> DataCorrupt:
        return DataCorrupt(
            f"{TITLES[name]} file {path} is damaged: {what}; nothing was trained on it. Fix: delete it and run again "
            f"with internet access (torchvision downloads it again, checked), or copy the real file into "
            f"{path.parent}.")

    if name == "mnist":
        raw = root / cls.__name__ / "raw"
        for filename, md5 in cls.resources:
            gz, unpacked = raw / filename, raw / Path(filename).stem
            if gz.exists():
                if not check_integrity(str(gz), md5):
                    raise bad(gz, f"md5 {calculate_md5(str(gz))}, torchvision's published md5 is {md5}")
                if unpacked.exists():
                    try:
                        same = gzip.decompress(gz.read_bytes()) == unpacked.read_bytes()
                    except OSError:
                        same = False
                    if not same:
                        raise bad(unpacked, f"it differs from its verified archive {gz.name} (truncated or modified)")
        return
    folder = root / cls.base_folder
    files = [(folder / f, md5) for f, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]]
    for path, md5 in [(root / cls.filename, cls.tgz_md5), *files]:
        if path.exists() and not check_integrity(str(path), md5):
            raise bad(path, f"md5 {calculate_md5(str(path))}, torchvision's published md5 is {md5}")


def _from_torchvision(name: str, root: Path, download: bool) -> ImageData:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    arrays = []
    for ds in splits:
        x = np.asarray(ds.data.numpy() if torch.is_tensor(ds.data) else ds.data, dtype=np.uint8)
        arrays += [x[..., None] if x.ndim == 3 else x, np.asarray(ds.targets, dtype=np.int64)]
    return ImageData(name, *arrays, list(splits[0].classes))


def load(name: str, root: str | os.PathLike | None = None, download: bool = True, cache: bool = True) -> ImageData:
    """Load a dataset as uint8 arrays: the array cache first, then torchvision (writing the cache).

    Every read is verified first (module docstring): a damaged file raises ``DataCorrupt``, a missing dataset
    ``DataUnavailable``; neither is ever replaced by something else."""
    check_dataset(name)
    root = Path(root) if root is not None else data_root()
    path = cache_path(name, root)
    if path.exists():
        return _from_cache(name, path)
    _check_files(name, root)
    try:
        data = _from_torchvision(name, root, download)
    except Exception as e:  # offline download, missing files: one clear error, never a substitute
        raise DataUnavailable(
            f"dataset {name!r} is not available: looked for the array cache {path} and torchvision's "
            f"{_TORCHVISION[name]} files under {root} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Provide it by setting NBHELPERS_DATA to a folder that has it, or by running once with internet "
            f"access (torchvision downloads it there)."
        ) from e
    known = CANONICAL_SHA256.get(name)
    if known and content_sha256(data) != known:
        raise DataCorrupt(
            f"torchvision's {_TORCHVISION[name]} files under {root} decode to arrays that are not the canonical "
            f"{TITLES[name]} (sha256 {content_sha256(data)[:16]}…, the real dataset's is {known[:16]}…); nothing "
            f"was trained on them. Fix: delete them and run again with internet access (torchvision downloads them "
            f"again, checked).")
    if cache:
        try:
            save_cache(data, root)
        except OSError:
            pass  # a read-only data folder still works, just without the faster cache
    return data


def as_nchw(x: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 N×H×W×C images as an N×C×H×W tensor with the standard contiguous strides.

    ``permute(...).contiguous()`` keeps whatever stride a size-1 channel axis had, and that stride depends on how
    the array was made (torchvision's files: 0; the array cache: 1). A one-channel tensor with stride 1 also passes
    as channels-last, so the convolutions took a different kernel and the same seed gave different numbers
    depending on whether the cache existed yet. A copy with explicit contiguous strides removes the ambiguity."""
    return torch.as_tensor(x).permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).to(device)


# ------------------------------------------------------------------ batched augmentation on the device

def random_crop(x: torch.Tensor, padding: int, generator=None, mode: str = "reflect") -> torch.Tensor:
    """Per-sample random crop of a padded batch (B, C, H, W) back to (H, W)."""
    if padding <= 0:
        return x
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4, mode=mode)
    oy = torch.randint(0, 2 * padding + 1, (B,), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (B,), device=x.device, generator=generator)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B,1,1,W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows, cols]


def random_flip(x: torch.Tensor, p: float = 0.5, generator=None) -> torch.Tensor:
    """Per-sample horizontal flip with probability p."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erase(x: torch.Tensor, size: int, fill: torch.Tensor, p: float = 0.5, generator=None,
                 mode: str = "clip") -> torch.Tensor:
    """Per-sample: with probability p, fill one size×size square with ``fill`` (per-channel values, e.g. the
    dataset mean). mode "clip": centre uniform over the image, the square clipped at the border (Cutout);
    "inside": the whole square inside the image (albumentations' CoarseDropout, chapter 4's original)."""
    if mode not in ("clip", "inside"):
        raise ValueError(f"erase mode={mode!r} is not allowed; choose clip or inside")
    B, C, H, W = x.shape
    if mode == "clip":
        y0 = torch.randint(0, H, (B,), device=x.device, generator=generator) - size // 2
        x0 = torch.randint(0, W, (B,), device=x.device, generator=generator) - size // 2
    else:
        y0 = torch.randint(0, H - size + 1, (B,), device=x.device, generator=generator)
        x0 = torch.randint(0, W - size + 1, (B,), device=x.device, generator=generator)
    apply = torch.rand(B, device=x.device, generator=generator) < p
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + size)[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + size)[:, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :] & apply[:, None, None])[:, None]
    return torch.where(mask, fill.view(1, C, 1, 1).to(x), x)


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply (in pixel space [0, 1], before normalisation)."""

    crop_padding: int = 0
    crop_mode: str = "reflect"
    flip: bool = False
    erase_size: int = 0
    erase_p: float = 0.5
    erase_mode: str = "clip"   # clip (Cutout) | inside (CoarseDropout: the square never crosses the border)

    def __call__(self, x, mean, generator=None):
        x = random_crop(x, self.crop_padding, generator, self.crop_mode)
        if self.flip:
            x = random_flip(x, 0.5, generator)
        if self.erase_size:
            x = random_erase(x, self.erase_size, mean, self.erase_p, generator, self.erase_mode)
        return x


class DeviceBatches:
    """The whole uint8 dataset on the device once; each epoch a fresh permutation; conversion, augmentation and
    normalisation happen on batched tensors on that device. Works the same on CPU. Iterate for (x, y) batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, device="cpu", stats=MNIST_STATS,
                 augment: Augment | None = None, shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"expected uint8 images N×H×W×C, got {x.dtype} {x.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.x = as_nchw(x, self.device)  # uint8 N, C, H, W
        self.y = torch.as_tensor(y, dtype=torch.long).to(self.device)
        C = self.x.shape[1]
        mean, std = (torch.tensor(s, dtype=torch.float32) for s in stats)
        if len(mean) != C:
            raise ValueError(f"normalisation has {len(mean)} channels, images have {C}")
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.batch_size, self.augment, self.shuffle, self.drop_last, self.dtype = \
            batch_size, augment, shuffle, drop_last, dtype
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)).to(self.dtype)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Back to pixel space [0, 1] (for showing augmented batches correctly)."""
        return (x.float() * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)).clamp(0, 1)

    def __iter__(self):
        n = len(self.y)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx].float().div_(255)
            if self.augment is not None:
                xb = self.augment(xb, self.mean, self.generator)
            yield self.normalise(xb), self.y[idx]
