import pytest
import torch

from ferkit.data.augment import Augment, hflip, prepare, random_crop, random_erase, to_channels, tta_views


def _batch(n=6, c=1, h=12, w=12):
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_prepare_scales_converts_and_resizes():
    images = torch.full((2, 3, 10, 10), 255, dtype=torch.uint8)
    x = prepare(images, channels=1, size=20, mean=0.5, std=0.25)
    assert x.shape == (2, 1, 20, 20) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


def test_to_channels_luma_and_expand():
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 1] = 100.0
    torch.testing.assert_close(to_channels(rgb, 1), torch.full((1, 1, 2, 2), 58.7))
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(to_channels(grey, 3)[:, 2], grey[:, 0])


def test_flip_really_flips_only_masked_images():
    x = _batch(3)
    out = hflip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0, 0, :, 0], x[0, 0, :, -1])
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2].flip(-1), x[2])


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = _batch(8)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 12, dx:dx + 12] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not all(torch.equal(out[i], x[i]) for i in range(len(x)))


def test_random_erase_zeroes_a_rectangle():
    x = torch.ones(16, 1, 20, 20)
    out = random_erase(x, p=1.0, generator=torch.Generator().manual_seed(0))
    for img in out[:, 0]:
        rows, cols = torch.nonzero(img == 0, as_tuple=True)
        assert len(rows) > 0
        # the zeros fill their bounding box exactly: one rectangle
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert torch.equal(random_erase(x, p=0.0), x)


def test_augment_keeps_shape_dtype_and_is_seeded():
    x = torch.randn(32, 1, 48, 48)
    aug = Augment(pad=4, flip=True, degrees=10, scale=(0.9, 1.0), translate=0.05, erase=0.5)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_identity_augment_changes_nothing():
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(Augment(pad=0, flip=False)(x), x)


def test_tta_views():
    x = _batch(2)
    assert len(tta_views(x, "none")) == 1
    flip = tta_views(x, "flip")
    assert torch.equal(flip[1], x.flip(3))
    ten = tta_views(x, "tencrop", pad=2)
    assert len(ten) == 10 and all(v.shape == x.shape for v in ten)
    assert torch.equal(ten[4], x)  # the centre window of the padded image is the image
    assert torch.equal(ten[9], x.flip(3))
    with pytest.raises(ValueError, match="tencrop"):
        tta_views(x, "twelve")
