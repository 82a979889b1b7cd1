"""Recall, false faces and time of the Haar face detector for several (scale step, min neighbours) settings.

One JSON line per setting on stdout (notes go to stderr). The settings trade detection time against
recall: a coarser scale step scans fewer image scales, and fewer required neighbours make up for the
overlapping windows a coarser step loses. ferkit's default (``ferkit.detect.faces.SCALE_STEP`` and
``MIN_NEIGHBORS``) is chosen from this benchmark.

- **Faces**: FER2013 PrivateTest crops (real faces, 48x48 grey), enlarged to 64-200 px and pasted at
  seeded positions on seeded 640x480 backgrounds. As the Recognizer does, each photo is shrunk to a
  320-px copy and searched down to 24 px of it. A face counts as found when a detection overlaps its
  paste box with intersection over union above 0.3. FER2013's crops are tight (brow to chin, little
  context), which Haar cascades find less readily than looser photos, so compare settings with each
  other, not with other detectors' published recall.
- **False faces**: detections on face-free backgrounds (flat, gradient, blobs, grain).
- **Time**: mean milliseconds per 320x240 copy, all settings timed in this one run.

    python benchmarks/haar_settings.py --data ../shared/data/fer2013 --out results/detector_haar_settings.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import PHOTO_SIZE, background, iou, write_record  # noqa: E402

from ferkit.data.readers import load_dataset  # noqa: E402
from ferkit.detect import haar  # noqa: E402

SETTINGS = ((1.1, 5), (1.1, 4), (1.1, 3), (1.15, 5), (1.15, 4), (1.15, 3), (1.2, 4), (1.2, 3), (1.2, 2), (1.25, 3))
FACE_WIDTHS = (64, 96, 144, 200)   # pasted face widths in the 640x480 photo, px; cycled over the faces
DETECT_SIZE, MIN_FACE = 320, 24    # the Recognizer's defaults
BACKGROUNDS = ("flat", "gradient", "blobs", "grain")


def make_cases(faces: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, tuple[float, ...], int]]:
    """(grey detection copy, face box in that copy, pasted width) for each face crop."""
    scale = DETECT_SIZE / max(PHOTO_SIZE)
    cases = []
    for k, face in enumerate(faces):
        width = FACE_WIDTHS[k % len(FACE_WIDTHS)]
        photo = cv2.cvtColor(background(rng, BACKGROUNDS[k % len(BACKGROUNDS)]), cv2.COLOR_RGB2GRAY)
        x = int(rng.integers(0, PHOTO_SIZE[0] - width + 1))
        y = int(rng.integers(0, PHOTO_SIZE[1] - width + 1))
        photo[y:y + width, x:x + width] = cv2.resize(face, (width, width), interpolation=cv2.INTER_LINEAR)
        small = cv2.resize(photo, (round(PHOTO_SIZE[0] * scale), round(PHOTO_SIZE[1] * scale)),
                           interpolation=cv2.INTER_AREA)
        cases.append((small, (x * scale, y * scale, width * scale, width * scale), width))
    return cases


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    test = load_dataset(args.data, format="fer2013", splits=("test",), progress=False)["test"]
    pick = rng.choice(len(test), size=min(args.faces, len(test)), replace=False)
    cases = make_cases(test.images[pick, 0].numpy(), rng)
    scale = DETECT_SIZE / max(PHOTO_SIZE)
    size = (round(PHOTO_SIZE[0] * scale), round(PHOTO_SIZE[1] * scale))
    blanks = [cv2.resize(cv2.cvtColor(background(rng, BACKGROUNDS[i % len(BACKGROUNDS)]), cv2.COLOR_RGB2GRAY),
                         size, interpolation=cv2.INTER_AREA) for i in range(args.backgrounds)]
    cascade = haar._cascade("haarcascade_frontalface_default.xml")
    defaults = (haar.SCALE_STEP, haar.MIN_NEIGHBORS)
    figures = []
    try:
        for step, neighbours in SETTINGS:
            haar.SCALE_STEP, haar.MIN_NEIGHBORS = step, neighbours
            found = {w: 0 for w in FACE_WIDTHS}
            elapsed = 0.0
            for small, box, width in cases:
                start = time.perf_counter()
                boxes, _ = cascade.detect(small, MIN_FACE, 0, haar.MIN_FACE_WEIGHT)
                elapsed += time.perf_counter() - start
                found[width] += any(iou(tuple(b), box) > 0.3 for b in boxes)
            false = sum(len(cascade.detect(b, MIN_FACE, 0, haar.MIN_FACE_WEIGHT)[0]) for b in blanks)
            per_width = len(cases) // len(FACE_WIDTHS)
            line = {"benchmark": "haar_settings", "scale_step": step, "min_neighbors": neighbours,
                    "default": (step, neighbours) == defaults, "faces": len(cases),
                    "recall": round(sum(found.values()) / len(cases), 4),
                    "recall_by_width": {str(w): round(n / per_width, 4) for w, n in found.items()},
                    "false_faces": false, "backgrounds": len(blanks),
                    "ms_per_copy": round(elapsed / len(cases) * 1e3, 2)}
            print(json.dumps(line), flush=True)
            figures.append(line)
    finally:
        haar.SCALE_STEP, haar.MIN_NEIGHBORS = defaults
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 folder (its PrivateTest faces are used)")
    parser.add_argument("--faces", type=int, default=400, help="face crops pasted, one per photo")
    parser.add_argument("--backgrounds", type=int, default=200, help="face-free photos for false faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads")
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    figures = measure(args)
    if args.out:
        write_record(args.out, "haar_settings", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
