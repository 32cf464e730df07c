"""Matplotlib figures -> GIF (imageio v3), with a bound on frame count and file size."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

MAX_FRAMES = 150
MAX_BYTES = 2_000_000


def figure_to_array(fig, close: bool = True) -> np.ndarray:
    """Render a matplotlib figure to an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if close:
        plt.close(fig)
    return arr


def render(fig, update, n: int):
    """Frames of one reused figure: ``update(i)`` changes its artists, then the canvas is grabbed (fast)."""
    try:
        return [(update(i), figure_to_array(fig, close=False))[1] for i in range(n)]
    finally:
        plt.close(fig)


def subsample(n: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` evenly spaced frames out of ``n``, always keeping the first and last."""
    if n <= max_frames:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))


def write_gif(frames, path, fps: float = 10, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES,
              hold_last: int = 5) -> Path:
    """Write frames (figures or RGB arrays) to ``path`` atomically.

    More than ``max_frames`` frames are subsampled evenly; if the file exceeds ``max_bytes`` the frames are
    downscaled (up to 5 times by 0.8) and a GIF that still does not fit is an error. The last frame is held for
    ``hold_last`` extra frames so the final state is readable.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    frames = [figure_to_array(f) if hasattr(f, "canvas") else np.asarray(f, dtype=np.uint8) for f in frames]
    frames = [frames[i] for i in subsample(len(frames), max_frames)]
    durations = [1000 / fps] * len(frames)
    durations[-1] *= 1 + hold_last
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(6):
        fd, tmp = tempfile.mkstemp(suffix=".gif", dir=path.parent)
        os.close(fd)
        try:
            iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=durations, loop=0)
            size = os.path.getsize(tmp)
            if size <= max_bytes:
                os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a GIF is published
                os.replace(tmp, path)
                return path
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        h, w = frames[0].shape[:2]
        new = (max(1, int(w * 0.8)), max(1, int(h * 0.8)))
        frames = [np.asarray(Image.fromarray(f).resize(new, Image.LANCZOS)) for f in frames]
    raise ValueError(f"GIF {path} stays above {max_bytes} bytes ({size} at {w}x{h}); use fewer frames")


def surface_gif(surfaces, titles, extent, path, X=None, y=None, classification: bool = True,
                vlim: float | None = 1.0, fps: float = 8, size: float | tuple = 3.6, dpi: int = 80, **kw) -> Path:
    """GIF of a model's output surface over training: one (n, n) array and one title per frame, with the data
    points (X, y) drawn on top. P(class 1) in [0, 1] for classification, a symmetric range otherwise. ``size``: the
    figure's side in inches, or (width, height) for a non-square extent."""
    from . import plots

    fig, ax = plt.subplots(figsize=(size, size) if np.isscalar(size) else tuple(size), dpi=dpi)
    im = plots.image(ax, np.asarray(surfaces[0], np.float32), extent, classification=classification, vlim=vlim)
    if X is not None:
        plots.points(ax, X, y, classification=classification, size=5)
    ax.set(xlim=extent[:2], ylim=extent[2:])
    title = ax.set_title(titles[0], fontsize="small")
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.87)  # room for a two-line title

    def update(i):
        im.set_data(np.asarray(surfaces[i], np.float32))
        title.set_text(titles[i])

    return write_gif(render(fig, update, len(surfaces)), path, fps=fps, **kw)


def show(paths: dict, width: int = 360):
    """What a GIF-writing cell displays. In the book (the runner sets ``NBHELPERS_BOOK=1``) a list of file sizes:
    the page's markdown shows the GIFs from their files. Anywhere else (Colab, Jupyter, plain papermill) the GIFs
    themselves, embedded in the output, because there the markdown cannot reach files the kernel wrote."""
    import base64
    import html

    from ..book import BOOK_ENV

    sizes = {name: f"{Path(p).stat().st_size / 1e6:.2f} MB" for name, p in paths.items()}
    if os.environ.get(BOOK_ENV) == "1":
        return sizes
    from IPython.display import HTML

    figures = "".join(
        f'<figure style="display:inline-block;margin:4px;text-align:center">'
        f'<img src="data:image/gif;base64,{base64.b64encode(Path(p).read_bytes()).decode()}" width="{width}" '
        f'alt="{html.escape(str(name))}"><figcaption>{html.escape(str(name))} · {sizes[name]}</figcaption></figure>'
        for name, p in paths.items())
    return HTML(f"<div>{figures}</div>")
