"""Face detection by name: the registry each backend module (``haar``, ``blazeface``, ...) adds itself to
when ``ferkit.detect`` is imported, and :func:`detect_faces`, which calls a backend by its name.

A new detector is one module in this folder that decorates its function with :func:`register_detector`
(``ferkit/detect/__init__.py`` imports every module here); its model files go in ``detect/models/``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ferkit.detect.cores import on_one_core, one_core, usable_cores
from ferkit.detect.geometry import Face, box_iou, check_image

# Callers import these helpers from here, where they lived before the backends moved out.
__all__ = ["DEFAULT_DETECTOR", "Detector", "Face", "box_iou", "describe_detectors", "detect_faces",
           "detector_scales_itself", "list_detectors", "on_one_core", "one_core", "register_detector",
           "usable_cores"]

Detector = Callable[[np.ndarray, int], list[Face]]  # (HxW grey or HxWx3 RGB uint8, min_size) -> faces

DEFAULT_DETECTOR = "blazeface"


@dataclass(frozen=True)
class _Registered:
    detect: Detector
    scales_itself: bool
    description: str = ""
    close_up: Detector | None = None  # its own search for a face that fills the image (see detect_faces)


_DETECTORS: dict[str, _Registered] = {}


def register_detector(
    name: str, description: str | None = None, *, scales_itself: bool = False, close_up: Detector | None = None
) -> Callable[[Detector], Detector]:
    """Make a function ``(HxW grey or HxWx3 RGB uint8 image, min_size) -> faces`` usable as
    ``detect_faces(detector=name)``.

    ``description`` is one line for help texts and docs; without one, the first paragraph of the
    function's docstring serves. ``scales_itself`` says it picks its own resolution from the full photo,
    so callers should not shrink the photo for it (see :func:`detector_scales_itself`). ``close_up``, a function
    of the same kind, is its own second look at an image where it found nothing, for a face that fills the image
    or is cut by its edges (boxes may reach past them); without one, :func:`detect_faces` shows it the image in
    black borders (:data:`CLOSE_UP_PADS`). A name already taken
    raises ValueError: two backends must not silently replace each other.
    """

    def add(fn: Detector) -> Detector:
        if name in _DETECTORS:
            raise ValueError(f"detector {name!r} is already registered by {_DETECTORS[name].detect.__module__}; "
                             "pick another name")
        text = description if description is not None else (inspect.getdoc(fn) or "").split("\n\n")[0]
        _DETECTORS[name] = _Registered(fn, scales_itself, " ".join(text.split()), close_up)
        return fn

    return add


def list_detectors() -> list[str]:
    """Names accepted by ``detect_faces(detector=...)``."""
    return sorted(_DETECTORS)


def describe_detectors() -> dict[str, str]:
    """Each detector's name and its one-line description, in name order."""
    return {name: _DETECTORS[name].description for name in list_detectors()}


def _registered(detector: str) -> _Registered:
    if detector not in _DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; valid: {', '.join(list_detectors())}")
    return _DETECTORS[detector]


def detector_scales_itself(detector: str) -> bool:
    """Whether ``detector`` picks its own resolution and so gets the photo at full size; the others'
    cost grows with the pixel count, so callers may hand them a shrunk copy of a large photo."""
    return _registered(detector).scales_itself


CLOSE_UP_PADS = (0.25, 0.6)
"""The black borders a second and third look set around an image where nothing was found, per side, as a share
of its longer side: a face that fills the frame, or is cut by its edge, then sits in a photo the way detectors
expect. Black, not the image's own colours: with a mean-colour border, face-free blob backgrounds showed 4 false
faces in 180; with black, none (and tight crops were found as often)."""
CLOSE_UP_WIDTH = 0.35
"""The narrowest face those looks keep, as a share of the image's shorter side: they are there for faces that
fill the frame."""


def detect_faces(image: np.ndarray, min_size: int = 24, detector: str = DEFAULT_DETECTOR,
                 close_ups: bool = True) -> list[Face]:
    """Find faces at least ``min_size`` pixels wide in an HxW grey or HxWx3 RGB uint8 image, largest first.

    Where none is found and ``close_ups`` is on, the detector looks again for a face that fills the image:
    close-ups, face crops and faces cut by the frame, which detectors made for photos miss. It does so its own
    way where it has one (BlazeFace: the image in black borders of several widths, and mirrored, in one batch),
    else the image is searched again inside black borders (:data:`CLOSE_UP_PADS`). Only faces centred inside the
    image and at least :data:`CLOSE_UP_WIDTH` of it wide are kept from that look; their boxes may reach past
    the image's edges.
    """
    registered = _registered(detector)
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    check_image(image)
    faces = registered.detect(image, int(min_size))
    if not faces and close_ups:
        if registered.close_up is not None:
            faces = _fill_the_image(registered.close_up(image, int(min_size)), image)
        for share in CLOSE_UP_PADS if registered.close_up is None else ():
            faces = faces or _in_a_border(registered, image, int(min_size), share)
    return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)


def _fill_the_image(faces: list[Face], image: np.ndarray) -> list[Face]:
    """Those of ``faces`` a close-up look keeps: centred inside ``image`` and at least :data:`CLOSE_UP_WIDTH` of
    its shorter side wide."""
    h, w = image.shape[:2]
    return [f for f in faces if 0 <= f.box[0] + f.box[2] / 2 < w and 0 <= f.box[1] + f.box[3] / 2 < h
            and f.box[2] >= CLOSE_UP_WIDTH * min(h, w)]


def _in_a_border(registered: _Registered, image: np.ndarray, min_size: int, share: float) -> list[Face]:
    """The faces found in ``image`` set in a black border ``share`` of its longer side wide, in the image's own
    coordinates, that :func:`_fill_the_image` keeps."""
    import cv2

    h, w = image.shape[:2]
    pad = max(1, round(share * max(h, w)))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)

    def back(points: tuple | None) -> tuple | None:
        return None if points is None else tuple((x - pad, y - pad) for x, y in points)

    found = [Face((x - pad, y - pad, bw, bh), face.score, back(face.eyes), back(face.keypoints))
             for face in registered.detect(padded, min_size) for x, y, bw, bh in [face.box]]
    return _fill_the_image(found, image)
