"""Faces found by each detector, by condition, side by side in one run: recall, false faces, time per photo.

Every detector is run as ``Recognizer`` runs it with its defaults (``find_faces``): BlazeFace on the
photo as it is (``min_face`` 48 px of the photo; tiles where small faces need them), the Haar cascade
on a 320-px copy. Photos come from ``benchmarks/portraits.py``: the sample portrait's head with a
FER2013 PrivateTest face blended in, on seeded backgrounds. Conditions, after the issue's table:

- ``upright``: one face, 64-190 px wide (``recall_by_width`` splits it by width);
- ``turned 15`` / ``turned 30`` / ``turned 45``: the head turned that many degrees, either way;
- ``sideways``: turned 90 degrees, as a phone photo without its orientation tag;
- ``dim``: upright, the whole photo at 35 % brightness;
- ``close-up``, ``tight crop``, ``cut by the edge``: an upright 190-px face cut out of its photo and resized to
  143x181 as face crops of movie stills are: the face filling the frame, cut 15 % inside its own width, or a
  quarter of it beyond the left edge (``portraits.CLOSE_UPS``);
- ``group``: 1280x720 frames with 15 heads in three rows, faces 51-69 px;
- ``backgrounds``: face-free photos (flat, gradient, blobs, grain): every face found there is false;
- ``extra_faces``: faces found in the portraits of the turned, dim and upright conditions and in the group
  frames that match no face put there (the portrait's suit has a badge that a detector may take for a face).

``ms_per_photo`` is the mean time of ``find_faces`` over the upright photos, both detectors timed in
this run, in blocks of all the photos that alternate three times (see :func:`time_detectors`).

    python benchmarks/detector_recall.py --data path/to/fer2013 --out results/detector_recall.json
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
from portraits import CLOSE_UPS, close_up, group_photo, matches, portrait_photo  # noqa: E402
from predict_speed import background, write_record  # noqa: E402

from ferkit.data.readers import load_dataset  # noqa: E402
from ferkit.engine.predict import Recognizer  # noqa: E402

DETECTORS = ("blazeface", "haar")
WIDTHS = (64, 96, 144, 190)
TIMING_ROUNDS = 3
KINDS = ("blobs", "grain", "gradient", "flat")
CONDITIONS = {"upright": (0, 1.0), "turned 15": (15, 1.0), "turned 30": (30, 1.0), "turned 45": (45, 1.0),
              "sideways": (90, 1.0), "dim": (0, 0.35)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    test = load_dataset(args.data, format="fer2013", splits=("test",), progress=False)["test"]
    faces = test.images[rng.permutation(len(test))[: args.photos * 2 + 15 * args.groups], 0].numpy()
    recognizers = {name: Recognizer.from_pretrained(detector=name, threads=args.threads) for name in DETECTORS}
    figures: dict[str, Any] = {name: {"recall": {}, "found": {}} for name in DETECTORS}
    extra = {name: 0 for name in DETECTORS}
    upright: list[np.ndarray] = []
    by_width = {name: {w: 0 for w in WIDTHS} for name in DETECTORS}
    for condition, (angle, brightness) in CONDITIONS.items():
        hits = {name: 0 for name in DETECTORS}
        for k in range(args.photos):
            width = WIDTHS[k % len(WIDTHS)]
            turn = angle * (1 if k % 2 else -1)
            photo, truth = portrait_photo(rng, faces[k], width, turn, KINDS[k % len(KINDS)], brightness)
            if condition == "upright":
                upright.append(photo)
            for name, recognizer in recognizers.items():
                found = recognizer.find_faces(photo)
                hit = any(matches(f.box, truth) for f in found)
                hits[name] += hit
                extra[name] += sum(not matches(f.box, truth) for f in found)
                if condition == "upright":
                    by_width[name][width] += hit
        for name in DETECTORS:
            figures[name]["recall"][condition] = round(hits[name] / args.photos, 4)
        print(condition, {n: figures[n]["recall"][condition] for n in DETECTORS}, file=sys.stderr, flush=True)
    for condition in CLOSE_UPS:
        hits = {name: 0 for name in DETECTORS}
        for k in range(args.photos):
            photo, truth = portrait_photo(rng, faces[k], 190, 0.0, KINDS[k % len(KINDS)])
            crop, inside = close_up(photo, truth, condition)
            for name, recognizer in recognizers.items():
                hits[name] += any(matches(f.box, inside) for f in recognizer.find_faces(crop))
        for name in DETECTORS:
            figures[name]["recall"][condition] = round(hits[name] / args.photos, 4)
        print(condition, {n: figures[n]["recall"][condition] for n in DETECTORS}, file=sys.stderr, flush=True)
    hits = {name: 0 for name in DETECTORS}
    for g in range(args.groups):
        frame, truths = group_photo(rng, list(faces[args.photos + 15 * g: args.photos + 15 * (g + 1)]))
        for name, recognizer in recognizers.items():
            found = recognizer.find_faces(frame)
            hits[name] += sum(any(matches(f.box, t) for f in found) for t in truths)
            extra[name] += sum(not any(matches(f.box, t) for t in truths) for f in found)
    for name in DETECTORS:
        figures[name]["recall"]["group"] = round(hits[name] / (15 * args.groups), 4)
    print("group", {n: figures[n]["recall"]["group"] for n in DETECTORS}, file=sys.stderr, flush=True)
    false = {name: 0 for name in DETECTORS}
    for k in range(args.backgrounds):
        photo = background(rng, KINDS[k % len(KINDS)])
        for name, recognizer in recognizers.items():
            false[name] += len(recognizer.find_faces(photo))
    times = time_detectors(recognizers, upright)
    per_width = args.photos // len(WIDTHS)
    for name in DETECTORS:
        figures[name]["false_faces"] = false[name]
        figures[name]["extra_faces"] = extra[name]
        figures[name]["recall_by_width"] = {str(w): round(n / per_width, 4) for w, n in by_width[name].items()}
        figures[name]["ms_per_photo"] = round(times[name], 1)
        del figures[name]["found"]
    return {"photos_per_condition": args.photos, "group_frames": args.groups, "backgrounds": args.backgrounds,
            "seed": args.seed, "detectors": figures}


def time_detectors(recognizers: dict[str, Recognizer], photos: list[np.ndarray]) -> dict[str, float]:
    """Mean ms per photo of each recognizer's ``find_faces`` over ``photos``, each detector timed over all
    of them in a block, the blocks alternating ``TIMING_ROUNDS`` times. Timed photo by photo in turn, each
    detector's threads, still spinning after its call, slowed the other's next call."""
    totals = {name: 0.0 for name in recognizers}
    for _ in range(TIMING_ROUNDS):
        for name, recognizer in recognizers.items():
            start = time.perf_counter()
            for photo in photos:
                recognizer.find_faces(photo)
            totals[name] += time.perf_counter() - start
    return {name: total / (TIMING_ROUNDS * max(len(photos), 1)) * 1e3 for name, total in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 folder (its PrivateTest faces are used)")
    parser.add_argument("--photos", type=int, default=80, help="photos per condition")
    parser.add_argument("--groups", type=int, default=6, help="1280x720 group frames, 15 faces each")
    parser.add_argument("--backgrounds", type=int, default=200, help="face-free photos for false faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="OpenCV and onnxruntime threads")
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    figures = measure(args)
    print(json.dumps(figures, indent=2))
    if args.out:
        write_record(args.out, "detector_recall", [figures])
    return 0


if __name__ == "__main__":
    sys.exit(main())
