"""Matplotlib figures -> GIF (Pillow: a global palette and frame differencing), with bounds on frame count, file
size and width."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

MAX_FRAMES = 150
MAX_BYTES = 1_500_000   # a GIF in the book: at most 1.5 MB ...
MIN_WIDTH = 320         # ... and at least 320 px wide, so its titles stay legible
TRANSPARENT = 255       # palette index for "unchanged since the previous frame"


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


def palette_frames(frames: list[np.ndarray], colors: int = 128) -> tuple[list[np.ndarray], list[int]]:
    """One global palette of ``colors`` colours for all frames (median cut over a sample of up to 17 frames, no
    dithering) and each frame as palette indices. One palette means a pixel that did not change keeps its index
    from frame to frame, which is what makes frame differencing work; no dithering keeps flat areas flat (and
    small). 128 colours: a mean colour error of about 2.4 / 255 on the book's surfaces (2.3 with 255 colours) for
    a ~20 % smaller file."""
    step = max(1, len(frames) // 16)
    sample = np.concatenate(frames[::step] + [frames[-1]], axis=0)
    pal = Image.fromarray(sample).quantize(colors=min(colors, TRANSPARENT), method=Image.Quantize.MEDIANCUT,
                                           dither=Image.Dither.NONE)
    indexed = [np.asarray(Image.fromarray(f).quantize(palette=pal, dither=Image.Dither.NONE)) for f in frames]
    palette = (pal.getpalette() or [])[:3 * TRANSPARENT]
    return indexed, palette + [0] * (768 - len(palette))


def encode_gif(frames: list[np.ndarray], durations: list[float]) -> bytes:
    """Encode RGB frames as a GIF made small the way gifsicle's -O2 does it: a global palette, and every frame
    after the first drawn over the previous one (disposal 1) with the pixels that did not change marked
    transparent, so the LZW coder sees long runs of one index. Decoding gives back exactly the palette frames."""
    indexed, palette = palette_frames(frames)
    images = []
    for i, cur in enumerate(indexed):
        delta = cur if i == 0 else np.where(cur == indexed[i - 1], TRANSPARENT, cur).astype(np.uint8)
        im = Image.fromarray(delta, "P")
        im.putpalette(palette)
        images.append(im)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=[round(d) for d in durations],
                   loop=0, disposal=1, transparency=TRANSPARENT, optimize=False)
    return buf.getvalue()


def write_gif(frames, path, fps: float = 10, max_frames: int = MAX_FRAMES, max_bytes: int = MAX_BYTES,
              hold_last: int = 5, min_width: int = MIN_WIDTH) -> Path:
    """Write frames (figures or RGB arrays) to ``path`` atomically, as an optimised GIF (``encode_gif``).

    More than ``max_frames`` frames are subsampled evenly. A GIF above ``max_bytes`` is encoded again from fewer
    evenly spaced frames (never at a lower resolution: a shrunk GIF is a blurry GIF); one that does not fit even
    with its first and last frames is an error, as are frames narrower than ``min_width`` pixels. The last frame
    is held for ``hold_last`` extra frames so the final state is readable. Nothing is left behind on an error.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    frames = [figure_to_array(f) if hasattr(f, "canvas") else np.asarray(f, dtype=np.uint8) for f in frames]
    h, w = frames[0].shape[:2]
    if w < min_width:
        raise ValueError(f"GIF {path}: frames are {w} px wide, below the book's {min_width} px (titles would be "
                         "unreadable); draw the figure larger (figsize x dpi)")
    path = Path(path)
    n = min(len(frames), max_frames)
    while True:
        kept = [frames[i] for i in subsample(len(frames), n)]
        durations = [1000 / fps] * len(kept)
        durations[-1] *= 1 + hold_last
        data = encode_gif(kept, durations)
        if len(data) <= max_bytes:
            break
        if n <= 2:
            raise ValueError(f"GIF {path} stays above {max_bytes} bytes ({len(data)} with {n} frames at {w}x{h})")
        n = max(2, min(n - 1, int(n * 0.95 * max_bytes / len(data))))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gif", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a GIF is published
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def surface_gif(surfaces, titles, extent, path, X=None, y=None, classification: bool = True,
                vlim: float | None = 1.0, fps: float = 8, size: float | tuple = 3.6, dpi: int = 100, **kw) -> Path:
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
