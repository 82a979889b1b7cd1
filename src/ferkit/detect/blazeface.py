"""BlazeFace (MediaPipe's short-range face detector) in onnxruntime: faces with six keypoints, small and turned ones too.

The model ships as ``ferkit/detect/models/blazeface_short.onnx``, converted from MediaPipe's .tflite
file by ``tools/blazeface/convert.py`` (licence and origin in ``models/README.md``): 128x128 input,
896 anchors. MediaPipe's full-range model (192x192) was tried and left out: on the portraits of
``benchmarks/detector_recall.py`` it found 75-85 % of faces where this one found 98-100 %, at 2.5x
the time a view; small faces are found by tiling instead.

One photo becomes a batch of *views*, each a square part of the photo, warped (turned and scaled) to
the model's input in one affine step, and the views go through the model a few at a time:

- the whole photo, letterboxed, at each angle of ``ROTATIONS``: upright faces, heads tilted up to
  ~45 degrees either way, and photos a phone took sideways or upside down;
- where ``min_size`` asks for faces smaller than the whole-photo view can see, overlapping tiles of
  the photo, each scaled so the smallest face asked for is ``TILE_FACE`` model pixels wide.

Detections of every view are mapped back to photo pixels and merged by weighted non-maximum
suppression (MediaPipe's blending: overlapping boxes are averaged, weighted by their scores).
The faces are registered as the ``blazeface`` detector, their boxes brought to the Haar framing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ferkit.detect.cores import on_one_core, spread, usable_cores
from ferkit.detect.faces import register_detector
from ferkit.detect.geometry import Face, box_iou
from ferkit.errors import FerkitError

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class Spec:
    """One BlazeFace model: its file, input side, anchor layout and score cut."""

    filename: str
    size: int
    strides: tuple[int, ...]      # one SSD layer per stride; layers with equal strides share a grid
    anchors_per_layer: int
    min_score: float              # MediaPipe's threshold for this model


SPEC = Spec("blazeface_short.onnx", 128, (8, 16, 16, 16), 2, 0.5)
# A merged face is kept when its best raw score reaches MIN_SCORE and the raw detections merged into
# it sum to MIN_EVIDENCE (raw detections start at the model's own 0.5). Chosen on synthetic photos
# (seed 3 of benchmarks/portraits.py: 60 face-free backgrounds, 40 portraits, two 15-face group
# frames): every false face there scored below 0.65 or summed below 2, every true face above both.
# A face that only one view saw must score MIN_SCORE_ONE_VIEW: there the true faces (small ones,
# seen by one tile) scored 0.84 and more, and the false ones (and a badge on the sample portrait's
# suit, seen at 33 px) below 0.7.
MIN_SCORE = 0.7
MIN_SCORE_ONE_VIEW = 0.8
MIN_EVIDENCE = 2.0
# Boxes of different views that overlap by more than this (intersection over union) are one face.
NMS_IOU = 0.3
# Angles (degrees) at which the whole photo is shown to the model. The short-range model finds faces
# in any turn, but its keypoints are right only up to ~50 degrees from upright (median eye-line error
# 7-9 degrees at 0-60, over 100 at 90; 30 portraits each), so the quarter turns give every face a
# view where it is within 45 degrees of upright; merging keeps the keypoints of the best-scoring view.
ROTATIONS = (0, 90, -90, 180)
# The upright views' keypoints are trusted for a face whose eye line they put this close to level: the
# model's eye-line error is 7-9 degrees up to 60 degrees of turn, so such a face is within 45 of upright.
LEVEL_ENOUGH = 35.0
# A face this many model pixels wide is found reliably by the short-range model (recall 1.0 at 20 px,
# 0.85 at 16 px on 60 portraits; benchmarks/detector_recall.py); smaller ones fade.
TILE_FACE = 20
# Each pyramid level's tiles are this much larger than the last level's.
TILE_STEP = 2.5
# A photo needing more tiles than this is searched for faces from the smallest width whose pyramid
# fits, the finest tiles grown FINEST_GROWTH at a time: at min_size 48 a 1920x1080 frame needs 68
# tiles, a 4000x3000 photo 336 and is searched from 64 px, a 6000x4000 one from 94 px. With 64 tiles
# at most, a 4000x3000 group photo was searched from 124 px and none of its 24 faces of 100 px were
# found; with 256, all were, in 138 ms on two cores.
MAX_TILES = 256
FINEST_GROWTH = 1.1
# Views go through the model this many at a time, the runs spread over the cores. On one core, 13 views
# in one run took 1.5x the time of runs of 2 or 4 (13.0 against 8.4 ms): the larger run's activations
# no longer stay in the CPU's caches. On two cores, runs of 2 on one thread each took 4.8 ms a photo
# and 8.8 ms of CPU, where onnxruntime's own two threads took 5.7 and 11.2 (its threads spin between
# the layers; told not to, they took longer still).
VIEWS_PER_RUN = 2
# How a view is filled where it leaves the photo (letterbox, tiles at the edges).
BORDER = cv2.BORDER_REPLICATE
# Keypoint order of BlazeFace: the person's right eye (left in the picture of an upright face), left
# eye, nose tip, mouth centre, right ear tragion, left ear tragion.
RIGHT_EYE, LEFT_EYE = 0, 1
MIRROR_KEYPOINTS = [1, 0, 2, 3, 5, 4]  # each keypoint's counterpart in the mirror image
# Where the photo as it is shows no face, it may be one face filling the frame (a close-up, a face crop, a face
# cut by the edge), where a model trained on photos fires weakly. Such an image is shown again inside black
# borders of each of these widths (per side, as a share of its longer side), and each of those mirrored, all
# 12 views in one batch: a face is seen in several of them and merged as a face of many views is. Chosen on
# 500 FER2013 PublicTest faces squeezed to 143x181 as movie-still crops are: found in 477 against 471 with two
# borders (0.25, then 0.6) searched one after the other; 469 with these six borders and no mirrors. Tight
# crops of benchmarks/portraits.py (seeds 3 and 5): 115 against 114 of 120. Face-free images (200 backgrounds,
# 17 pictures of FER+'s not-a-face votes): no more false faces than before. A faceless 640x480 photo costs a
# third of the time it did (39 against 106-128 ms): the borders no longer tile the framed photo.
CLOSE_UP_SHARES = (0.1, 0.25, 0.4, 0.6, 0.8, 1.0)
# When those views find nothing either, the image in the middle border, turned as ROTATIONS turn it: a
# sideways close-up.
CLOSE_UP_TURNED_SHARE = 0.25
# A face the upright close-up views find is kept only with its eye line this close to level: the model's
# keypoints are right up to ~50 degrees of turn, a face turned further is the turned views' to find, and
# the two false faces the close-up views found on 500 blob backgrounds put their eyes 52 and 63 degrees
# from level (of the 253 FER2013 faces they found, 4 lay beyond 45).
CLOSE_UP_LEVEL = 45.0


@lru_cache(maxsize=None)
def _session(filename: str):
    """The model's onnxruntime session, one thread per run: callers spread runs over cores themselves."""
    import onnxruntime as ort

    path = MODELS_DIR / filename
    if not path.is_file():
        raise FerkitError(f"{path}: the BlazeFace model is missing from this ferkit installation; reinstall ferkit")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    # The number of views varies with the photo's size: memory planned per input shape and an arena
    # that keeps its largest size would grow with every new shape a long-running server sees.
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def anchors() -> np.ndarray:
    """Anchor centres (A x 2, x then y, in 0..1 of the view) in the order of the model's outputs."""
    spec = SPEC
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride, count = spec.strides[layer], 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            count += spec.anchors_per_layer
            layer += 1
        grid = math.ceil(spec.size / stride)
        ys, xs = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cells, count, axis=0))
    return np.concatenate(centres).astype(np.float32)


@dataclass
class Detection:
    """A face in photo pixels: centre, size (along the face's own axes), keypoints (6 x 2), score."""

    centre: np.ndarray
    size: np.ndarray
    keypoints: np.ndarray
    score: float
    evidence: float = 0.0   # after merging: the summed scores of the raw detections merged into it
    views: int = 1          # after merging: how many views saw it
    view: int = 0           # before merging: the index of the view that found it
    turn: float = 0.0       # the turn of that view, degrees

    def box(self) -> tuple[float, float, float, float]:
        """The axis-aligned square (x, y, w, h) around the face, whatever its turn."""
        side = float(self.size.max())
        return (float(self.centre[0] - side / 2), float(self.centre[1] - side / 2), side, side)


def _view_matrix(centre: tuple[float, float], side: float, angle: float, size: int) -> np.ndarray:
    """2x3 affine map from photo pixels to a size x size view of the square of ``side`` photo pixels
    centred on ``centre``, turned by ``angle`` degrees (counter-clockwise content turn)."""
    scale = size / side
    theta = math.radians(angle)
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    mid = size / 2
    cx, cy = centre
    # Pixel centres at integer + 0.5 in the view's 0..1 anchor units, hence mid = size / 2 on both sides.
    return np.array([[a, -b, mid - a * cx + b * cy], [b, a, mid - b * cx - a * cy]], dtype=np.float64)


def _tile_levels(height: int, width: int, finest: float) -> list[tuple[float, int, int]]:
    """The pyramid of tiles from side ``finest`` up: (tile side, tiles across, tiles down) per level."""
    side = float(max(height, width))
    levels = []
    tile = finest
    while tile < side:  # the whole-photo views see the faces of every coarser level
        # By the smallest face the next level sees. Where that level is the whole photo, the faces this
        # level is for are smaller, but not the overlap: a face needs room around it, and tiles cut to
        # that face width missed 3 in 400 faces of 48-67 px on 512-px photos that these tiles found.
        overlap = min(TILE_FACE * TILE_STEP / SPEC.size, 0.5) * tile
        step = tile - overlap
        nx = max(1, math.ceil((width - tile) / step) + 1) if width > tile else 1
        ny = max(1, math.ceil((height - tile) / step) + 1) if height > tile else 1
        levels.append((tile, nx, ny))
        tile *= TILE_STEP
    return levels


def plan_views(height: int, width: int, min_size: int) -> list[np.ndarray]:
    """The affine matrices of the views that search a ``height`` x ``width`` photo for faces of at least
    ``min_size`` pixels: the whole photo at each of ``ROTATIONS``, then upright tiles at the scales its
    smaller faces need (a pyramid, ``TILE_STEP`` apart, each level's tiles overlapping by the widest
    face that level is for)."""
    size = SPEC.size
    side = float(max(height, width))
    centre = ((width - 1) / 2, (height - 1) / 2)
    views = [_view_matrix(centre, side, angle, size) for angle in ROTATIONS]
    finest = size * max(min_size, 1) / TILE_FACE
    levels = _tile_levels(height, width, finest)
    while sum(nx * ny for _, nx, ny in levels) > MAX_TILES:
        finest *= FINEST_GROWTH
        levels = _tile_levels(height, width, finest)
    tiles = []
    for tile, nx, ny in levels:
        for j in range(ny):
            for i in range(nx):
                # Tiles spread evenly from edge to edge; a photo narrower than a tile gets one, centred.
                x = (width - tile) * i / (nx - 1) if nx > 1 else (width - tile) / 2
                y = (height - tile) * j / (ny - 1) if ny > 1 else (height - tile) / 2
                tiles.append(_view_matrix((x + (tile - 1) / 2, y + (tile - 1) / 2), tile, 0, size))
    return views + tiles


def _octave(matrix: np.ndarray) -> int:
    """How many times the photo is halved before a view is cut from it: the view then shrinks what it
    takes from that copy by 2x to 4x. Halved once more, to shrink by 1x to 2x, the views were blurrier
    than those the thresholds above were chosen on: the eyes of turned faces moved and the sample
    portrait turned 30 degrees gave a second, false face."""
    scale = math.hypot(matrix[0, 0], matrix[1, 0])  # view pixels per photo pixel
    return max(0, math.floor(math.log2(1 / scale)) - 1) if scale > 0 else 0


def _pyramid(rgb: np.ndarray, octaves: int) -> list[np.ndarray]:
    """The photo and up to ``octaves`` halvings of it, each the mean of 2x2 pixels of the one before
    (pixel i of a level covers pixels 2i and 2i + 1; an odd last row or column is left out), stopping
    before a side would fall under 2 px. Seven times faster than ``cv2.pyrDown`` on a 4000x3000 photo."""
    levels = [rgb]
    while len(levels) <= octaves and min(levels[-1].shape[:2]) >= 4:
        last = levels[-1]
        height, width = last.shape[0] // 2, last.shape[1] // 2
        levels.append(cv2.resize(last[: 2 * height, : 2 * width], (width, height), interpolation=cv2.INTER_AREA))
    return levels


def _cut_view(levels: list[np.ndarray], matrix: np.ndarray) -> np.ndarray:
    """The view of ``matrix`` (photo pixels to view pixels), cut from the coarsest level of the photo's
    :func:`_pyramid` it may use: a SPEC.size x SPEC.size x 3 uint8 image."""
    size = SPEC.size
    octave = min(_octave(matrix), len(levels) - 1)
    # Level pixel q is centred on photo pixel 2^octave q + (2^octave - 1) / 2. Half-pixel shift: the
    # matrices map pixel centres (integers) to view coordinates where a pixel spans [i, i + 1);
    # warpAffine samples view pixel i at its centre i.
    factor = 2**octave
    shifted = matrix.copy()
    shifted[:, 2] += shifted[:, :2].sum(axis=1) * (factor - 1) / 2 - 0.5
    shifted[:, :2] *= factor
    return cv2.warpAffine(levels[octave], shifted, (size, size), flags=cv2.INTER_LINEAR, borderMode=BORDER)


def _run_model(levels: list[np.ndarray], views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw outputs (regressors, score logits) for ``views`` of the photo, in one run;
    ``levels`` is the photo's :func:`_pyramid`."""
    size = SPEC.size
    batch = np.empty((len(views), size, size, 3), dtype=np.uint8)
    for k, matrix in enumerate(views):
        batch[k] = _cut_view(levels, matrix)
    # To -1..1, channels first, in one pass into a C-ordered array (the model would copy a strided one):
    # a tenth of the detector's time at 13 views done as astype, transpose, divide and subtract.
    tensor = np.empty((len(views), 3, size, size), dtype=np.float32)
    np.subtract(batch.transpose(0, 3, 1, 2), 127.5, out=tensor, dtype=np.float32)
    tensor *= 1 / 127.5
    session = _session(SPEC.filename)
    regressors, scores = session.run(None, {session.get_inputs()[0].name: tensor})
    return regressors, scores


def run_views(rgb: np.ndarray, views: list[np.ndarray]) -> list[Detection]:
    """Detections of every view, in photo pixels, before merging."""
    spec = SPEC
    size = spec.size
    # Views far smaller than what they show (a whole 4000-px photo in 128 px) are cut from halved
    # copies of the photo: a bilinear warp alone would sample a few pixels of every 31 and alias.
    levels = _pyramid(rgb, max(_octave(matrix) for matrix in views))
    parts = [views[start : start + VIEWS_PER_RUN] for start in range(0, len(views), VIEWS_PER_RUN)]
    if on_one_core() or len(parts) < 2 or usable_cores() < 2:
        runs = [_run_model(levels, part) for part in parts]
    else:  # OpenCV and onnxruntime let go of the GIL: the parts run in parallel on one session
        runs = spread(lambda part: _run_model(levels, part), parts)
    regressors = np.concatenate([run[0] for run in runs])
    scores = np.concatenate([run[1] for run in runs])
    scores = 1.0 / (1.0 + np.exp(-np.clip(scores[..., 0], -80, 80)))
    grid = anchors()
    found = []
    for k, matrix in enumerate(views):
        keep = np.flatnonzero(scores[k] >= spec.min_score)
        if keep.size == 0:
            continue
        inverse = cv2.invertAffineTransform(matrix)
        mirrored = np.linalg.det(matrix[:, :2]) < 0  # a view of the photo's mirror image
        turn = math.degrees(math.atan2(matrix[1, 0], -matrix[0, 0] if mirrored else matrix[0, 0]))
        raw = regressors[k, keep]
        centre = raw[:, 0:2] / size + grid[keep]
        wh = raw[:, 2:4] / size
        points = raw[:, 4:16].reshape(-1, 6, 2) / size + grid[keep][:, None, :]
        scale = math.hypot(inverse[0, 0], inverse[1, 0]) * size  # photo pixels per view unit
        for n in range(keep.size):
            c = inverse[:, :2] @ (centre[n] * size) + inverse[:, 2]
            p = (points[n] * size) @ inverse[:, :2].T + inverse[:, 2]
            if mirrored:  # the model's right eye (and ear) of a mirror image is the person's left one
                p = p[MIRROR_KEYPOINTS]
            score = float(scores[k, keep[n]])
            found.append(Detection(c, wh[n] * scale, p, score, score, 1, k, turn))
    return found


def merge(found: list[Detection], iou: float = NMS_IOU) -> list[Detection]:
    """Weighted non-maximum suppression: each cluster of overlapping detections becomes their
    score-weighted mean, with the best score of the cluster."""
    rest = sorted(found, key=lambda d: d.score, reverse=True)
    merged = []
    while rest:
        best = rest[0]
        box = best.box()
        joins = [box_iou(box, d.box()) > iou for d in rest]
        cluster = [d for d, join in zip(rest, joins) if join]
        rest = [d for d, join in zip(rest, joins) if not join]
        weights = np.array([d.score for d in cluster])[:, None]
        total = weights.sum()
        # Keypoints are averaged only over detections from views turned as the best one's was: the
        # model's keypoints are good within ~50 degrees of upright, so another turn's are worse.
        same = [d for d in cluster if abs(d.turn - best.turn) < 1.0]
        w_same = np.array([d.score for d in same])[:, None, None]
        merged.append(Detection(
            centre=(np.stack([d.centre for d in cluster]) * weights).sum(0) / total,
            size=(np.stack([d.size for d in cluster]) * weights).sum(0) / total,
            keypoints=(np.stack([d.keypoints for d in same]) * w_same).sum(0) / w_same.sum(),
            score=best.score,
            evidence=float(total),
            views=len({d.view for d in cluster}),
            turn=best.turn,
        ))
    return merged


def detect(rgb: np.ndarray, min_size: int) -> list[Detection]:
    """Faces at least ``min_size`` pixels wide in an HxWx3 RGB uint8 photo.

    The upright views go first (the whole photo at 0 degrees, and the tiles); the turned views of the whole
    photo are searched only where those found no face, or a face whose eye line lies more than
    :data:`LEVEL_ENOUGH` degrees from level (its keypoints are then better read from a turned view)."""
    height, width = rgb.shape[:2]
    views = plan_views(height, width, min_size)
    upright = [views[0], *views[len(ROTATIONS):]]
    raw = run_views(rgb, upright)
    faces = _kept(merge(raw), min_size)
    if faces and all(abs(eye_line_angle(d)) <= LEVEL_ENOUGH for d in faces):
        return faces
    turned = [dataclasses.replace(d, view=d.view + len(upright)) for d in run_views(rgb, views[1:len(ROTATIONS)])]
    return _kept(merge(raw + turned), min_size)


def _mirrored(matrix: np.ndarray) -> np.ndarray:
    """The view of ``matrix`` mirrored left to right (view x to SPEC.size - x)."""
    flipped = matrix.copy()
    flipped[0] = -matrix[0]
    flipped[0, 2] += SPEC.size
    return flipped


def detect_close_up(rgb: np.ndarray, min_size: int) -> list[Detection]:
    """Faces of an HxWx3 RGB uint8 image that is one face filling the frame, in its own pixels (they may reach
    past its edges): the image in black borders of :data:`CLOSE_UP_SHARES` and mirrored, upright, in one batch,
    faces with their eyes within :data:`CLOSE_UP_LEVEL` of level; where those find none, the image turned in a
    border of :data:`CLOSE_UP_TURNED_SHARE`."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    pad = math.ceil(max(CLOSE_UP_SHARES) * side) + 1
    framed = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    centre = (pad + (width - 1) / 2, pad + (height - 1) / 2)
    upright = [_view_matrix(centre, (1 + 2 * share) * side, 0, SPEC.size) for share in CLOSE_UP_SHARES]
    faces = [d for d in _kept(merge(run_views(framed, upright + [_mirrored(m) for m in upright])), min_size)
             if abs(eye_line_angle(d)) <= CLOSE_UP_LEVEL]
    if not faces:
        turned = [_view_matrix(centre, (1 + 2 * CLOSE_UP_TURNED_SHARE) * side, angle, SPEC.size)
                  for angle in ROTATIONS[1:]]
        faces = _kept(merge(run_views(framed, turned)), min_size)
    for d in faces:
        d.centre = d.centre - pad
        d.keypoints = d.keypoints - pad
    return faces


def _kept(found: list[Detection], min_size: int) -> list[Detection]:
    """The merged detections that are faces: scored, seen enough and large enough."""
    return [d for d in found if d.score >= (MIN_SCORE if d.views > 1 else MIN_SCORE_ONE_VIEW)
            and d.evidence >= MIN_EVIDENCE and d.size.max() >= min_size * 0.8]


def eye_line_angle(d: Detection) -> float:
    """Degrees from the person's right eye to their left eye against the image's x axis: 0 for an upright face."""
    dx, dy = d.keypoints[LEFT_EYE] - d.keypoints[RIGHT_EYE]
    return math.degrees(math.atan2(dy, dx))


# Where BlazeFace's box sits against the Haar framing of the same face, in face widths: its centre
# lies BLAZE_SHIFT lower along the face's own up-down axis and its side is BLAZE_SIZE times Haar's
# (medians over 80 portraits of benchmarks/portraits.py, seed 0, faces 80-180 px: 0.081 and 1.03).
BLAZE_SHIFT = 0.081
BLAZE_SIZE = 1.03


def _as_faces(found: list[Detection]) -> list[Face]:
    """Detections as faces with eyes and keypoints, boxes in the Haar framing."""
    faces = []
    for d in found:
        eyes = d.keypoints[RIGHT_EYE], d.keypoints[LEFT_EYE]
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


def _rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def _close_up_blazeface(image: np.ndarray, min_size: int) -> list[Face]:
    """BlazeFace's look at an image that is one face filling the frame (:func:`detect_close_up`)."""
    return _as_faces(detect_close_up(_rgb(image), min_size))


# It scales itself: a few 128-px views of the whole photo, tiled where small faces need it.
@register_detector("blazeface", "MediaPipe's BlazeFace, shipped: turned and small faces, eyes and six keypoints",
                   scales_itself=True, close_up=_close_up_blazeface)
def _detect_blazeface(image: np.ndarray, min_size: int) -> list[Face]:
    """MediaPipe's short-range BlazeFace over the whole photo in four turns and over tiles for small
    faces (:func:`detect`), with eyes and keypoints, boxes in the Haar framing."""
    return _as_faces(detect(_rgb(image), min_size))
