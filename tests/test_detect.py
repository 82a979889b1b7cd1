"""Tests for ferkit.detect: the detector registry (and its toy extension), face detection with the default
detector, square aligned crops, image loading. Each backend has its own file (test_haar.py, test_blazeface.py)."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import ferkit.detect
from ferkit.detect import (Face, crop_face, describe_detectors, detect_faces, detector_scales_itself, faces,
                           list_detectors, load_image, register_detector, sample_image_path)
from ferkit.detect.geometry import box_iou, to_grey
from ferkit.errors import FerkitError

# Eileen Collins' face in the shipped 512x512 photo, brows to chin, and her pupils (image-left
# first), read off the image by eye.
ASTRONAUT_FACE = (175, 60, 100, 105)
ASTRONAUT_PUPILS = ((203.0, 101.0), (246.0, 103.0))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = max(min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]), 0)
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(sample_image_path())


@pytest.fixture(scope="module")
def astronaut_faces(astronaut: np.ndarray) -> list[Face]:
    return detect_faces(astronaut)


def test_sample_image_ships_as_rgb_512(astronaut: np.ndarray) -> None:
    assert sample_image_path().name == "astronaut.jpg"
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8


def test_one_face_found_on_the_astronaut(astronaut_faces: list[Face]) -> None:
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    assert iou(face.box, ASTRONAUT_FACE) > 0.6
    assert 0.5 < face.score <= 1.0


def test_eyes_are_found_on_her_pupils(astronaut_faces: list[Face]) -> None:
    eyes = astronaut_faces[0].eyes
    assert eyes is not None
    for found, pupil in zip(eyes, ASTRONAUT_PUPILS):
        assert np.hypot(found[0] - pupil[0], found[1] - pupil[1]) < 4


@pytest.mark.parametrize("side", [448, 640])
def test_one_face_at_other_scales(astronaut: np.ndarray, side: int) -> None:
    # At 448 px the suit holds a large false face that only the score cut removes.
    photo = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA if side < 512 else cv2.INTER_LINEAR)
    faces = detect_faces(photo)
    f = side / 512
    assert len(faces) == 1
    assert iou(faces[0].box, tuple(round(v * f) for v in ASTRONAUT_FACE)) > 0.6
    # Eye centres follow the photo's scale to within a few pixels of the 512 px ones.
    for found, pupil in zip(faces[0].eyes, ASTRONAUT_PUPILS):
        assert np.hypot(found[0] / f - pupil[0], found[1] / f - pupil[1]) < 4


def test_grey_input_finds_the_same_face(astronaut: np.ndarray, astronaut_faces: list[Face]) -> None:
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    # BlazeFace sees colour, so a grey copy gives the same face, not the same numbers.
    (face,) = detect_faces(grey)
    assert iou(face.box, astronaut_faces[0].box) > 0.85
    for found, pupil in zip(face.eyes, ASTRONAUT_PUPILS):
        assert np.hypot(found[0] - pupil[0], found[1] - pupil[1]) < 4


def test_min_size_above_the_face_finds_nothing(astronaut: np.ndarray) -> None:
    assert detect_faces(astronaut, min_size=200) == []


@pytest.mark.parametrize("detector", list_detectors())
@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_no_faces_in_blank_or_noise(kind: str, detector: str) -> None:
    rng = np.random.default_rng(0)
    image = np.full((240, 320), 128, np.uint8) if kind == "blank" else rng.integers(0, 256, (240, 320, 3), np.uint8)
    assert detect_faces(image, detector=detector) == []


def test_unknown_detector_lists_the_valid_ones() -> None:
    assert {"blazeface", "haar", "haar+profile"} <= set(list_detectors())
    with pytest.raises(ValueError, match="haar"):
        detect_faces(np.zeros((32, 32), np.uint8), detector="yolo")


def test_only_blazeface_picks_its_own_resolution() -> None:
    assert {name: detector_scales_itself(name) for name in ("blazeface", "haar", "haar+profile")} == {
        "blazeface": True, "haar": False, "haar+profile": False}
    with pytest.raises(ValueError, match="unknown detector 'yolo'; valid: .*haar"):
        detector_scales_itself("yolo")


def test_bad_image_arrays_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detect_faces(np.zeros((32, 32, 4), np.uint8))


def test_box_iou_by_hand() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(16 / 100)
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share no pixel
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_every_detector_is_described_in_one_line() -> None:
    described = describe_detectors()
    assert list(described) == list_detectors()
    for name, text in described.items():
        assert text.strip() and "\n" not in text and len(text) <= 100, (name, text)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detectors registered within a test are forgotten after it."""
    monkeypatch.setattr(faces, "_DETECTORS", dict(faces._DETECTORS))


def test_a_new_detector_is_one_registered_function(monkeypatch: pytest.MonkeyPatch) -> None:
    built_in = list_detectors()
    with monkeypatch.context() as patch:
        patch.setattr(faces, "_DETECTORS", dict(faces._DETECTORS))

        # The whole toy backend: a face wherever a bright blob is at least min_size wide.
        @register_detector("bright-blobs", "bright blobs as faces (a toy)")
        def bright_blobs(image: np.ndarray, min_size: int) -> list[Face]:
            count, _, stats, _ = cv2.connectedComponentsWithStats((to_grey(image) > 200).astype(np.uint8))
            return [Face(tuple(int(v) for v in stats[i, :4]), 1.0) for i in range(1, count)
                    if stats[i, 2] >= min_size]

        image = np.zeros((100, 120, 3), np.uint8)
        image[5:15, 10:20] = 255   # 10 px, met first in scan order
        image[40:90, 50:110] = 255  # 60 x 50 px
        assert detect_faces(image, min_size=8, detector="bright-blobs") == [
            Face((50, 40, 60, 50), 1.0), Face((10, 5, 10, 10), 1.0)]  # largest first, as from every backend
        assert detect_faces(image[..., 0], min_size=20, detector="bright-blobs") == [Face((50, 40, 60, 50), 1.0)]
        assert list_detectors() == sorted([*built_in, "bright-blobs"])
        assert describe_detectors()["bright-blobs"] == "bright blobs as faces (a toy)"
        assert not detector_scales_itself("bright-blobs")
        with pytest.raises(ValueError, match="uint8"):  # the registry checks images for every backend
            detect_faces(image.astype(np.float32), detector="bright-blobs")
    assert list_detectors() == built_in
    with pytest.raises(ValueError, match="unknown detector 'bright-blobs'"):
        detect_faces(image, detector="bright-blobs")


def test_a_detector_without_a_description_is_described_by_its_docstring(registry: None) -> None:
    @register_detector("nothing", scales_itself=True)
    def nothing(image: np.ndarray, min_size: int) -> list[Face]:
        """Finds no face,
        ever.

        Whatever the photo."""
        return []

    assert describe_detectors()["nothing"] == "Finds no face, ever."
    assert detector_scales_itself("nothing") and detect_faces(np.zeros((8, 8), np.uint8), detector="nothing") == []


def test_a_taken_name_is_refused(registry: None) -> None:
    haar = faces._DETECTORS["haar"]
    with pytest.raises(ValueError, match="'haar' is already registered by ferkit.detect.haar"):
        register_detector("haar")(lambda image, min_size: [])
    assert faces._DETECTORS["haar"] is haar


def detect_modules() -> list[str]:
    """The modules of ferkit.detect, the package first."""
    return ["ferkit.detect"] + [f"ferkit.detect.{m.name}" for m in pkgutil.iter_modules(ferkit.detect.__path__)]


def test_the_registry_is_full_whichever_module_is_imported_first() -> None:
    # Each module imported first into a fresh copy of ferkit (its modules dropped, others kept).
    script = """
import importlib, json, sys
found = {}
for module in sys.argv[1:]:
    for name in [name for name in sys.modules if name == "ferkit" or name.startswith("ferkit.")]:
        del sys.modules[name]
    importlib.import_module(module)
    found[module] = sys.modules["ferkit.detect.faces"].list_detectors()
print(json.dumps(found))
"""
    modules = detect_modules()
    run = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, check=True)
    found = json.loads(run.stdout)
    assert list(found) == modules and all(names == list_detectors() for names in found.values())
    assert {"blazeface", "haar", "haar+profile"} <= set(found["ferkit.detect.faces"])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [48, 64])
def test_crop_shape_and_dtype(astronaut: np.ndarray, astronaut_faces: list[Face], channels: int, size: int) -> None:
    for face in (astronaut_faces[0], astronaut_faces[0].box):
        crop = crop_face(astronaut, face, size=size, channels=channels)
        assert crop.dtype == np.uint8
        assert crop.shape == ((size, size) if channels == 1 else (size, size, 3))


def test_bad_boxes_are_rejected(astronaut: np.ndarray) -> None:
    with pytest.raises(ValueError, match="no area"):
        crop_face(astronaut, (10, 10, 0, 20))
    with pytest.raises(ValueError, match="outside"):
        crop_face(astronaut, (600, 10, 20, 20))


def test_crop_of_the_whole_image_is_the_image(astronaut: np.ndarray) -> None:
    crop = crop_face(astronaut, (0, 0, 512, 512), size=512, margin=0.0, align=False, channels=3)
    np.testing.assert_array_equal(crop, astronaut)


def test_grey_image_gives_three_equal_channels() -> None:
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    crop = crop_face(grey, (8, 8, 32, 32), size=48, channels=3)
    assert crop.shape == (48, 48, 3)
    assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()


def test_box_partly_outside_is_padded_by_edge_replication() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 100), np.uint8)
    # At margin 0 and size == box side the crop is a pure shift by 20 pixels up and left.
    crop = crop_face(image, (-20, -20, 60, 60), size=60, margin=0.0)
    expected = np.pad(image, ((20, 0), (20, 0)), mode="edge")[:60, :60]
    np.testing.assert_array_equal(crop, expected)


def test_margin_enlarges_the_square_around_the_box() -> None:
    image = np.zeros((200, 200), np.uint8)
    image[50:150, 50:150] = 255
    # 100 px box + 25% on each side = 150 px square, shown at 150 px: a 25 px black frame.
    crop = crop_face(image, (50, 50, 100, 100), size=150, margin=0.25)
    assert (crop[25:125, 25:125] == 255).all()
    assert (crop[:24] == 0).all() and (crop[:, :24] == 0).all()


def dot_rows(crop: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre rows of the bright dot in the left and in the right half."""
    rows = np.arange(crop.shape[0], dtype=np.float64)[:, None]
    half = crop.shape[1] // 2
    left, right = crop[:, :half].astype(np.float64), crop[:, half:].astype(np.float64)
    return (rows * left).sum() / left.sum(), (rows * right).sum() / right.sum()


def test_alignment_levels_given_eye_points() -> None:
    image = np.zeros((200, 200), np.uint8)
    eyes = ((70.0, 90.0), (130.0, 120.0))  # a 26.6 degree slant
    for ex, ey in eyes:
        cv2.circle(image, (int(ex), int(ey)), 4, 255, -1)
    face = Face((50, 50, 100, 100), 1.0, eyes)
    left, right = dot_rows(crop_face(image, face, size=100, margin=0.0, align=True))
    assert abs(left - right) < 0.5
    left, right = dot_rows(crop_face(image, face, size=100, margin=0.0, align=False))
    assert right - left == pytest.approx(30, abs=0.5)


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = (255, 0, 0)
    image[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(image).save(path, quality=95, exif=exif)
    loaded = load_image(path)
    assert loaded.shape == (40, 20, 3)
    # Turned clockwise, the red left half ends on top and the blue right half at the bottom.
    assert loaded[5, 10, 0] > 200 and loaded[5, 10, 2] < 50
    assert loaded[35, 10, 2] > 200 and loaded[35, 10, 0] < 50


def test_truncated_jpeg_raises_naming_the_file(tmp_path: Path) -> None:
    data = sample_image_path().read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FerkitError, match="cut.jpg: not a readable image"):
        load_image(path)


def test_text_file_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    with pytest.raises(FerkitError, match="notes.jpg: not a readable image"):
        load_image(path)


def test_missing_file_raises_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FerkitError, match="absent.png: no such image file"):
        load_image(tmp_path / "absent.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [6_000, 1_000])
def test_image_over_the_pixel_limit_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    # 10,000 pixels: over 6,000 Pillow itself only warns, over 2 x 1,000 it refuses to open.
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(FerkitError, match=r"big.png: more pixels than the limit of \d+ "):
        load_image(path)


def test_formats_outside_the_allow_list_are_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    # An EPS file is PostScript: Pillow hands it to Ghostscript, a program, to draw. It must never get there.
    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: called.append(args))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    path = tmp_path / "photo.jpg"
    path.write_bytes(eps)
    with pytest.raises(FerkitError, match=r"photo.jpg: not a readable image \(ferkit reads JPEG, MPO, PNG"):
        load_image(path)
    assert called == []
    from ferkit.detect.image import decode_image

    with pytest.raises(FerkitError, match="not a readable image"):
        decode_image(eps, "upload")
    # The formats users have still read: PNG, WebP, BMP, TIFF and GIF.
    for fmt in ("PNG", "WEBP", "BMP", "TIFF", "GIF"):
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / f"x.{fmt.lower()}", format=fmt)
        assert load_image(tmp_path / f"x.{fmt.lower()}").shape == (8, 8, 3), fmt


def test_a_float_photo_keeps_its_scale_whatever_its_infinities() -> None:
    from ferkit.detect.image import to_rgb_array

    photo = np.full((4, 4), 0.5, np.float32)
    photo[0, 0] = np.inf
    photo[0, 1] = -np.inf
    photo[0, 2] = np.nan
    grey = to_rgb_array(photo)
    assert grey[1, 1] == 128  # 0.5 of 0..1, not 0.5 of 0..255 (nearly black)
    assert grey[0, 0] == 255 and grey[0, 1] == 0 and grey[0, 2] == 0
    assert to_rgb_array(np.array([[np.inf, 100.0]]))[0].tolist() == [255, 100]


def test_a_face_that_overfills_a_crop_is_found_in_a_border():
    # The sample face cut 20 % inside its own width and squeezed to 143x181, as movie-still crops are framed:
    # the first look finds nothing, the black border finds it, centred where it is.
    image = load_image(sample_image_path())
    x, y, w, h = detect_faces(image, 48)[0].box
    cx, cy, side = x + w / 2, y + h / 2, 0.8 * w
    crop = cv2.resize(image[int(cy - 0.55 * side): int(cy + 0.55 * side), int(cx - side / 2): int(cx + side / 2)],
                      (143, 181))
    assert detect_faces(crop, 48, close_ups=False) == []
    (face,) = detect_faces(crop, 48)
    fx, fy, fw, fh = face.box
    assert abs(fx + fw / 2 - 71.5) < 15 and abs(fy + fh / 2 - 90.5) < 15 and fw > 143  # past the edges
    (right_eye, left_eye) = face.eyes
    assert 0 < right_eye[0] < left_eye[0] < 143  # in the crop's own coordinates


@pytest.mark.parametrize("detector", ["blazeface", "haar"])
def test_the_border_looks_find_no_face_where_there_is_none(detector):
    for image in (np.full((181, 143, 3), 128, np.uint8), np.random.default_rng(0).integers(0, 256, (200, 300, 3),
                                                                                           dtype=np.uint8)):
        assert detect_faces(image, 24, detector=detector) == []


def test_a_detector_s_own_close_up_look_replaces_the_borders_and_is_filtered(monkeypatch):
    from ferkit.detect import faces as faces_module

    monkeypatch.setattr(faces_module, "_DETECTORS", dict(faces_module._DETECTORS))
    looks = []

    def close_up(image, min_size):
        looks.append(image.shape)
        return [Face((-20, -10, 180, 180), 0.9),   # centred inside, wider than the image: kept
                Face((100, 150, 30, 30), 0.9),     # too narrow for a face filling the image
                Face((150, 90, 100, 100), 0.9)]    # centred outside

    faces_module.register_detector("never", "finds nothing", close_up=close_up)(lambda image, min_size: [])
    image = np.zeros((181, 143, 3), np.uint8)
    assert [f.box for f in detect_faces(image, 24, detector="never")] == [(-20, -10, 180, 180)]
    assert looks == [(181, 143, 3)]  # once, on the image itself: no black borders
    assert detect_faces(image, 24, detector="never", close_ups=False) == [] and len(looks) == 1
