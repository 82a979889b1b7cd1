import math

import pytest
import torch
import torch.nn.functional as F

from ferkit.data.augment import (
    Augment,
    hflip,
    prepare,
    random_affine,
    random_crop,
    random_erase,
    random_lowres,
    to_channels,
    tta_views,
)


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


def test_affine_without_aspect_or_perspective_matches_affine_grid() -> None:
    """The one warp reproduces torch's affine_grid sampling when the new terms are off."""
    x = torch.rand(6, 1, 20, 24)
    out = random_affine(x, 10.0, (0.9, 1.05), 0.05, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    angle, zoom, tx, ty = ((lo + (hi - lo) * torch.rand(6, generator=gen)) for lo, hi in
                           ((-10, 10), (0.9, 1.05), (-0.05, 0.05), (-0.05, 0.05)))
    angle = angle * math.pi / 180
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-5)


def _bar(width: int, side: int = 48) -> torch.Tensor:
    """A bright vertical bar ``width`` pixels wide in the middle of a dark square."""
    x = torch.zeros(1, 1, side, side)
    x[..., (side - width) // 2:(side + width) // 2] = 1.0
    return x


def test_aspect_stretches_one_axis_and_squeezes_the_other() -> None:
    x = _bar(12).expand(64, 1, 48, 48).contiguous()
    out = random_affine(x, aspect=0.5, generator=torch.Generator().manual_seed(0))
    widths = (out[:, 0, 24] > 0.5).sum(dim=1).float()
    # Sampling x by s in [1/1.5, 1.5] shows the bar 12 / s wide: between 8 and 18 pixels, both ends reached.
    assert widths.min() >= 7 and widths.max() <= 19
    assert widths.min() <= 9 and widths.max() >= 16


def test_perspective_makes_one_side_larger_than_the_other() -> None:
    x = torch.zeros(32, 1, 48, 48)
    x[..., 8:40, 8:40] = 1.0
    out = random_affine(x, perspective=0.3, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out).all()
    heights_left = (out[:, 0, :, 12] > 0.5).sum(dim=1)
    heights_right = (out[:, 0, :, 36] > 0.5).sum(dim=1)
    # A square under a horizontal tilt is a trapezoid: its two sides differ, more in some images than in others.
    assert (heights_left - heights_right).abs().max() >= 4
    plain = random_affine(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal((plain[:, 0, :, 12] > 0.5).sum(dim=1), (plain[:, 0, :, 36] > 0.5).sum(dim=1))


def test_lowres_removes_fine_detail_of_chosen_images_only() -> None:
    checker = ((torch.arange(48).view(48, 1) + torch.arange(48).view(1, 48)) % 2).float()
    x = checker.expand(200, 1, 48, 48).contiguous()
    out = random_lowres(x, 0.5, sizes=(12, 20), generator=torch.Generator().manual_seed(0))
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 0.1
    assert 60 < int(changed.sum()) < 140  # about half
    # A 1-pixel checkerboard cannot survive a 12-20 px view: it averages out to mid-grey.
    assert (out[changed] - 0.5).abs().max() < 0.2
    assert torch.equal(out[~changed], x[~changed])
    assert torch.equal(random_lowres(x, 0.0), x)


def test_exposure_over_and_under_exposes_and_draws_nothing_when_off():
    from ferkit.data.augment import random_exposure

    mean, std = 0.5, 0.25
    pixels = torch.linspace(0.05, 0.95, 16 * 16).view(1, 1, 16, 16).repeat(64, 1, 1, 1)  # every image: dark to light
    x = (pixels - mean) / std
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert random_exposure(x, 0.0, mean, std, gen) is x and torch.equal(gen.get_state(), state)

    out = random_exposure(x, 1.0, mean, std, torch.Generator().manual_seed(0))
    again = random_exposure(x, 1.0, mean, std, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded: a resumed run draws the same views
    shown = out * std + mean
    assert shown.min() >= -1e-6 and shown.max() <= 1 + 1e-6
    brighter = shown.mean(dim=(1, 2, 3)) > pixels.mean(dim=(1, 2, 3))
    clipped = (shown > 1 - 1e-6).float().mean(dim=(1, 2, 3))
    # over-exposed images clip their highlights; under-exposed ones are darker everywhere and clip nothing
    assert 10 < int(brighter.sum()) < 54
    assert bool((clipped[brighter] > 0).all()) and bool((clipped[~brighter] == 0).all())
    assert bool((shown[~brighter] <= pixels[~brighter] + 1e-6).all())
    # a probability of one half leaves about half the images as they were
    half = random_exposure(x, 0.5, mean, std, torch.Generator().manual_seed(1))
    untouched = (half == x).flatten(1).all(dim=1).sum()
    assert 16 < int(untouched) < 48


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixed_targets_are_the_share_of_each_image_a_mixed_image_holds(mixup, cutmix):
    from ferkit.data.augment import mix_batch

    # Image k is the constant k and its target is class k: after mixing, an image's mean pixel is the mean of the
    # class indices its target weighs -- for CutMix only if the share is the pasted box's real area.
    n = 7
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 16, 12).clone()
    targets = torch.eye(n)
    classes = torch.arange(n, dtype=torch.float32)
    changed = 0
    for seed in range(20):
        out, mixed = mix_batch(x, targets, mixup, cutmix, generator=torch.Generator().manual_seed(seed))
        assert out.shape == x.shape and mixed.shape == targets.shape
        assert torch.allclose(mixed.sum(1), torch.ones(n))
        assert torch.allclose(out.mean(dim=(1, 2, 3)), mixed @ classes, atol=1e-5)
        assert (mixed > 1e-6).sum(1).max() <= 2  # each image mixed with one other
        changed += not torch.equal(out, x)
        if mixup and not cutmix:  # a blend: every pixel of an image holds the same two images
            assert torch.allclose(out.amax(dim=(2, 3)), out.amin(dim=(2, 3)))
    assert changed >= 15
    again = mix_batch(x, targets, mixup, cutmix, generator=torch.Generator().manual_seed(3))
    first = mix_batch(x, targets, mixup, cutmix, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def test_mixing_off_or_skipped_leaves_the_batch_and_draws_nothing_when_off():
    from ferkit.data.augment import mix_batch

    x, targets = _batch(4), torch.eye(4)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    out, mixed = mix_batch(x, targets, 0.0, 0.0, generator=gen)
    assert out is x and mixed is targets and torch.equal(gen.get_state(), state)
    out, mixed = mix_batch(x, targets, 1.0, 1.0, prob=0.0, generator=gen)
    assert out is x and mixed is targets
