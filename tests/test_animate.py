import io

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402

from conftest import gif_frames  # noqa: E402
from nbhelpers.viz import animate  # noqa: E402


def _figs(n, side=4, dpi=90):
    out = []
    for i in range(n):
        fig, ax = plt.subplots(figsize=(side, side), dpi=dpi)
        ax.plot([0, 1], [0, i])
        out.append(fig)
    return out


def _surfaces(n=30, px=400):
    """Frames like the book's training GIFs: a smooth surface that sharpens step by step, a title that changes."""
    xx, yy = np.meshgrid(np.linspace(-6, 6, 60), np.linspace(-6, 6, 60))
    fig, ax = plt.subplots(figsize=(px / 100, px / 100), dpi=100)
    im = ax.imshow(np.zeros_like(xx), cmap="RdBu_r", vmin=0, vmax=1, origin="lower", extent=(-6, 6, -6, 6))
    title = ax.set_title("")

    def update(i):
        im.set_data(1 / (1 + np.exp(-(i / 5) * (xx * yy) / 6)))
        title.set_text(f"step {10 * i}")

    return animate.render(fig, update, n)


def test_gif_from_figures_keeps_every_frame(tmp_path):
    path = animate.write_gif(_figs(5), tmp_path / "a.gif", fps=5)
    frames = gif_frames(path)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (360, 360)
    assert not plt.get_fignums()  # figures were closed


def test_gif_subsamples_to_the_frame_bound(tmp_path):
    arrays = [np.zeros((20, 400, 3), np.uint8) for i in range(300)]
    for i, a in enumerate(arrays):
        a[:, i] = 255  # a bar moving right: every frame differs
    path = animate.write_gif(arrays, tmp_path / "b.gif", max_frames=40)
    assert gif_frames(path).shape[0] == 40
    assert list(animate.subsample(300, 40)[[0, -1]]) == [0, 299]


def test_optimised_gif_decodes_to_the_palette_frames_exactly():
    frames = _surfaces(12)
    data = animate.encode_gif(frames, [100] * len(frames))
    indexed, palette = animate.palette_frames(frames)
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    decoded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]
    assert len(decoded) == len(frames)
    for got, idx in zip(decoded, indexed):
        assert np.array_equal(got, colours[idx])  # frame differencing loses nothing
    # and the global palette is close to the rendered colours (no dithering noise)
    assert np.mean([np.abs(f.astype(int) - colours[i]).mean() for f, i in zip(frames, indexed)]) < 3


def test_optimiser_beats_the_plain_encoder_on_training_frames():
    frames = _surfaces(30)
    plain = len(iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=100, loop=0))
    ours = len(animate.encode_gif(frames, [100] * len(frames)))
    print(f"a surface changing everywhere, 30 frames at 400 px: imageio/Pillow default {plain} B, optimised {ours} B "
          f"(x{plain / ours:.1f} smaller)")
    assert ours < plain / 1.3


def test_frame_differencing_pays_where_little_changes():
    """A curve drawn step by step (most of each frame unchanged): differencing should halve it."""
    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    x = np.linspace(0, 1, 200)
    line, = ax.plot(x[:1], x[:1])
    ax.set(xlim=(0, 1), ylim=(0, 1))
    frames = animate.render(fig, lambda i: line.set_data(x[:5 * i + 1], x[:5 * i + 1] ** 2), 40)
    plain = len(iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=100, loop=0))
    ours = len(animate.encode_gif(frames, [100] * len(frames)))
    print(f"a growing curve, 40 frames at 400 px: default {plain} B, optimised {ours} B (x{plain / ours:.1f})")
    assert ours < plain / 1.6


def test_size_bound_drops_frames_never_resolution_then_fails(tmp_path):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (60, 330, 3), dtype=np.uint8) for _ in range(12)]
    small = animate.write_gif(noise, tmp_path / "c.gif", max_bytes=120_000)
    got = gif_frames(small)
    assert small.stat().st_size <= 120_000 and got.shape[2] == 330 and 2 <= got.shape[0] < 12
    with pytest.raises(ValueError, match="bytes"):
        animate.write_gif(noise, tmp_path / "d.gif", max_bytes=2_000)
    assert not (tmp_path / "d.gif").exists() and len(list(tmp_path.iterdir())) == 1  # nothing half-written


def test_narrow_frames_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="320 px"):
        animate.write_gif(_figs(2, side=2, dpi=50), tmp_path / "n.gif")
    assert not list(tmp_path.iterdir())


def test_render_reuses_one_figure():
    fig, ax = plt.subplots(figsize=(1, 1), dpi=40)
    line, = ax.plot([0, 1], [0, 0])
    frames = animate.render(fig, lambda i: line.set_ydata([0, i]), 3)
    assert len(frames) == 3 and frames[0].shape == (40, 40, 3) and not np.array_equal(frames[0], frames[2])
