"""OpenCV's Haar cascades as face detectors: ``haar`` (frontal faces, with eye centres) and ``haar+profile``
(side views too). The cascades ship inside the opencv-python wheel (4.x), not in ferkit."""
from __future__ import annotations

import math
import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ferkit.detect.faces import register_detector
from ferkit.detect.geometry import Face, Point, box_iou, to_grey
from ferkit.errors import FerkitError

# detectMultiScale settings of the face cascades: 15% scale steps, and a face must be found by at
# least 3 overlapping windows. Chosen with benchmarks/haar_settings.py (results/detector_haar_settings.json):
# against OpenCV's usual (1.1, 5) it found 62.8% of 400 FER2013 faces pasted into photos against
# 63.8%, no false face on 200 blank backgrounds either, in 72-83% of the time (two runs; the machine
# is noisy). MIN_FACE_WEIGHT below still drops weak windows.
SCALE_STEP = 1.15
MIN_NEIGHBORS = 3
# The eye search runs on one small face region, so it keeps the finer steps: 10%, 5 neighbours.
EYE_SCALE_STEP = 1.1
EYE_MIN_NEIGHBORS = 5
# Faces whose final-stage vote sum (levelWeights) is below this are dropped (score 0.88 after
# squashing). Measured on scikit-image's sample photos and its 100 LFW faces at three sizes: every
# false face scored below 2 and 289 of 291 found true faces above it (median 7.5).
MIN_FACE_WEIGHT = 2.0
# The profile cascade's sums run lower (the cameraman's side view: 1.8) and it found no false
# faces on those photos, so its cut is looser.
MIN_PROFILE_WEIGHT = 1.0
# Eyes are searched in this band of the face box (fractions of its height): the Haar face box
# starts at the brows and ends at the chin, so eyes sit near 0.4 and nostrils below 0.6.
EYE_BAND = (0.1, 0.6)
# The eye cascade's window is 20 px wide and an eye is about a quarter of the face width,
# so smaller faces are enlarged to this width before searching for eyes.
EYE_SEARCH_WIDTH = 96
# Where each eye is expected, as fractions (x, y) of the face box; the nearest candidate wins.
EYE_EXPECTED = ((0.3, 0.4), (0.7, 0.4))


class _Cascade:
    """A loaded cascade and the lock its detector needs: OpenCV keeps per-image state in the object."""

    def __init__(self, filename: str) -> None:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        path = Path(folder or "") / filename
        if folder is None or not path.is_file() or not hasattr(cv2, "CascadeClassifier"):
            raise FerkitError(
                f"{filename}: OpenCV {cv2.__version__} ships no Haar cascades; install opencv-python-headless<5"
            )
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FerkitError(f"{path}: OpenCV could not load this Haar cascade")
        self.lock = threading.Lock()

    def detect(
        self, grey: np.ndarray, min_size: int, max_size: int = 0, min_weight: float = -math.inf,
        step: float | None = None, neighbours: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N x 4, int) and scores in 0..1 of the objects found in a grey image.

        ``step`` and ``neighbours`` default to the module's SCALE_STEP and MIN_NEIGHBORS, read at call time.
        """
        step = SCALE_STEP if step is None else step
        neighbours = MIN_NEIGHBORS if neighbours is None else neighbours
        with self.lock:
            boxes, _, weights = self.classifier.detectMultiScale3(
                grey, scaleFactor=step, minNeighbors=neighbours, minSize=(min_size, min_size),
                maxSize=(max_size, max_size), outputRejectLevels=True,
            )
        # OpenCV returns empty tuples, not empty arrays, when nothing is found.
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        keep = weights >= min_weight
        return boxes[keep], 1.0 / (1.0 + np.exp(-weights[keep]))


@lru_cache(maxsize=None)
def _cascade(filename: str) -> _Cascade:
    """The cascade in OpenCV's data folder, loaded once per process on first use."""
    return _Cascade(filename)


@register_detector("haar", "OpenCV's frontal-face Haar cascade, with eye centres from its eye cascade")
def _detect_haar(image: np.ndarray, min_size: int) -> list[Face]:
    """Frontal faces from OpenCV's default frontal cascade, with eye centres from its eye cascade."""
    grey = to_grey(image)
    boxes, scores = _cascade("haarcascade_frontalface_default.xml").detect(grey, min_size, 0, MIN_FACE_WEIGHT)
    faces = []
    for b, score in zip(boxes, scores):
        box = _box(b)
        faces.append(Face(box, float(score), _find_eyes(grey, box)))
    return faces


@register_detector("haar+profile", "haar, plus side views from OpenCV's profile cascade")
def _detect_haar_profile(image: np.ndarray, min_size: int) -> list[Face]:
    """Frontal faces, plus side views from the profile cascade where no frontal face was found."""
    grey = to_grey(image)
    faces = _detect_haar(grey, min_size)
    profile = _cascade("haarcascade_profileface.xml")
    width = grey.shape[1]
    # The profile cascade only knows faces turned one way; the mirrored image gives the other.
    found = [(_box(b), float(s)) for b, s in zip(*profile.detect(grey, min_size, 0, MIN_PROFILE_WEIGHT))]
    mirrored = np.ascontiguousarray(grey[:, ::-1])
    for (x, y, w, h), s in zip(*profile.detect(mirrored, min_size, 0, MIN_PROFILE_WEIGHT)):
        found.append(((width - int(x) - int(w), int(y), int(w), int(h)), float(s)))
    for box, score in sorted(found, key=lambda f: f[1], reverse=True):
        if all(box_iou(box, f.box) < 0.3 for f in faces):
            faces.append(Face(box, score, None))
    return faces


def _box(b: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in b)
    return x, y, w, h


def _find_eyes(grey: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Point, Point] | None:
    """Eye centres (image-left first) inside a face box, or None unless one is found in each half."""
    x, y, w, h = box
    top = max(y + int(EYE_BAND[0] * h), 0)
    bottom = min(y + int(EYE_BAND[1] * h), grey.shape[0])
    left, right = max(x, 0), min(x + w, grey.shape[1])
    if bottom <= top or right <= left:
        return None
    roi = grey[top:bottom, left:right]
    if w < EYE_SEARCH_WIDTH:
        factor = EYE_SEARCH_WIDTH / w
        roi = cv2.resize(roi, (round(roi.shape[1] * factor), round(roi.shape[0] * factor)),
                         interpolation=cv2.INTER_LINEAR)
    sx, sy = roi.shape[1] / (right - left), roi.shape[0] / (bottom - top)
    face_w = w * sx
    boxes, _ = _cascade("haarcascade_eye.xml").detect(roi, max(int(face_w / 8), 1), int(face_w / 2),
                                                       step=EYE_SCALE_STEP, neighbours=EYE_MIN_NEIGHBORS)
    best: list[tuple[float, Point] | None] = [None, None]
    for ex, ey, ew, eh in boxes:
        # Centre of the eye box in the enlarged ROI, mapped back to image pixel coordinates.
        cx = left + (ex + (ew - 1) / 2 + 0.5) / sx - 0.5
        cy = top + (ey + (eh - 1) / 2 + 0.5) / sy - 0.5
        u, v = (cx - x) / w, (cy - y) / h
        side = 0 if u < 0.5 else 1
        dist = math.dist((u, v), EYE_EXPECTED[side])
        if best[side] is None or dist < best[side][0]:
            best[side] = (dist, (float(cx), float(cy)))
    if best[0] is None or best[1] is None:
        return None
    return best[0][1], best[1][1]
