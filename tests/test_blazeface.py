"""Tests for ferkit.detect.blazeface: anchors, views, merging, turned and small faces, and the ONNX conversion."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.detect import blazeface, crop_face, detect_faces, load_image, sample_image_path
from ferkit.detect.geometry import Face

ROOT = Path(__file__).resolve().parents[1]
PUPILS = ((203.0, 101.0), (246.0, 103.0))  # her right pupil (image-left) first, as in test_detect.py


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(sample_image_path())


def turned(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo turned ``degrees`` counter-clockwise on a canvas that holds all of it, and the 2x3 map."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    nw, nh = round(w * cos + h * sin), round(w * sin + h * cos)
    matrix[:, 2] += ((nw - 1) / 2 - (w - 1) / 2, (nh - 1) / 2 - (h - 1) / 2)
    return cv2.warpAffine(image, matrix, (nw, nh), borderMode=cv2.BORDER_REPLICATE), matrix


def test_anchors_cover_the_two_grids() -> None:
    anchors = blazeface.anchors()
    assert anchors.shape == (896, 2)
    # 16x16 cells with 2 anchors each, then 8x8 cells with 6; centres at half cells.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_view_matrix_maps_the_square_onto_the_view() -> None:
    m = blazeface._view_matrix((99.5, 49.5), 200.0, 0, 128)
    # Pixel centres: the square's first pixel centre lands half a view pixel (0.32) in.
    np.testing.assert_allclose(m @ [0, -50, 1], [0.32, 0.32])
    np.testing.assert_allclose(m @ [99.5, 49.5, 1], [64, 64])
    turned_m = blazeface._view_matrix((0.0, 0.0), 128.0, 90, 128)
    np.testing.assert_allclose(turned_m @ [10, 0, 1], [64, 74], atol=1e-9)  # a quarter turn


def test_views_tile_only_where_small_faces_need_it() -> None:
    # A 512-px photo: 20 model px of the whole view are 80 photo px, so min_size 100 needs no tile.
    assert len(blazeface.plan_views(512, 512, 100)) == len(blazeface.ROTATIONS)
    # min_size 48: tiles of 128 * 48 / 20 = 307.2 px, overlapping by 20 * 2.5 / 128 of a side.
    tile = 128 * 48 / 20
    step = tile * (1 - 20 * 2.5 / 128)
    assert math.ceil((512 - tile) / step) + 1 == 3
    assert len(blazeface.plan_views(512, 512, 48)) == len(blazeface.ROTATIONS) + 3 ** 2
    # A 1280x720 frame: 7 x 4 of those tiles, then 768-px ones (for faces from 120 px), 3 x 1.
    assert len(blazeface.plan_views(720, 1280, 48)) == len(blazeface.ROTATIONS) + 7 * 4 + 3 * 1
    # A 1920x1080 frame: 10 x 6 + 4 x 2 = 68 tiles.
    assert len(blazeface.plan_views(1080, 1920, 48)) == len(blazeface.ROTATIONS) + 10 * 6 + 4 * 2
    # A 4000x3000 photo would need 21 x 16 of them for 48-px faces, more than MAX_TILES: its pyramid
    # starts at 1.1^3 times that tile side (faces from 64 px), 16 x 12 + 6 x 5 + 2 x 2.
    assert len(blazeface.plan_views(3000, 4000, 48)) == len(blazeface.ROTATIONS) + 16 * 12 + 6 * 5 + 2 * 2
    # Tiles are never more than MAX_TILES, however large the photo.
    assert len(blazeface.plan_views(8000, 8000, 10)) <= len(blazeface.ROTATIONS) + blazeface.MAX_TILES


def _detection(x: float, score: float, turn: float = 0.0, view: int = 0) -> blazeface.Detection:
    points = np.zeros((6, 2))
    points[1] = (10 * math.cos(math.radians(turn)), 10 * math.sin(math.radians(turn)))
    return blazeface.Detection(np.array([x, 0.0]), np.array([10.0, 10.0]), points + [x, 0], score, score, 1, view,
                               turn)


def test_merge_averages_overlapping_detections_by_score() -> None:
    merged = blazeface.merge([_detection(0, 0.9, view=0), _detection(2, 0.6, view=1), _detection(50, 0.7)])
    assert len(merged) == 2
    first = merged[0]
    np.testing.assert_allclose(first.centre, [(0 * 0.9 + 2 * 0.6) / 1.5, 0])
    assert first.score == 0.9 and first.evidence == pytest.approx(1.5) and first.views == 2
    # A detection from a view turned otherwise counts for the box, not for the keypoints.
    merged = blazeface.merge([_detection(0, 0.9), _detection(2, 0.6, turn=90, view=1)])
    np.testing.assert_allclose(merged[0].keypoints, _detection(0, 0.9).keypoints)


@pytest.mark.parametrize("degrees", [0, 30, -30, 90, 180])
def test_turned_faces_are_found_with_their_eyes(astronaut: np.ndarray, degrees: float) -> None:
    photo, matrix = turned(astronaut, degrees)
    faces = detect_faces(photo, min_size=60)
    assert len(faces) == 1
    expected = [matrix @ [x, y, 1] for x, y in PUPILS]
    for found, pupil in zip(faces[0].eyes, expected):
        assert math.dist(found, pupil) < 6, (degrees, faces[0].eyes, expected)


def test_turned_views_are_searched_only_where_the_upright_ones_leave_a_doubt(astronaut: np.ndarray,
                                                                          monkeypatch) -> None:
    # Every photo paid for three turned views of the whole photo; an upright face needs none of them
    # (512-px portraits: 19.3 -> 11.3 ms a photo, recall unchanged in every detector_recall condition).
    counts = []
    run_views = blazeface.run_views
    monkeypatch.setattr(blazeface, "run_views", lambda rgb, views: counts.append(len(views)) or run_views(rgb, views))
    tiles = len(blazeface.plan_views(512, 512, 48)) - len(blazeface.ROTATIONS)
    found = blazeface.detect(astronaut, 48)
    assert len(found) == 1 and abs(blazeface.eye_line_angle(found[0])) < 10
    assert counts == [1 + tiles]  # the upright whole photo and its tiles, nothing turned
    counts.clear()
    sideways = np.ascontiguousarray(np.rot90(astronaut))
    found = blazeface.detect(sideways, 48)
    assert counts == [1 + tiles, len(blazeface.ROTATIONS) - 1]  # then the turned views, for its keypoints
    assert len(found) == 1 and abs(abs(blazeface.eye_line_angle(found[0])) - 90) < 15
    counts.clear()
    assert blazeface.detect(np.full((512, 512, 3), 128, np.uint8), 48) == []
    assert counts == [1 + tiles, len(blazeface.ROTATIONS) - 1]  # nothing upright: the turned views look too


def test_aligned_crop_of_a_turned_face_matches_the_upright_one(astronaut: np.ndarray) -> None:
    (upright,) = detect_faces(astronaut, min_size=60)
    photo, _ = turned(astronaut, 30)
    (tilted,) = detect_faces(photo, min_size=60)
    a = crop_face(astronaut, upright, 48, 0.1).ravel().astype(np.float64)
    aligned = crop_face(photo, tilted, 48, 0.1).ravel().astype(np.float64)
    unaligned = crop_face(photo, tilted, 48, 0.1, align=False).ravel().astype(np.float64)
    # Levelled by the eyes, the tilted face's crop is close to the upright one; without, it is not.
    close, far = np.corrcoef(a, aligned)[0, 1], np.corrcoef(a, unaligned)[0, 1]
    assert close > 0.7 and close > far + 0.2, (close, far)


def test_small_faces_are_found_by_tiles_when_min_size_asks(astronaut: np.ndarray) -> None:
    # Five copies of the portrait shrunk so her face is ~48 px, on a 1280x720 frame.
    small = cv2.resize(astronaut, (240, 240), interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    for k in range(5):
        frame[240:480, 20 + k * 250: 260 + k * 250] = small
    assert len(detect_faces(frame, min_size=40)) == 5
    # Asked only for faces of 200 px and more, the whole-photo views miss them, as they should.
    assert detect_faces(frame, min_size=200) == []


def test_a_large_group_photo_is_searched_for_its_small_faces(astronaut: np.ndarray) -> None:
    # A 4000x3000 group photo, 12 faces of ~100 px: its pyramid of tiles starts at faces of 64 px (48 px
    # would need more than MAX_TILES). The whole-photo views alone see faces from 625 px; with at most
    # 64 tiles the pyramid started at 124 px and found none of them.
    head = cv2.resize(astronaut, (500, 500), interpolation=cv2.INTER_AREA)
    frame = np.full((3000, 4000, 3), 90, np.uint8)
    for k in range(12):
        row, col = divmod(k, 4)
        frame[300 + row * 900 : 800 + row * 900, 200 + col * 950 : 700 + col * 950] = head
    faces = detect_faces(frame, min_size=48)
    assert len(faces) == 12 and all(80 < f.box[2] < 130 for f in faces), [f.box for f in faces]


def test_views_in_several_runs_find_what_one_run_finds(astronaut: np.ndarray, monkeypatch) -> None:
    views = blazeface.plan_views(*astronaut.shape[:2], 48)
    assert len(views) > blazeface.VIEWS_PER_RUN and len(views) % blazeface.VIEWS_PER_RUN  # a short last run
    runs = blazeface.run_views(astronaut, views)
    monkeypatch.setattr(blazeface, "VIEWS_PER_RUN", len(views))
    one = blazeface.run_views(astronaut, views)
    assert [d.view for d in runs] == [d.view for d in one] and len(one) > 10
    for a, b in zip(runs, one):
        np.testing.assert_allclose(a.centre, b.centre, atol=1e-3)
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_a_noisy_large_photo_is_seen_as_its_shrunk_copy_is(astronaut: np.ndarray) -> None:
    # The sample photo at 4096 px with strong sensor noise: a bilinear warp straight to 128 px would sample
    # a few pixels of every 32, keeping the noise; views cut from halved copies average it away. Before
    # they were, the face summed 19 against 31 here, seen by 5 views of 6.
    rng = np.random.default_rng(0)
    big = cv2.resize(astronaut, (4096, 4096), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    big = np.clip(big + rng.normal(0, 50, big.shape), 0, 255).astype(np.uint8)
    small = cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)
    (in_big,) = blazeface.detect(big, 400)
    (in_small,) = blazeface.detect(small, 50)
    assert in_big.views == in_small.views
    assert in_big.evidence == pytest.approx(in_small.evidence, rel=0.1)
    np.testing.assert_allclose(in_big.centre / 8, in_small.centre, atol=2)


def test_views_are_cut_from_halved_copies_of_a_large_photo() -> None:
    # A whole-photo view shows 4096 px in 128: halved 4 times (to 256 px), the warp shrinks by 2 more.
    view = blazeface.plan_views(4096, 4096, 400)[0]
    assert blazeface._octave(view) == 4
    assert blazeface._octave(blazeface.plan_views(512, 512, 400)[0]) == 1
    assert blazeface._octave(blazeface.plan_views(200, 200, 400)[0]) == 0
    levels = blazeface._pyramid(np.zeros((4097, 3001, 3), np.uint8), 4)
    assert [level.shape[:2] for level in levels] == [(4097, 3001), (2048, 1500), (1024, 750), (512, 375), (256, 187)]
    # A bright disk on a 2048-px photo lands on the same view pixels whether the view is cut from the photo
    # or from its halved copies (off by their pixel centres, (2^octave - 1) / 2 photo px, it would move
    # 0.17 view px): the disk's centroid in the view agrees to 0.05 view px, turned or not.
    photo = np.zeros((2048, 2048, 3), np.uint8)
    cv2.circle(photo, (1100, 950), 300, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    pyramid = blazeface._pyramid(photo, 3)
    ys, xs = np.mgrid[0:128, 0:128]
    for angle in (0, 30, 90):
        view = blazeface._view_matrix((1000.0, 1050.0), 1100.0, angle, 128)
        assert blazeface._octave(view) == 2
        centroids = []
        for levels in ([photo], pyramid):
            cut = blazeface._cut_view(levels, view)[..., 0].astype(np.float64)
            centroids.append(((xs * cut).sum() / cut.sum(), (ys * cut).sum() / cut.sum()))
        assert math.dist(*centroids) < 0.05, (angle, centroids)


def test_boxes_take_the_haar_framing(astronaut: np.ndarray) -> None:
    (blaze,) = detect_faces(astronaut, detector="blazeface")
    (haar,) = detect_faces(astronaut, detector="haar")
    assert isinstance(blaze, Face) and len(blaze.keypoints) == 6
    centre = lambda b: (b[0] + b[2] / 2, b[1] + b[3] / 2)  # noqa: E731
    assert math.dist(centre(blaze.box), centre(haar.box)) < 0.1 * haar.box[2]
    assert 0.9 < blaze.box[2] / haar.box[2] < 1.1


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="needs ai-edge-litert (dev extra)")
def test_conversion_reproduces_the_shipped_model_and_matches_tflite(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tools" / "blazeface"))
    try:
        import convert
    finally:
        sys.path.pop(0)
    tflite = ROOT / "tools" / "blazeface" / "face_detection_short_range.tflite"
    model = convert.convert(tflite)
    shipped = blazeface.MODELS_DIR / "blazeface_short.onnx"
    assert model.SerializeToString() == shipped.read_bytes()
    assert convert.check(tflite, shipped, samples=3) < 1e-3


def test_views_run_on_the_pool_unless_on_one_core(astronaut, monkeypatch):
    from ferkit.detect.cores import on_one_core, one_core

    calls = []
    spread = blazeface.spread
    monkeypatch.setattr(blazeface, "usable_cores", lambda: 2)
    monkeypatch.setattr(blazeface, "spread", lambda fn, parts: calls.append(1) or spread(fn, parts))
    everywhere = blazeface.detect(astronaut, 48)
    assert calls == [1]
    assert not on_one_core()
    with one_core():
        assert on_one_core()
        with one_core():
            pass
        assert on_one_core()  # a nested block leaves the outer one as it was
        alone = blazeface.detect(astronaut, 48)
    assert not on_one_core()
    assert calls == [1]  # inside one_core() every run is on the calling thread
    assert blazeface._session(blazeface.SPEC.filename).get_session_options().intra_op_num_threads == 1
    assert len(alone) == len(everywhere) == 1
    assert np.allclose(alone[0].centre, everywhere[0].centre, atol=1e-3)
    assert np.allclose(alone[0].keypoints, everywhere[0].keypoints, atol=1e-3)


def test_a_forked_child_makes_its_own_pool(monkeypatch):
    from ferkit.detect import cores

    pool = cores.core_pool()
    assert cores.core_pool() is pool
    monkeypatch.setattr(cores.os, "getpid", lambda: -1)  # as a child process sees it
    child = cores.core_pool()
    assert child is not pool and cores.core_pool() is child
    monkeypatch.undo()
    assert cores.core_pool() is not child  # back in the parent, a pool of its own again
    child.shutdown()


def test_sessions_plan_no_memory_per_input_shape():
    # A server sees photos of every size, so views of every count: memory planned per shape and an
    # arena kept at its largest size grew the server's memory with each new count.
    options = blazeface._session(blazeface.SPEC.filename).get_session_options()
    assert not options.enable_mem_pattern and not options.enable_cpu_mem_arena


def test_a_mirrored_view_sees_the_face_where_the_upright_view_does(astronaut: np.ndarray) -> None:
    height, width = astronaut.shape[:2]
    (view,) = blazeface.plan_views(height, width, 10_000)[:1]  # the whole photo, upright
    (plain,) = blazeface.merge(blazeface.run_views(astronaut, [view]))
    (mirror,) = blazeface.merge(blazeface.run_views(astronaut, [blazeface._mirrored(view)]))
    assert mirror.turn == pytest.approx(0.0)
    face_width = float(plain.size.max())
    assert np.abs(mirror.centre - plain.centre).max() < 0.05 * face_width
    # keypoints swapped back: the person's right eye is still on the picture's left
    assert mirror.keypoints[blazeface.RIGHT_EYE, 0] < mirror.keypoints[blazeface.LEFT_EYE, 0]
    # within the model's own keypoint error (unswapped, the eyes would lie ~0.45 face widths apart)
    assert np.abs(mirror.keypoints - plain.keypoints).max() < 0.15 * face_width
    assert abs(blazeface.eye_line_angle(mirror) - blazeface.eye_line_angle(plain)) < 20


def test_the_close_up_look_finds_a_face_crop_in_its_own_pixels(astronaut: np.ndarray) -> None:
    (face,) = blazeface.detect(astronaut, 48)
    cx, cy = face.centre
    side = 0.8 * float(face.size.max())
    crop = np.ascontiguousarray(astronaut[int(cy - 0.55 * side): int(cy + 0.55 * side),
                                          int(cx - side / 2): int(cx + side / 2)])
    assert blazeface.detect(crop, 48) == []  # the photo's own look misses a face that overfills the crop
    (found,) = blazeface.detect_close_up(crop, 48)
    h, w = crop.shape[:2]
    assert abs(found.centre[0] - (cx - int(cx - side / 2))) < 0.1 * w
    assert abs(found.centre[1] - (cy - int(cy - 0.55 * side))) < 0.1 * h
    assert found.views >= 3 and found.turn == pytest.approx(0.0)
    assert 0 < found.keypoints[blazeface.RIGHT_EYE, 0] < found.keypoints[blazeface.LEFT_EYE, 0] < w
    assert blazeface.detect_close_up(np.full((181, 143, 3), 128, np.uint8), 48) == []
