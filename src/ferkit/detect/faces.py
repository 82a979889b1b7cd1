"""Face detection by name: ``blazeface`` (the default; MediaPipe's model, shipped in ferkit) and OpenCV's
Haar cascades (``haar``, ``haar+profile``), which ship inside the opencv-python wheel (4.x)."""
from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ferkit.errors import FerkitError

Point = tuple[float, float]

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


Detector = Callable[[np.ndarray, int], list[Face]]  # (HxW grey or HxWx3 RGB uint8, min_size) -> faces


@dataclass(frozen=True)
class _Registered:
    detect: Detector
    scales_itself: bool


_DETECTORS: dict[str, _Registered] = {}
_THREAD = threading.local()


@contextmanager
def one_core() -> Iterator[None]:
    """Within this block, detectors called from this thread keep to it (no threads of their own).

    Elsewhere BlazeFace spreads a photo's views over the cores. Callers that search several photos at
    once, one per thread, save the hand-offs between threads that way: a photo took 9.8 ms of CPU on one
    core against 12.0 ms spread over two.
    """
    before = getattr(_THREAD, "one_core", False)
    _THREAD.one_core = True
    try:
        yield
    finally:
        _THREAD.one_core = before


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def on_one_core() -> bool:
    """Whether this thread is inside :func:`one_core`."""
    return getattr(_THREAD, "one_core", False)


def register_detector(name: str, *, scales_itself: bool = False) -> Callable[[Detector], Detector]:
    """Make a function ``(HxW grey or HxWx3 RGB uint8 image, min_size) -> faces`` usable as
    ``detect_faces(detector=name)``; ``scales_itself`` says it picks its own resolution from the
    full photo, so callers should not shrink the photo for it (see :func:`detector_scales_itself`)."""

    def add(fn: Detector) -> Detector:
        _DETECTORS[name] = _Registered(fn, scales_itself)
        return fn

    return add


def list_detectors() -> list[str]:
    """Names accepted by ``detect_faces(detector=...)``."""
    return sorted(_DETECTORS)


def _registered(detector: str) -> _Registered:
    if detector not in _DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; valid: {', '.join(list_detectors())}")
    return _DETECTORS[detector]


def detector_scales_itself(detector: str) -> bool:
    """Whether ``detector`` picks its own resolution and so gets the photo at full size; the others'
    cost grows with the pixel count, so callers may hand them a shrunk copy of a large photo."""
    return _registered(detector).scales_itself


DEFAULT_DETECTOR = "blazeface"


def detect_faces(image: np.ndarray, min_size: int = 24, detector: str = DEFAULT_DETECTOR) -> list[Face]:
    """Find faces at least ``min_size`` pixels wide in an HxW grey or HxWx3 RGB uint8 image, largest first."""
    registered = _registered(detector)
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    check_image(image)
    faces = registered.detect(image, int(min_size))
    return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)


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


@register_detector("haar")
def _detect_haar(image: np.ndarray, min_size: int) -> list[Face]:
    """Frontal faces from OpenCV's default frontal cascade, with eye centres from its eye cascade."""
    grey = to_grey(image)
    boxes, scores = _cascade("haarcascade_frontalface_default.xml").detect(grey, min_size, 0, MIN_FACE_WEIGHT)
    faces = []
    for b, score in zip(boxes, scores):
        box = _box(b)
        faces.append(Face(box, float(score), _find_eyes(grey, box)))
    return faces


@register_detector("haar+profile")
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


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 for boxes without area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


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


# Where BlazeFace's box sits against the Haar framing of the same face, in face widths: its centre
# lies BLAZE_SHIFT lower along the face's own up-down axis and its side is BLAZE_SIZE times Haar's
# (medians over 80 portraits of benchmarks/portraits.py, seed 0, faces 80-180 px: 0.081 and 1.03).
BLAZE_SHIFT = 0.081
BLAZE_SIZE = 1.03


@register_detector("blazeface", scales_itself=True)  # a few 128-px views, tiled where small faces need it
def _detect_blazeface(image: np.ndarray, min_size: int) -> list[Face]:
    """MediaPipe's short-range BlazeFace over the whole photo in four turns and over tiles for small
    faces (``ferkit.detect.blazeface``), with eyes and keypoints, boxes in the Haar framing."""
    from ferkit.detect import blazeface

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    faces = []
    for d in blazeface.detect(rgb, min_size):
        eyes = d.keypoints[blazeface.RIGHT_EYE], d.keypoints[blazeface.LEFT_EYE]
        across = eyes[1] - eyes[0]
        norm = float(np.hypot(*across))
        # The face's down direction: the eye line turned a quarter clockwise (image y points down).
        down = np.array([-across[1], across[0]]) / norm if norm > 0 else np.array([0.0, 1.0])
        side = float(d.size.max()) / BLAZE_SIZE
        cx, cy = d.centre - BLAZE_SHIFT * side * down
        x, y = round(cx - (side - 1) / 2), round(cy - (side - 1) / 2)
        faces.append(Face((x, y, round(side), round(side)), d.score,
                          tuple((float(px), float(py)) for px, py in eyes),
                          tuple((float(px), float(py)) for px, py in d.keypoints)))
    return faces
