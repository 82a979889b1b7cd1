"""Times the peer package ``fer`` on photos; run by predict_speed.py with the interpreter of a venv holding fer.

    python _fer_worker.py PHOTOS.npy --threads 2 --warmup 1 --repeats 5

PHOTOS.npy holds N x H x W x 3 uint8 RGB photos. fer's ``detect_emotions`` takes OpenCV's BGR order
(it converts with ``COLOR_BGR2GRAY``), so each photo is turned to BGR before the clock starts. Prints one
JSON object on stdout: per-photo milliseconds (median over the timed passes), the boxes found, the Haar
settings in use and the versions. Imports nothing from ferkit: this runs in fer's own environment.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# Quiet TensorFlow's start-up chatter; must be set before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    """Time ``FER(mtcnn=False).detect_emotions`` per photo and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", help=".npy file, N x H x W x 3 uint8 RGB")
    parser.add_argument("--threads", type=int, default=2, help="OpenCV, TensorFlow and TFLite threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over all photos first")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over all photos")
    args = parser.parse_args(argv)

    import cv2
    import numpy as np
    import tensorflow as tf

    cv2.setNumThreads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    import fer
    from fer.fer import FER  # ``from fer import FER``, as documented, fails in 25.10.3

    # fer builds its TFLite interpreter without a thread count and keeps it in a class-level cache;
    # filling that cache first, with the same model file, is the only way to give it --threads.
    from importlib import resources

    model_path = str(resources.files("fer") / "data" / "emotion_model_quantized.tflite")
    FER._tflite_interpreter_cache = tf.lite.Interpreter(model_path=model_path, num_threads=args.threads)
    FER._tflite_interpreter_cache.allocate_tensors()

    detector = FER(mtcnn=False)
    photos = np.load(args.photos)
    bgr = [np.ascontiguousarray(p[..., ::-1]) for p in photos]

    for _ in range(args.warmup):
        for image in bgr:
            detector.detect_emotions(image)
    times: list[list[float]] = [[] for _ in bgr]
    boxes: list[list[list[int]]] = []
    for _ in range(args.repeats):
        boxes = []
        for i, image in enumerate(bgr):
            start = time.perf_counter()
            found = detector.detect_emotions(image)
            times[i].append((time.perf_counter() - start) * 1e3)
            boxes.append([[int(v) for v in face["box"]] for face in found])

    # The constructor's arguments, stored under name-mangled private attributes.
    haar = {"scaleFactor": getattr(detector, "_FER__scale_factor", None),
            "minNeighbors": getattr(detector, "_FER__min_neighbors", None),
            "minSize": getattr(detector, "_FER__min_face_size", None),
            "flags": "CASCADE_SCALE_IMAGE", "cascade": "haarcascade_frontalface_default.xml (cv2.data)",
            "classifier": "emotion_model_quantized.tflite, 64x64 grey, one face per invoke"}
    print(json.dumps({
        "ms": [statistics.median(t) for t in times],
        "boxes": boxes,
        "haar": haar,
        "threads": args.threads,
        "versions": {"fer": fer.__version__, "tensorflow": tf.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
