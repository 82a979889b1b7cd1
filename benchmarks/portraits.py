"""Synthetic portrait photos with many different faces, for detector benchmarks.

Each photo is the head and shoulders of ferkit's sample portrait (so a face has a head, hair, ears
and neck around it, as in real photos), with its face replaced by a FER2013 face: the FER2013 crop's
luminance is blended into the portrait's face square (feathered ellipse), the portrait's colour kept.
The head is then turned, scaled and pasted at a seeded position on a seeded background.

    photo, truth = portrait_photo(rng, faces[k], width=120, angle=30, kind="blobs")

``truth`` is (centre x, centre y, face width) in photo pixels; a detection counts as that face when
its centre is within ``CENTRE_TOLERANCE`` face widths of the centre and its width within
``WIDTH_RANGE`` of the face width.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import PORTRAIT_FACE, PORTRAIT_REGION, background  # noqa: E402

from ferkit.detect import load_image, sample_image_path  # noqa: E402

CENTRE_TOLERANCE = 0.4
WIDTH_RANGE = (0.5, 2.5)
FER_MARGIN = 0.1      # a FER2013 crop is about the Haar face box plus 10 % on each side
FEATHER = 0.25        # soft edge of the face blend, as a fraction of the ellipse radius


def _head() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The portrait's head-and-shoulders region (RGB float) and its face box inside it."""
    portrait = load_image(sample_image_path()).astype(np.float32)
    x0, y0, x1, y1 = PORTRAIT_REGION
    fx, fy, fw, fh = PORTRAIT_FACE
    return portrait[y0:y1, x0:x1], (fx - x0, fy - y0, fw, fh)


_HEAD = None


def head_with_face(face: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The portrait head with ``face`` (a grey FER2013 crop) blended in; float RGB and face box."""
    global _HEAD
    if _HEAD is None:
        _HEAD = _head()
    region, (fx, fy, fw, fh) = _HEAD
    region = region.copy()
    side = round(fw * (1 + 2 * FER_MARGIN))
    x, y = round(fx + fw / 2 - side / 2), round(fy + fh / 2 - side / 2)
    patch = cv2.resize(face.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:side, 0:side]
    r = np.hypot((xx - (side - 1) / 2) / (side / 2), (yy - (side - 1) / 2) / (side / 2))
    alpha = np.clip((1 - r) / FEATHER, 0, 1)[..., None]
    target = region[y:y + side, x:x + side]
    # Keep the portrait's colour (chroma), take the FER2013 face's brightness (luma).
    ycc = cv2.cvtColor(np.ascontiguousarray(target / 255), cv2.COLOR_RGB2YCrCb)
    ycc[..., 0] = patch / 255
    recoloured = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB) * 255
    region[y:y + side, x:x + side] = alpha * recoloured + (1 - alpha) * target
    return np.clip(region, 0, 255), (fx, fy, fw, fh)


def paste(canvas: np.ndarray, face: np.ndarray, width: float, angle: float, centre: tuple[float, float]) -> None:
    """Paste a head with ``face`` into ``canvas`` (float RGB, in place) so the face is ``width`` pixels
    wide, turned ``angle`` degrees counter-clockwise, its centre at ``centre``."""
    head, (fx, fy, fw, fh) = head_with_face(face)
    scale = width / fw
    h, w = head.shape[:2]
    # Mask: an ellipse over the head region, feathered, so no straight paste border looks like a feature.
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - (w - 1) / 2) / (w / 2), (yy - (h - 1) / 2) / (h / 2))
    alpha = np.clip((1 - r) / 0.15, 0, 1)
    rgba = np.dstack([head, alpha * 255])
    face_centre = (fx + (fw - 1) / 2, fy + (fh - 1) / 2)
    matrix = cv2.getRotationMatrix2D(face_centre, angle, scale)
    matrix[:, 2] += np.array(centre) - np.array(face_centre)
    out = cv2.warpAffine(rgba, matrix, (canvas.shape[1], canvas.shape[0]), flags=cv2.INTER_AREA
                         if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = out[..., 3:4] / 255
    canvas[:] = a * out[..., :3] + (1 - a) * canvas


def portrait_photo(rng: np.random.Generator, face: np.ndarray, width: float, angle: float = 0.0,
                   kind: str = "blobs", brightness: float = 1.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 640x480 RGB uint8 photo with one head, and its face's (centre x, centre y, width)."""
    canvas = background(rng, kind).astype(np.float32)
    h, w = canvas.shape[:2]
    reach = width * 1.3  # the head around the face must fit
    cx = float(rng.uniform(reach, w - reach)) if w > 2 * reach else w / 2
    cy = float(rng.uniform(reach, h - reach)) if h > 2 * reach else h / 2
    paste(canvas, face, width, angle, (cx, cy))
    return np.clip(canvas * brightness + 0.5, 0, 255).astype(np.uint8), (cx, cy, width)


# How each close-up condition frames the face: the crop's width and height in face widths, and where the face's
# centre sits across the crop (0.5: the middle; 0.25: a quarter of the face beyond the left edge).
CLOSE_UPS = {"close-up": (1.3, 1.65, 0.5), "tight crop": (0.85, 1.0, 0.5), "cut by the edge": (1.6, 1.6, 0.25)}
CLOSE_UP_SIZE = (143, 181)  # the held-out movie stills' crops: width, height


def close_up(photo: np.ndarray, truth: tuple[float, float, float],
             kind: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``photo`` cut around its face as ``kind`` in :data:`CLOSE_UPS` frames it and resized to 143x181, with
    the face's (centre x, centre y, width) in the crop."""
    across, down, where = CLOSE_UPS[kind]
    cx, cy, width = truth
    w, h = across * width, down * width
    x0, y0 = cx - where * w, cy - h / 2
    scale_x, scale_y = CLOSE_UP_SIZE[0] / w, CLOSE_UP_SIZE[1] / h
    matrix = np.float32([[scale_x, 0, -x0 * scale_x], [0, scale_y, -y0 * scale_y]])
    crop = cv2.warpAffine(photo, matrix, CLOSE_UP_SIZE, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return crop, ((cx - x0) * scale_x, (cy - y0) * scale_y, width * scale_x)


def group_photo(rng: np.random.Generator, faces: list[np.ndarray], width: float = 60, size=(1280, 720),
                rows: int = 3) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """A meeting-room frame: ``len(faces)`` heads in ``rows`` rows, faces about ``width`` px wide."""
    from predict_speed import PHOTO_SIZE

    canvas = cv2.resize(background(rng, "blobs"), size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    del PHOTO_SIZE
    per_row = math.ceil(len(faces) / rows)
    truth = []
    for k, face in enumerate(faces):
        row, col = divmod(k, per_row)
        cx = (col + 0.5) * size[0] / per_row + rng.uniform(-0.1, 0.1) * size[0] / per_row
        cy = (row + 0.5) * size[1] / rows + rng.uniform(-0.1, 0.1) * size[1] / rows
        w = width * float(rng.uniform(0.85, 1.15))
        paste(canvas, face, w, float(rng.uniform(-10, 10)), (cx, cy))
        truth.append((cx, cy, w))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), truth


def matches(box: tuple[float, float, float, float], truth: tuple[float, float, float]) -> bool:
    """Whether a detected (x, y, w, h) box is the face ``truth`` = (centre x, centre y, width)."""
    x, y, w, h = box
    cx, cy, width = truth
    return (math.dist((x + w / 2, y + h / 2), (cx, cy)) < CENTRE_TOLERANCE * width
            and WIDTH_RANGE[0] * width < max(w, h) < WIDTH_RANGE[1] * width)


def recall(found: list[list[tuple[float, float, float, float]]], truths: list[list[tuple[float, float, float]]]) -> float:
    """Fraction of true faces matched by some detection of their photo."""
    hits = total = 0
    for boxes, faces in zip(found, truths):
        for t in faces:
            total += 1
            hits += any(matches(b, t) for b in boxes)
    return hits / max(total, 1)
