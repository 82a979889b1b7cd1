"""BlazeFace (MediaPipe's short-range face detector) in onnxruntime: faces with six keypoints, small and turned ones too.

The model ships as ``ferkit/detect/models/blazeface_short.onnx``, converted from MediaPipe's .tflite
file by ``tools/blazeface/convert.py`` (licence and origin in ``models/README.md``): 128x128 input,
896 anchors. MediaPipe's full-range model (192x192) was tried and left out: on the portraits of
``benchmarks/detector_recall.py`` it found 75-85 % of faces where this one found 98-100 %, at 2.5x
the time a view; small faces are found by the pyramid below instead.

One photo becomes a batch of *views*, each a part of the photo warped (turned and scaled) to the model's
input in one affine step, and the views go through the model a few at a time:

- the whole photo, letterboxed in the model's 128 x 128, at each angle of ``ROTATIONS``: upright faces,
  heads tilted up to ~45 degrees either way, and photos a phone took sideways or upside down;
- where ``min_size`` asks for faces smaller than the whole-photo view can see, the photo scaled so the
  smallest face asked for is ``TILE_FACE`` model pixels wide (and again 2.5x, 6.25x ... smaller, a pyramid),
  each scale cut into pieces of up to ``PIECE`` x ``PIECE`` pixels. The model is convolutional: a piece
  larger than 128 px gives it a larger grid of anchors, each seeing what it would see in a 128-px view.

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


@dataclass
class View:
    """A part of the photo as the model sees it: ``matrix`` (2 x 3) maps photo pixels to the view's
    ``width`` x ``height`` pixels (multiples of 16, the model's coarsest stride)."""

    matrix: np.ndarray
    width: int = 128
    height: int = 128


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
# ... and, for a face large enough for the whole-photo view, scored this high. The sample photo upside down
# was seen by the upright views at 0.72 with its eyes level, on the mouth (36-41 px off; the view turned
# 180 degrees scores it 0.92, eyes right), where upright it scores 0.96.
UPRIGHT_SURE = 0.85
# A face this many model pixels wide is found reliably by the short-range model (recall 1.0 at 20 px,
# 0.85 at 16 px on 60 portraits; benchmarks/detector_recall.py); smaller ones fade.
TILE_FACE = 20
# Each pyramid level shows the photo this much smaller than the last level (its "tiles", the part of the
# photo a 128-px view of it covers, this much larger).
TILE_STEP = 2.5
# A level is cut into pieces of at most PIECE x PIECE model pixels that overlap by PIECE_OVERLAP, so a face
# of the widest size a level is for (TILE_FACE * TILE_STEP = 50 px) lies whole in one of them. Before, a
# level was cut into 128-px tiles overlapping by 50 px: a 512-px photo searched from 48-px faces was 9 tiles,
# 3.2 times its area in model pixels, against one piece of 224 x 224 now.
PIECE = 320
PIECE_OVERLAP = 64
# A photo whose pyramid would be larger than this many 128 x 128 views (in model pixels) is searched for
# faces from the smallest width whose pyramid fits, the finest level's tiles grown FINEST_GROWTH at a time.
# With 64 tiles at most, a 4000x3000 group photo was searched from 124 px and none of its 24 faces of
# 100 px were found; with 256, all were, in 138 ms on two cores.
MAX_TILES = 256
FINEST_GROWTH = 1.1
# Views go through the model this many at a time, the runs spread over the cores. On one core, 13 views
# in one run took 1.5x the time of runs of 2 or 4 (13.0 against 8.4 ms): the larger run's activations
# no longer stay in the CPU's caches. On two cores, runs of 2 on one thread each took 4.8 ms a photo
# and 8.8 ms of CPU, where onnxruntime's own two threads took 5.7 and 11.2 (its threads spin between
# the layers; told not to, they took longer still).
VIEWS_PER_RUN = 2
# A small face lies in one piece of its level (two where pieces overlap), where the tiles it replaced saw it
# two to four times, at other offsets; one sampling scores it lower than the best of several. A face that
# only one view saw, scored SECOND_LOOK_SCORE or more but under MIN_SCORE_ONE_VIEW, gets a second look: a
# 128-px view centred on it, the face SECOND_LOOK_FACE model pixels wide, and then counts as a face of two
# views if that view sees it too. On detector_recall.py's seed 1 (40 photos a condition, 4 group frames),
# pieces alone missed 2 turned faces and 5 group faces seen by one view at 0.65-0.80, that tiles had found;
# with the second look, 1 group face (0.645), and backgrounds' one-view candidates (up to 0.68) found
# nothing there. Seeds 0, 1, 2: recall at or above the tiles' in every condition, the same false faces.
# Shown 32 px wide, two thirds of the default smallest face (48 px), a patch of the portrait's suit seen once at
# 23-33 px was confirmed as often as a faint face: 44 px wide, on detector_recall.py's seed 3 (200 photos a
# condition, 12 group frames; BlazeFace alone) 2 more faces of 1,980 were found and extra faces fell from 9 to 7
# (32, 44, 48, 56, 64 px: 13, 11, 14, 12, 13 faces missed; 9, 7, 4, 6, 4 extra). Checked on seeds 1 and 7: the
# same faces found, 1 more dim face on seed 7, extra faces 4 -> 0 and 9 -> 2, no false faces on either.
SECOND_LOOK_SCORE = 0.6
SECOND_LOOK_FACE = 44
SECOND_LOOKS = 8
# The pyramid's pieces are upright, and a face too small for the whole photo's turned views (under TILE_FACE
# model px there) was only ever seen upright: a sideways phone photo of a 64-px face in a 640-px frame was seen by
# the pieces at 0.53-0.70 and found in none of the views. So where the turned views run, each candidate the
# upright views saw (TURNED_LOOK_SCORE or more; not a face with its eyes level) that is too small for them gets a
# look in each turn of ROTATIONS, a 128-px view centred on it, the face TURNED_LOOK_FACE model px wide by its upright
# size (which overstates a turned face's by 1-1.6x), at most TURNED_LOOKS of them, best first.
TURNED_LOOK_SCORE = 0.55
TURNED_LOOK_FACE = 40
TURNED_LOOKS = 4
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
# from level (of the 253 FER2013 faces they found, 4 lay beyond 45; two tight crops found at 0.78 and 0.82
# in all 12 views lay at 47 and 48).
CLOSE_UP_LEVEL = 50.0
# A face cut by the frame scores low in every view (the model never saw a face without its chin or its
# cheeks), but most of the 12 views see it and put its eyes, nose and mouth in the same places, where the
# views that see a pattern as a face disagree on them. So the close-up views also keep a face seen in
# CLOSE_UP_VIEWS views, with raw detections (from the model's own 0.5) summing to CLOSE_UP_EVIDENCE and
# keypoints spread by at most CLOSE_UP_SPREAD of its size (Detection.spread). Chosen on benchmarks/portraits.py
# seeds 11-13 (240 crops each) against 4,000 face-free images of seeds 21-24 (half 640x480, half 143x181):
# tight crops found 233 against 215 of 240, cut by the edge 233 against 230, false faces 2 both ways. The
# faces missed at 0.7 spread 0.03-0.10; the face-free patterns seen in 6 or more views 0.093-0.205.
CLOSE_UP_VIEWS = 6
CLOSE_UP_EVIDENCE = 5.0
CLOSE_UP_SPREAD = 0.08
# Where the black borders find nothing, the same 12 views again with borders of mid grey (GREY_FILL): a face cut
# at the cheeks meets black as a hard dark edge where its outline should be, and grey as a softer one, and tight
# crops the black views missed are seen there by 10-12 views that agree on the keypoints (spread 0.04-0.09). So
# do face-free patterns, scoring as well but spread 0.09-0.19: the grey views keep only a face seen by
# GREY_VIEWS views, with CLOSE_UP_EVIDENCE, spread at most GREY_SPREAD and eyes within GREY_LEVEL of level, never
# one for its score alone (grey borders kept by the black views' rule: 23 false faces on 1,194 face-free images).
# Chosen on benchmarks/portraits.py seeds 11-14 (150 crops of each kind each) against 1,194 face-free images of the
# same seeds (half 640x480, half 143x181) that nothing else found a face in: tight crops missed by the black views
# 17, found by the grey 13; cut by the edge 8 and 5; false faces 0. The grey views run only where the black ones saw
# something (a raw detection of 0.5): all 31 crops the black views missed had one, 201 of 1,197 face-free images did,
# so most images without a face are spared them: 300 face-free images (half 640x480) took 32.4 ms each, 46.1 with
# the grey views always run, 32.6 before them.
GREY_FILL = 128
GREY_VIEWS = 10
GREY_SPREAD = 0.09
GREY_LEVEL = 30.0


# Sessions kept, one per view size: 128 x 128 and the sizes of recent pieces (about 3 MB each).
SESSIONS = 8


@lru_cache(maxsize=SESSIONS)
def _session(filename: str, height: int = 128, width: int = 128):
    """The model's onnxruntime session for views of ``height`` x ``width``, one thread per run: callers spread
    runs over cores themselves."""
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
    # The file leaves H and W free; fixed, onnxruntime runs a 128-px view as fast as the 128-only file did
    # (2.8 against 3.4 ms for two views; a 224 x 288 piece 11.2 against 13.2 ms). A new size costs ~10 ms.
    options.add_free_dimension_override_by_name("H", height)
    options.add_free_dimension_override_by_name("W", width)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def anchors(height: int = 128, width: int = 128) -> np.ndarray:
    """Anchor centres (A x 2, x then y, in pixels of a ``height`` x ``width`` view) in the order of the
    model's outputs: per stride, its grid's cells row by row, each cell's anchors together."""
    spec = SPEC
    centres = []
    layer = 0
    while layer < len(spec.strides):
        stride, count = spec.strides[layer], 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            count += spec.anchors_per_layer
            layer += 1
        ys, xs = np.meshgrid((np.arange(height // stride) + 0.5) * stride, (np.arange(width // stride) + 0.5) * stride,
                             indexing="ij")
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
    spread: float = 0.0     # after merging: how far its views disagree on the keypoints (mean std / face size)

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
    # Pixel centres at integer + 0.5 in view pixels, as the anchors' centres are, hence mid = size / 2 on both sides.
    return np.array([[a, -b, mid - a * cx + b * cy], [b, a, mid - b * cx - a * cy]], dtype=np.float64)


def _tile_levels(height: int, width: int, finest: float) -> list[float]:
    """The pyramid from tiles of side ``finest`` up: each level's tile side (the photo pixels that are 128
    model pixels there), up to the last one smaller than the photo (the whole-photo views see the faces of
    every coarser level)."""
    side = float(max(height, width))
    levels = []
    tile = finest
    while tile < side:
        levels.append(tile)
        tile *= TILE_STEP
    return levels


def _piece_starts(extent: float) -> tuple[int, list[float]]:
    """Pieces along one side of a level ``extent`` model pixels long: their length (a multiple of 32, so that
    photos of many sizes share a few piece sizes, each with its session) and where each starts, spread evenly
    from edge to edge (one piece longer than the side is centred on it)."""
    length = min(PIECE, 32 * math.ceil(extent / 32))
    if extent <= length:
        return length, [(extent - length) / 2]
    count = math.ceil((extent - PIECE) / (PIECE - PIECE_OVERLAP)) + 1
    return length, [(extent - length) * i / (count - 1) for i in range(count)]


def _level_pieces(height: int, width: int, tile: float) -> list[View]:
    """The pieces of the level whose tiles are ``tile`` photo pixels: the photo at SPEC.size / tile, cut up."""
    scale = SPEC.size / tile
    piece_width, xs = _piece_starts(width * scale)
    piece_height, ys = _piece_starts(height * scale)
    # Photo pixel i spans [scale i, scale (i + 1)) of the scaled photo, as in _view_matrix.
    return [View(np.array([[scale, 0.0, scale / 2 - x], [0.0, scale, scale / 2 - y]]), piece_width, piece_height)
            for y in ys for x in xs]


def _area(views: list[View]) -> int:
    return sum(view.width * view.height for view in views)


def plan_views(height: int, width: int, min_size: int) -> list[View]:
    """The views that search a ``height`` x ``width`` photo for faces of at least ``min_size`` pixels: the
    whole photo at each of ``ROTATIONS``, then the upright pieces of each level of the pyramid its smaller
    faces need (``TILE_STEP`` apart, from the level where ``min_size`` is ``TILE_FACE`` model pixels)."""
    size = SPEC.size
    side = float(max(height, width))
    centre = ((width - 1) / 2, (height - 1) / 2)
    views = [View(_view_matrix(centre, side, angle, size)) for angle in ROTATIONS]
    finest = size * max(min_size, 1) / TILE_FACE
    while True:
        pieces = [view for tile in _tile_levels(height, width, finest) for view in _level_pieces(height, width, tile)]
        if _area(pieces) <= MAX_TILES * size * size:
            return views + pieces
        finest *= FINEST_GROWTH


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


def _cut_view(levels: list[np.ndarray], view: View) -> np.ndarray:
    """``view`` cut from the coarsest level of the photo's :func:`_pyramid` it may use: a height x width x 3
    uint8 image."""
    matrix = view.matrix
    octave = min(_octave(matrix), len(levels) - 1)
    # Level pixel q is centred on photo pixel 2^octave q + (2^octave - 1) / 2. Half-pixel shift: the
    # matrices map pixel centres (integers) to view coordinates where a pixel spans [i, i + 1);
    # warpAffine samples view pixel i at its centre i.
    factor = 2**octave
    shifted = matrix.copy()
    shifted[:, 2] += shifted[:, :2].sum(axis=1) * (factor - 1) / 2 - 0.5
    shifted[:, :2] *= factor
    return cv2.warpAffine(levels[octave], shifted, (view.width, view.height), flags=cv2.INTER_LINEAR,
                          borderMode=BORDER)


def _run_model(levels: list[np.ndarray], views: list[View]) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw outputs (regressors, score logits) for ``views`` of the photo, all of one size, in
    one run; ``levels`` is the photo's :func:`_pyramid`."""
    width, height = views[0].width, views[0].height
    batch = np.empty((len(views), height, width, 3), dtype=np.uint8)
    for k, view in enumerate(views):
        batch[k] = _cut_view(levels, view)
    # To -1..1, channels first, in one pass into a C-ordered array (the model would copy a strided one):
    # a tenth of the detector's time at 13 views done as astype, transpose, divide and subtract.
    tensor = np.empty((len(views), 3, height, width), dtype=np.float32)
    np.subtract(batch.transpose(0, 3, 1, 2), 127.5, out=tensor, dtype=np.float32)
    tensor *= 1 / 127.5
    session = _session(SPEC.filename, height, width)
    regressors, scores = session.run(None, {session.get_inputs()[0].name: tensor})
    return regressors, scores


def _parts(views: list[View]) -> list[list[View]]:
    """``views`` in runs of the model: VIEWS_PER_RUN views of one size at a time, in their order."""
    parts: list[list[View]] = []
    for view in views:
        last = parts[-1] if parts else None
        if last and len(last) < VIEWS_PER_RUN and (last[0].width, last[0].height) == (view.width, view.height):
            last.append(view)
        else:
            parts.append([view])
    return parts


def run_views(rgb: np.ndarray, views: list[View]) -> list[Detection]:
    """Detections of every view, in photo pixels, before merging."""
    spec = SPEC
    # Views far smaller than what they show (a whole 4000-px photo in 128 px) are cut from halved
    # copies of the photo: a bilinear warp alone would sample a few pixels of every 31 and alias.
    levels = _pyramid(rgb, max(_octave(view.matrix) for view in views))
    parts = _parts(views)
    if on_one_core() or len(parts) < 2 or usable_cores() < 2:
        runs = [_run_model(levels, part) for part in parts]
    else:  # OpenCV and onnxruntime let go of the GIL: the parts run in parallel on one session
        runs = spread(lambda part: _run_model(levels, part), parts)
    found = []
    k = 0
    for part, (regressors, logits) in zip(parts, runs):
        grid = anchors(part[0].height, part[0].width)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[..., 0], -80, 80)))
        for regressor, score in zip(regressors, scores):
            found += _decode(views[k].matrix, regressor, score, grid, spec.min_score, k)
            k += 1
    return found


def _decode(matrix: np.ndarray, regressors: np.ndarray, scores: np.ndarray, grid: np.ndarray, min_score: float,
            index: int) -> list[Detection]:
    """The detections of one view (``matrix``; its anchors' ``grid``) scoring ``min_score`` or more, in photo
    pixels. The model's regressors are offsets from the anchor and sizes, in view pixels."""
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    inverse = cv2.invertAffineTransform(matrix)
    mirrored = np.linalg.det(matrix[:, :2]) < 0  # a view of the photo's mirror image
    turn = math.degrees(math.atan2(matrix[1, 0], -matrix[0, 0] if mirrored else matrix[0, 0]))
    raw = regressors[keep]
    centres = (raw[:, 0:2] + grid[keep]) @ inverse[:, :2].T + inverse[:, 2]
    points = (raw[:, 4:16].reshape(-1, 6, 2) + grid[keep][:, None, :]) @ inverse[:, :2].T + inverse[:, 2]
    if mirrored:  # the model's right eye (and ear) of a mirror image is the person's left one
        points = points[:, MIRROR_KEYPOINTS]
    sizes = raw[:, 2:4] * math.hypot(inverse[0, 0], inverse[1, 0])  # photo pixels per view pixel
    return [Detection(centres[n], sizes[n], points[n], float(scores[keep[n]]), float(scores[keep[n]]), 1, index, turn)
            for n in range(keep.size)]


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
        points = np.stack([d.keypoints for d in same])
        size = (np.stack([d.size for d in cluster]) * weights).sum(0) / total
        merged.append(Detection(
            centre=(np.stack([d.centre for d in cluster]) * weights).sum(0) / total,
            size=size,
            keypoints=(points * w_same).sum(0) / w_same.sum(),
            score=best.score,
            evidence=float(total),
            views=len({d.view for d in cluster}),
            spread=float(points.std(axis=0).mean() / max(float(size.max()), 1e-6)),
            turn=best.turn,
        ))
    return merged


def detect(rgb: np.ndarray, min_size: int) -> list[Detection]:
    """Faces at least ``min_size`` pixels wide in an HxWx3 RGB uint8 photo.

    The upright views go first (the whole photo at 0 degrees, and the pieces of its pyramid), then a second
    look at each doubtful face (:func:`_second_looks`); the turned views of the whole photo are searched only
    where those found no face, a face whose eye line lies more than :data:`LEVEL_ENOUGH` degrees from level
    (its keypoints are then better read from a turned view), or a face the whole-photo view can see that
    scored under :data:`UPRIGHT_SURE` (it may be upside down)."""
    height, width = rgb.shape[:2]
    views = plan_views(height, width, min_size)
    raw: list[Detection] = []
    searched = 0  # views searched so far: each batch's views are numbered after them, for merge's count

    def search(batch: list[View]) -> list[Detection]:
        nonlocal searched
        raw.extend(dataclasses.replace(d, view=d.view + searched) for d in run_views(rgb, batch))
        searched += len(batch)
        return merge(raw)

    merged = search([views[0], *views[len(ROTATIONS):]])
    looks = _second_looks(merged, min_size)
    if looks:
        merged = search(looks)
    faces = _kept(merged, min_size)
    # A face the whole photo's view can see (TILE_FACE model px wide there) is seen upright with a high score.
    seen_whole = TILE_FACE * max(height, width) / SPEC.size
    if faces and all(abs(eye_line_angle(d)) <= LEVEL_ENOUGH and (d.score >= UPRIGHT_SURE or d.size.max() < seen_whole)
                     for d in faces):
        return faces
    unsure = [d for d in merged if not (_is_face(d, min_size) and abs(eye_line_angle(d)) <= LEVEL_ENOUGH)]
    merged = search(views[1:len(ROTATIONS)])
    looks = _turned_looks(unsure, min_size, seen_whole)
    return _kept(search(looks) if looks else merged, min_size)


def _second_looks(merged: list[Detection], min_size: int) -> list[View]:
    """128-px views centred on the doubtful faces of ``merged``: seen by one view only, scored from
    :data:`SECOND_LOOK_SCORE` up to :data:`MIN_SCORE_ONE_VIEW`, each shown at :data:`SECOND_LOOK_FACE` model
    pixels wide (at most :data:`SECOND_LOOKS` of them, best first)."""
    doubtful = sorted((d for d in merged if d.views == 1 and SECOND_LOOK_SCORE <= d.score < MIN_SCORE_ONE_VIEW
                       and _supported(d, min_size)),
                      key=lambda d: d.score, reverse=True)
    return [_look_at(d, SECOND_LOOK_FACE) for d in doubtful[:SECOND_LOOKS]]


def _look_at(d: Detection, face: float, angle: float = 0.0) -> View:
    """A 128-px view centred on ``d``, turned ``angle`` degrees, in which ``d`` is ``face`` model pixels wide."""
    return View(_view_matrix((float(d.centre[0]), float(d.centre[1])), SPEC.size * float(d.size.max()) / face, angle,
                             SPEC.size))


def _turned_looks(candidates: list[Detection], min_size: int, seen_whole: float) -> list[View]:
    """128-px views, one in each turn of :data:`ROTATIONS` but upright, centred on the upright views' candidates
    that are too small for the whole photo's turned views (under ``seen_whole`` px), scored
    :data:`TURNED_LOOK_SCORE` or more (at most :data:`TURNED_LOOKS` of them, best first)."""
    small = sorted((d for d in candidates if d.score >= TURNED_LOOK_SCORE and d.size.max() < seen_whole
                    and d.size.max() >= min_size * 0.8), key=lambda d: d.score, reverse=True)
    return [_look_at(d, TURNED_LOOK_FACE, angle) for d in small[:TURNED_LOOKS] for angle in ROTATIONS[1:]]


def _mirrored(view: View) -> View:
    """``view`` mirrored left to right (view x to width - x)."""
    flipped = view.matrix.copy()
    flipped[0] = -view.matrix[0]
    flipped[0, 2] += view.width
    return View(flipped, view.width, view.height)


def detect_close_up(rgb: np.ndarray, min_size: int) -> list[Detection]:
    """Faces of an HxWx3 RGB uint8 image that is one face filling the frame, in its own pixels (they may reach
    past its edges): the image in black borders of :data:`CLOSE_UP_SHARES` and mirrored, upright, in one batch,
    faces kept as faces are (:func:`_is_face`) or seen in most of those views (:func:`_seen_widely`), with their eyes
    within :data:`CLOSE_UP_LEVEL` of level; where those find none but saw something, the same views in grey borders,
    keeping a face only if nearly all of them see it alike (:func:`_seen_by_nearly_all`); then the image turned in a
    border of :data:`CLOSE_UP_TURNED_SHARE`."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    pad = math.ceil(max(CLOSE_UP_SHARES) * side) + 1
    framed = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    centre = (pad + (width - 1) / 2, pad + (height - 1) / 2)
    upright = [View(_view_matrix(centre, (1 + 2 * share) * side, 0, SPEC.size)) for share in CLOSE_UP_SHARES]
    upright += [_mirrored(m) for m in upright]
    merged = merge(run_views(framed, upright))
    faces = [d for d in merged if abs(eye_line_angle(d)) <= CLOSE_UP_LEVEL
             and (_is_face(d, min_size) or _seen_widely(d, min_size))]
    if not faces and merged:
        grey = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(GREY_FILL,) * 3)
        faces = [d for d in merge(run_views(grey, upright)) if _seen_by_nearly_all(d, min_size)]
    if not faces:
        turned = [View(_view_matrix(centre, (1 + 2 * CLOSE_UP_TURNED_SHARE) * side, angle, SPEC.size))
                  for angle in ROTATIONS[1:]]
        faces = _kept(merge(run_views(framed, turned)), min_size)
    for d in faces:
        d.centre = d.centre - pad
        d.keypoints = d.keypoints - pad
    return faces


def _seen_by_nearly_all(d: Detection, min_size: int) -> bool:
    """Whether a face of the grey-bordered close-up views is seen alike by :data:`GREY_VIEWS` of them, with
    :data:`CLOSE_UP_EVIDENCE`, keypoints spread at most :data:`GREY_SPREAD` and eyes within :data:`GREY_LEVEL` of
    level, near ``min_size`` or larger."""
    return (_supported(d, min_size) and d.views >= GREY_VIEWS and d.evidence >= CLOSE_UP_EVIDENCE
            and d.spread <= GREY_SPREAD and abs(eye_line_angle(d)) <= GREY_LEVEL)


def _seen_widely(d: Detection, min_size: int) -> bool:
    """Whether a close-up face scored under the bar is seen alike in :data:`CLOSE_UP_VIEWS` views with
    :data:`CLOSE_UP_EVIDENCE` and keypoints spread at most :data:`CLOSE_UP_SPREAD`, near ``min_size`` or larger."""
    return (_supported(d, min_size) and d.views >= CLOSE_UP_VIEWS and d.evidence >= CLOSE_UP_EVIDENCE
            and d.spread <= CLOSE_UP_SPREAD)


def _kept(found: list[Detection], min_size: int) -> list[Detection]:
    """The merged detections that are faces (:func:`_is_face`)."""
    return [d for d in found if _is_face(d, min_size)]


def _is_face(d: Detection, min_size: int) -> bool:
    """Whether a merged detection is a face: scored, seen enough and large enough."""
    return d.score >= (MIN_SCORE if d.views > 1 else MIN_SCORE_ONE_VIEW) and _supported(d, min_size)


def _supported(d: Detection, min_size: int) -> bool:
    """Whether a merged detection's raw detections sum to MIN_EVIDENCE and it is near ``min_size`` or larger."""
    return d.evidence >= MIN_EVIDENCE and d.size.max() >= min_size * 0.8


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
