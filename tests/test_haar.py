"""Tests for ferkit.detect.haar: OpenCV's Haar cascades as the ``haar`` and ``haar+profile`` detectors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ferkit.detect import detect_faces, load_image, sample_image_path
from ferkit.detect.geometry import box_iou
from ferkit.detect.haar import _Cascade
from ferkit.errors import FerkitError

# Eileen Collins' face in the shipped photo, brows to chin, and her pupils (image-left first), as in test_detect.py.
ASTRONAUT_FACE = (175, 60, 100, 105)
ASTRONAUT_PUPILS = ((203.0, 101.0), (246.0, 103.0))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(sample_image_path())


def test_haar_finds_her_face_and_eyes(astronaut: np.ndarray) -> None:
    (face,) = detect_faces(astronaut, detector="haar")
    assert box_iou(face.box, ASTRONAUT_FACE) > 0.6 and face.keypoints is None
    assert 0.5 < face.score < 1.0
    for found, pupil in zip(face.eyes, ASTRONAUT_PUPILS):
        assert np.hypot(found[0] - pupil[0], found[1] - pupil[1]) < 4


def test_grey_input_gives_the_very_same_faces(astronaut: np.ndarray) -> None:
    # The cascades see luma only.
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    assert detect_faces(grey, detector="haar") == detect_faces(astronaut, detector="haar")


def test_profile_fallback_adds_no_duplicate(astronaut: np.ndarray) -> None:
    assert detect_faces(astronaut, detector="haar+profile") == detect_faces(astronaut, detector="haar")


def test_missing_cascade_names_the_file_and_the_fix() -> None:
    with pytest.raises(FerkitError, match="haarcascade_none.xml: .*opencv-python-headless<5"):
        _Cascade("haarcascade_none.xml")
