import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nbhelpers.viz import animate  # noqa: E402


def _figs(n):
    out = []
    for i in range(n):
        fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
        ax.plot([0, 1], [0, i])
        out.append(fig)
    return out


def test_gif_from_figures_keeps_every_frame(tmp_path):
    path = animate.write_gif(_figs(5), tmp_path / "a.gif", fps=5)
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (100, 100)
    assert not plt.get_fignums()  # figures were closed


def test_gif_subsamples_to_the_frame_bound(tmp_path):
    arrays = [np.full((20, 20, 3), i % 256, np.uint8) for i in range(300)]
    path = animate.write_gif(arrays, tmp_path / "b.gif", max_frames=40)
    assert iio.imread(path, index=None).shape[0] == 40
    assert list(animate.subsample(300, 40)[[0, -1]]) == [0, 299]


def test_gif_size_bound_downscales_then_fails(tmp_path):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 255, (120, 120, 3), dtype=np.uint8) for _ in range(10)]
    small = animate.write_gif(noise, tmp_path / "c.gif", max_bytes=90_000)
    assert small.stat().st_size <= 90_000 and iio.imread(small, index=None).shape[1] < 120
    with pytest.raises(ValueError, match="bytes"):
        animate.write_gif(noise, tmp_path / "d.gif", max_bytes=2_000)
    assert not (tmp_path / "d.gif").exists() and len(list(tmp_path.iterdir())) == 1  # nothing half-written


def test_render_reuses_one_figure():
    fig, ax = plt.subplots(figsize=(1, 1), dpi=40)
    line, = ax.plot([0, 1], [0, 0])
    frames = animate.render(fig, lambda i: line.set_ydata([0, i]), 3)
    assert len(frames) == 3 and frames[0].shape == (40, 40, 3) and not np.array_equal(frames[0], frames[2])
