"""Square, eye-levelled face crops at the model's input size."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ferkit.detect.geometry import Face, check_image, to_grey


def crop_face(
    image: np.ndarray,
    face: Face | tuple[int, int, int, int],
    size: int = 48,
    margin: float = 0.2,
    align: bool = True,
    channels: int = 1,
) -> np.ndarray:
    """A size x size uint8 crop of one face from an HxW grey or HxWx3 RGB uint8 image.

    The crop is the square centred on the box (a ``Face`` or an (x, y, w, h) tuple) whose side is
    the box's longer side plus ``margin`` of it on every side; where it leaves the image the edge
    pixels are repeated. With ``align`` and a ``Face`` whose eyes are known, the crop is rotated
    about the box centre so the eyes are level. ``channels`` 1 gives HxW luma, 3 gives HxWx3 RGB.
    """
    check_image(image)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    if margin <= -0.5:
        raise ValueError(f"margin must be greater than -0.5, got {margin}")
    eyes = face.eyes if isinstance(face, Face) and align else None
    box = tuple(int(v) for v in (face.box if isinstance(face, Face) else face))
    if len(box) != 4:
        raise ValueError(f"expected a Face or an (x, y, w, h) box, got {face!r}")
    x, y, w, h = box
    height, width = image.shape[:2]
    if w < 1 or h < 1:
        raise ValueError(f"box {(x, y, w, h)} has no area")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"box {(x, y, w, h)} lies outside the {width}x{height} image")

    # Pixel centres sit on integer coordinates, so a box's centre is at x + (w - 1) / 2.
    cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
    side = max(w, h) * (1 + 2 * margin)
    angle = math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0]) if eyes else 0.0
    # Shrinking is done by INTER_AREA after warping at the image's own resolution, because a
    # bilinear warp alone would alias; the cap only matters for boxes far larger than the image.
    warp_side = size if side <= size else min(round(side), max(size, 2 * max(width, height)))
    scale = warp_side / side
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    mid = (warp_side - 1) / 2
    # Maps image points to crop points: rotate by -angle about the box centre, scale, centre.
    matrix = np.array([[a, b, mid - a * cx - b * cy], [-b, a, mid + b * cx - a * cy]])

    source = to_grey(image) if channels == 1 or image.ndim == 2 else image
    crop = cv2.warpAffine(source, matrix, (warp_side, warp_side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if warp_side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if channels == 3 and crop.ndim == 2:
        crop = np.repeat(crop[:, :, None], 3, axis=2)
    return np.ascontiguousarray(crop)
