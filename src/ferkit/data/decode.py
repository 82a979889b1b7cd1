"""Image files to uint8 tensors: decoded, optionally cropped and resized; unreadable files recorded, not raised."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ferkit.detect.image import open_image
from ferkit.errors import FerkitError

# PIL raises SyntaxError for some damaged files (e.g. broken PNG chunks) while decoding.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Crop = Callable[[Image.Image], Image.Image]
"""A hook that cuts the face out of a decoded image (e.g. a face detector's box)."""


def decode_images(
    root: Path,
    relpaths: Sequence[str],
    *,
    rgb: bool = False,
    size: int | None = None,
    crop: Crop | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode files to grayscale (or RGB), optionally cropped and resized to `size` x `size`.

    Returns the uint8 N x C x H x W images of the readable files, their positions in `relpaths`,
    and (position, reason) of each unreadable one. Without `size`, all images must share one size:
    otherwise FerkitError names an image of a size fewer of them have.
    """
    pixels: np.ndarray | None = None
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    odd: list[tuple[int, tuple[int, ...]]] = []  # (position, shape) of readable images unlike the first
    listed = tqdm(relpaths, desc=f"decoding {root.name}", unit=" img", disable=None if progress else True)
    for i, relpath in enumerate(listed):
        try:
            mode = "RGB" if rgb else "L"
            with open_image(root / relpath) as opened:
                image = opened.convert(mode)
            if crop is not None:
                image = crop(image).convert(mode)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image)
        except DECODE_ERRORS as err:
            bad.append((i, f"{type(err).__name__}: {err}"))
            continue
        if pixels is None:
            pixels = np.empty((len(relpaths), *array.shape), dtype=np.uint8)
        elif array.shape != pixels.shape[1:]:
            odd.append((i, array.shape))
            continue
        pixels[len(kept)] = array
        kept.append(i)
    if pixels is not None and odd:
        raise _mixed_sizes(root, relpaths, [(i, pixels.shape[1:]) for i in kept] + odd)
    channels = 3 if rgb else 1
    if pixels is None:
        side = size or 48
        return torch.empty((0, channels, side, side), dtype=torch.uint8), kept, bad
    images = torch.from_numpy(pixels[: len(kept)].copy())
    return (images.permute(0, 3, 1, 2).contiguous() if rgb else images.unsqueeze(1)), kept, bad


def _mixed_sizes(root: Path, relpaths: Sequence[str], shapes: list[tuple[int, tuple[int, ...]]]) -> FerkitError:
    """The error for images of several sizes: it names one of a rarer size beside one of the commonest."""
    counts = Counter(shape for _, shape in shapes)
    common = counts.most_common(1)[0][0]
    example, shape = next((i, s) for i, s in shapes if s != common)
    reference = next(i for i, s in shapes if s == common)
    return FerkitError(
        f"{root / relpaths[example]}: image is {shape[1]}x{shape[0]} but {relpaths[reference]} is "
        f"{common[1]}x{common[0]}, like {counts[common]} of the {len(shapes)} images; all images must have "
        f"the same size: resize or remove the {len(shapes) - counts[common]} other one(s)"
    )
