"""Batched, on-device image preparation and augmentation: tensor ops over the whole batch, no per-image Python.

Images enter as uint8 N x C x H x W on any device; :func:`prepare` turns them into normalised
float tensors of the model's channels and size, :class:`Augment` applies the training
augmentation and :func:`tta_views` the test-time views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, the weights PIL uses for "L".
_LUMA = (0.299, 0.587, 0.114)
TTA_VIEW_COUNTS = {"none": 1, "flip": 2, "tencrop": 10}  # views per image of each test-time mode
TTA_MODES = tuple(TTA_VIEW_COUNTS)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert N x C x H x W to ``channels`` (1 grey or 3 colour) channels; float or uint8 in, float out."""
    x = x.float()
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def prepare(
    images: torch.Tensor, channels: int, size: int, mean: float, std: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 images -> float in the model's channels and ``size`` x ``size``, scaled to [0, 1] and normalised."""
    x = to_channels(images, channels)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return ((x / 255.0 - mean) / std).to(dtype)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip the images where ``mask`` (bool, N) is true, left to right."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``pad`` (reflect) and cut a same-size window at a random offset per image."""
    if pad <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]


def random_affine(
    x: torch.Tensor,
    degrees: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    translate: float = 0.0,
    generator: torch.Generator | None = None,
    aspect: float = 0.0,
    perspective: float = 0.0,
) -> torch.Tensor:
    """One random rotation, zoom, shift, aspect change and perspective tilt per image, by a single ``grid_sample``.

    ``scale`` below 1 zooms in (a random resized crop of that area fraction's square root). ``aspect``
    a stretches one axis and squeezes the other by a factor up to 1 + a (log-uniform): a face crop
    of another aspect ratio squeezed to square. ``perspective`` p tilts the image plane, the projective
    terms drawn from [-p, p]: a head turned or nodded away from the camera.
    """
    n, _, h, w = x.shape
    dev = x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    tx, ty = uniform(-translate, translate), uniform(-translate, translate)
    # Drawn only when asked for, so the random stream of configs without them stays as it was.
    stretch = torch.exp(uniform(-math.log1p(aspect), math.log1p(aspect))) if aspect else torch.ones_like(zoom)
    px, py = ((uniform(-perspective, perspective), uniform(-perspective, perspective)) if perspective
              else (torch.zeros_like(zoom), torch.zeros_like(zoom)))
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    # Output -> input sampling map: [x', y', s'] = M [x, y, 1], then divided by s' (1 without perspective).
    one = torch.ones_like(px)
    matrix = torch.stack([
        torch.stack([cos * stretch, -sin / stretch, tx], 1),
        torch.stack([sin * stretch, cos / stretch, ty], 1),
        torch.stack([px, py, one], 1),
    ], 1).to(x.dtype)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=dev, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=dev, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, h * w, 3)
    mapped = base @ matrix.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(0.2)).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_lowres(
    x: torch.Tensor, p: float, sizes: tuple[int, int] = (12, 32), generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``p`` per image, shrink it to a random side in ``sizes`` and enlarge it back.

    A small face upscaled by a photo pipeline: the detail above that resolution is gone. One side is
    drawn per batch (the resizes run over the chosen images at once).
    """
    n, _, h, w = x.shape
    if p <= 0 or n == 0:
        return x
    apply = torch.rand(n, device=x.device, generator=generator) < p
    side = int(torch.randint(sizes[0], sizes[1] + 1, (1,), device=x.device, generator=generator))
    if side >= min(h, w) or not bool(apply.any()):
        return x
    small = F.interpolate(x[apply], size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    out = x.clone()
    out[apply] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def random_erase(
    x: torch.Tensor, p: float, area: tuple[float, float] = (0.02, 0.2), generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``p`` per image, set one random rectangle (``area`` fraction) to zero (the mean)."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    frac = area[0] + (area[1] - area[0]) * torch.rand(n, device=dev, generator=generator)
    aspect = torch.exp((torch.rand(n, device=dev, generator=generator) - 0.5) * math.log(9))  # 1/3 .. 3
    eh = (torch.sqrt(frac * aspect) * h).clamp(1, h).long()
    ew = (torch.sqrt(frac / aspect) * w).clamp(1, w).long()
    y0 = (torch.rand(n, device=dev, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(n, device=dev, generator=generator) * (w - ew + 1)).long()
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    inside = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1))
    inside = inside & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1))
    apply = torch.rand(n, device=dev, generator=generator) < p
    mask = (inside & apply.view(n, 1, 1)).unsqueeze(1)
    return x.masked_fill(mask, 0.0)


def beta_draw(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw from Beta(``alpha``, ``alpha``), seeded from ``generator``: a seeded run draws it again on resume."""
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), device=device, generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(
    x: torch.Tensor, targets: torch.Tensor, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix over a batch, with probability ``prob``: every image is blended with (mixup) or has a
    rectangle pasted from (CutMix) another image of the batch, and its target (N x K probabilities) is mixed by
    the share of each image it now holds. The share is drawn once per batch from Beta(alpha, alpha), with
    ``mixup`` and ``cutmix`` the alphas (0: off); with both on, each batch takes one of them at even odds.
    Nothing is drawn when both are off, so recipes without them keep their random stream."""
    kinds = [(mix, alpha) for mix, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    n = x.shape[0]
    if not kinds or n < 2:
        return x, targets
    dev = x.device
    draws = torch.rand(2, device=dev, generator=generator).tolist()
    if draws[0] >= prob:
        return x, targets
    kind, alpha = kinds[int(draws[1] * len(kinds))]  # draws lie in [0, 1)
    share = beta_draw(alpha, generator)  # of each image's own pixels
    partner = torch.randperm(n, device=dev, generator=generator)
    if kind == "mixup":
        x = share * x + (1 - share) * x[partner]
    else:
        h, w = x.shape[-2:]
        side = math.sqrt(1 - share)
        bh, bw = round(h * side), round(w * side)
        cy = int(torch.randint(0, h, (1,), device=dev, generator=generator))  # the box's centre
        cx = int(torch.randint(0, w, (1,), device=dev, generator=generator))
        y0, y1 = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x[partner, :, y0:y1, x0:x1]
        share = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the box clipped at the border: the share it really holds
    return x, share * targets + (1 - share) * targets[partner]


def random_exposure(
    x: torch.Tensor, p: float, mean: float = 0.5, std: float = 0.25, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability ``p`` per image, a photo taken in the wrong light: half of those over-exposed (gamma
    0.6-0.9, then 1.3-2x the exposure, highlights clipped), half under-exposed (gamma 1.2-2, 35-70 % of
    the exposure). Works in pixel units like :func:`random_photometric`; nothing is drawn when ``p`` is 0,
    so recipes without it keep their random stream."""
    n = x.shape[0]
    if p <= 0 or n == 0:
        return x
    draws = torch.rand(4, n, device=x.device, generator=generator).view(4, n, 1, 1, 1)
    apply, over = draws[0] < p, draws[1] < 0.5
    gamma = torch.where(over, 0.6 + 0.3 * draws[2], 1.2 + 0.8 * draws[2])
    gain = torch.where(over, 1.3 + 0.7 * draws[3], 0.35 + 0.35 * draws[3])
    pixels = (x * std + mean).clamp(0, 1)
    shifted = (pixels.pow(gamma) * gain).clamp(0, 1)
    return torch.where(apply, (shifted - mean) / std, x)


def random_photometric(
    x: torch.Tensor, strength: float, noise: float = 0.0, blur: float = 0.0, mean: float = 0.5, std: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Other cameras and light, per image: gamma, contrast and brightness jitter, blur and sensor noise.

    Works in pixel units (``x * std + mean``, clamped to [0, 1]) and returns normalised tensors.
    ``strength`` s draws gamma from [1/(1+s), 1+s] (log-uniform), contrast about the image's mean from
    [1 - s, 1 + s] and a brightness shift from [-s/2, s/2]; with probability ``blur`` an image is
    smoothed by a 3x3 binomial kernel; ``noise`` is the largest standard deviation of added Gaussian
    noise (drawn per image from [0, noise]).
    """
    if strength <= 0 and noise <= 0 and blur <= 0:
        return x
    n, dev = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)).view(n, 1, 1, 1)

    p = (x * std + mean).clamp(0, 1)
    if strength > 0:
        log_gamma = math.log1p(strength)
        p = p.pow(torch.exp(uniform(-log_gamma, log_gamma)))
        centre = p.mean(dim=(1, 2, 3), keepdim=True)
        p = (p - centre) * uniform(1 - strength, 1 + strength) + centre + uniform(-strength / 2, strength / 2)
    if blur > 0:
        kernel = torch.tensor([1.0, 2.0, 1.0], device=dev, dtype=p.dtype)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(p.shape[1], 1, 3, 3)
        smooth = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), kernel, groups=p.shape[1])
        apply = torch.rand(n, device=dev, generator=generator) < blur
        p = torch.where(apply.view(n, 1, 1, 1), smooth, p)
    if noise > 0:
        p = p + uniform(0, noise) * torch.randn(p.shape, device=dev, generator=generator, dtype=p.dtype)
    return (p.clamp(0, 1) - mean) / std


@dataclass
class Augment:
    """Training augmentation on normalised float batches; every field 0/False turns that step off."""

    pad: int = 4                 # random-crop padding in pixels (reflect), 0 = off
    flip: bool = True            # horizontal flip with probability 1/2
    degrees: float = 0.0         # rotation range +/- degrees
    scale: tuple[float, float] = (1.0, 1.0)  # zoom range; (0.8, 1.0) zooms in up to 20%
    translate: float = 0.0       # shift range as a fraction of half the image
    erase: float = 0.0           # random-erasing probability per image
    photometric: float = 0.0     # gamma/contrast/brightness jitter strength (see random_photometric)
    noise: float = 0.0           # largest Gaussian-noise standard deviation, pixel units in [0, 1]
    blur: float = 0.0            # probability of a 3x3 blur per image
    aspect: float = 0.0          # aspect-ratio jitter: one axis stretched, the other squeezed, by up to 1 + aspect
    perspective: float = 0.0     # perspective tilt (head pose): projective terms drawn from +/- perspective
    lowres: float = 0.0          # probability of a low-resolution view (shrunk to 12-32 px and enlarged back)
    exposure: float = 0.0        # probability of an over- or under-exposed view (see random_exposure)
    mean: float = 0.5            # the normalisation of the batches, for the photometric steps
    std: float = 0.25

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_exposure(x, self.exposure, self.mean, self.std, generator)
        x = random_photometric(x, self.photometric, self.noise, self.blur, self.mean, self.std, generator)
        x = random_lowres(x, self.lowres, generator=generator)
        x = random_crop(x, self.pad, generator)
        if self.degrees or self.translate or self.aspect or self.perspective or tuple(self.scale) != (1.0, 1.0):
            x = random_affine(x, self.degrees, tuple(self.scale), self.translate, generator,
                              self.aspect, self.perspective)
        if self.flip:
            mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
            x = hflip(x, mask)
        return random_erase(x, self.erase, generator=generator)


def tta_views(x: torch.Tensor, mode: str, pad: int = 4) -> list[torch.Tensor]:
    """The test-time views of a batch: ``none`` (1), ``flip`` (2) or ``tencrop`` (10: 5 shifted windows x flip).

    ``tencrop`` takes the four corner windows and the centre of the image padded by ``pad``,
    each the input's size, so it works on the model's own input size.
    """
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(3)]
    if mode == "tencrop":
        h, w = x.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        offsets = [(0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad), (pad, pad)]
        crops = [padded[..., dy : dy + h, dx : dx + w] for dy, dx in offsets]
        return crops + [c.flip(3) for c in crops]
    raise ValueError(f"unknown TTA mode {mode!r}; valid: {', '.join(TTA_MODES)}")
