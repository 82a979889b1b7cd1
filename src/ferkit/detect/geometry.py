"""What every face detector shares and none owns: the ``Face`` they return, box overlap, and the check and
grey conversion of the images they are given. Backends build on this module; it imports none of them."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box`` is (x, y, w, h) in image pixels, framed as the Haar cascade frames a face (brows to
    chin); every detector's boxes are brought to that framing, so one crop margin serves them all.
    ``score`` is the detector's confidence in 0..1; for Haar cascades it is the logistic of OpenCV's
    ``levelWeights`` (the final stage's summed votes), which ranks faces from one cascade but is not a
    calibrated probability. ``eyes`` holds the two eye centres in image pixels, the person's right eye
    first (image-left in an upright face), or None when they were not both found. ``keypoints`` holds
    BlazeFace's six points (right eye, left eye, nose tip, mouth centre, right ear, left ear).
    """

    box: tuple[int, int, int, int]
    score: float
    eyes: tuple[Point, Point] | None = None
    keypoints: tuple[Point, ...] | None = None


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 for boxes without area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty HxW grey or HxWx3 RGB uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy image, got {getattr(image, 'dtype', type(image).__name__)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise ValueError(f"expected an HxW grey or HxWx3 RGB image, got shape {image.shape}")


def to_grey(image: np.ndarray) -> np.ndarray:
    """An HxW uint8 luma image (ITU-R 601 weights) from an HxW grey or HxWx3 RGB uint8 array."""
    check_image(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
