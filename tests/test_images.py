import numpy as np
import pytest
import torch

from conftest import synthetic_images as _synthetic
from nbhelpers.data import images


def test_array_cache_round_trip(tmp_path):
    data = _synthetic()
    path = images.save_cache(data, tmp_path)
    assert path == tmp_path / "cifar100.npz" and not list(tmp_path.glob("*.tmp*"))
    back = images.load("cifar100", root=tmp_path, download=False)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(back, field), getattr(data, field))
    assert back.classes == data.classes and back.num_classes == 100 and back.shape == (8, 8, 3)


def test_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(images.DataUnavailable) as e:
        images.load("cifar100", root=tmp_path, download=False)
    msg = str(e.value)
    assert "cifar100" in msg and str(tmp_path) in msg and "NBHELPERS_DATA" in msg


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="mnist, cifar10, cifar100"):
        images.load("imagenet")


def test_batcher_visits_every_sample_once_per_epoch():
    data = _synthetic(n=50, classes=1000)
    b = images.DeviceBatches(data.x_train, np.arange(50), batch_size=16, stats=images.STATS["cifar10"], seed=1)
    assert len(b) == 4
    for _ in range(2):
        seen = torch.cat([y for _, y in b])
        assert sorted(seen.tolist()) == list(range(50))
    first, second = (torch.cat([y for _, y in b]) for _ in range(2))
    assert not torch.equal(first, second)  # a fresh permutation each epoch


def test_batcher_normalises_and_denormalises():
    x = np.full((4, 2, 2, 1), 255, np.uint8)
    b = images.DeviceBatches(x, np.zeros(4), batch_size=4, stats=((0.5,), (0.25,)), shuffle=False)
    xb, _ = next(iter(b))
    assert xb.shape == (4, 1, 2, 2) and torch.allclose(xb, torch.full_like(xb, 2.0))
    assert torch.allclose(b.denormalise(xb), torch.ones_like(xb))


def test_random_crop_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = images.random_crop(x, 2, g, mode="constant")
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2,) * 4)
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_and_erase():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    flipped = images.random_flip(x, 0.5, g)
    same = [(torch.equal(f, o), torch.equal(f, o.flip(-1))) for f, o in zip(flipped, x)]
    assert all(a or b for a, b in same) and 10 < sum(b for _, b in same) < 54
    mean = torch.tensor([0.1, 0.2, 0.3])
    erased = images.random_erase(x, 4, mean, p=1.0, generator=g)
    changed = (erased != x).any(1)  # (B, H, W)
    assert changed.any(-1).any(-1).all()                      # every image got a hole (p=1)
    assert changed.sum((1, 2)).max() <= 16                    # at most 4x4 pixels
    hole = erased.permute(0, 2, 3, 1)[changed]
    assert torch.allclose(hole, mean.expand_as(hole))         # filled with the mean
    assert torch.equal(images.random_erase(x, 4, mean, p=0.0, generator=g), x)
    # CoarseDropout's hole is always whole: exactly 4x4 pixels, never clipped at the border
    inside = images.random_erase(torch.rand(256, 3, 8, 8, generator=g), 4, torch.tensor([-1.0] * 3), p=1.0,
                                 generator=g, mode="inside")
    assert ((inside == -1).all(1).sum((1, 2)) == 16).all()
    with pytest.raises(ValueError, match="erase mode"):
        images.random_erase(x, 4, mean, mode="center")


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 3, 32, 32)
    out = images.Augment(crop_padding=4, flip=True, erase_size=16)(x, torch.tensor([0.49, 0.48, 0.45]))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_one_channel_batches_do_not_depend_on_how_the_array_was_made():
    """torchvision's MNIST arrays give the channel axis stride 0, the array cache stride 1 (which also reads as
    channels-last): the same images must give the same strides, hence the same conv kernels and the same numbers."""
    base = np.random.default_rng(0).integers(0, 256, (8, 12, 12), dtype=np.uint8)
    from_files, from_cache = base[..., None], base.reshape(8, 12, 12, 1).copy()
    assert from_files.strides[-1] != from_cache.strides[-1]
    outs = []
    for x in (from_files, from_cache):
        t = images.as_nchw(x)
        b = images.DeviceBatches(x, np.zeros(8), batch_size=8, stats=((0.5,), (0.25,)), shuffle=False)
        xb, _ = next(iter(b))
        assert t.stride() == b.x.stride() == (144, 144, 12, 1) and xb.stride() == (144, 144, 12, 1)
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, 4, 3)
        outs.append(conv(xb))
    assert torch.equal(outs[0], outs[1])
