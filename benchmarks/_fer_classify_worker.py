"""Classifies face crops with the peer package ``fer``; run by fer_accuracy.py with the interpreter of fer's venv.

    python _fer_classify_worker.py CROPS.npy

CROPS.npy holds N x H x W uint8 grey face crops (FER2013's 48x48). Each crop is given to fer's own
``detect_emotions`` as an image whose face box is the whole crop, twice: with fer's default box offsets
(10 px more on each side, taken from its grey padding, as after its own detection) and with offsets 0
(exactly the crop, resized to fer's 64x64 input: FER2013's crops as fer's model was trained on them).
Prints one JSON object: fer's label order and, per setting, the index of its top class per crop (-1
where it returned nothing). Imports nothing from ferkit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops", help=".npy file, N x H x W uint8 grey")
    args = parser.parse_args(argv)

    import cv2
    import numpy as np
    from fer.fer import FER  # ``from fer import FER``, as documented, fails in 25.10.3

    crops = np.load(args.crops)
    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    tops = {}
    for name, offsets in (("default_offsets", (10, 10)), ("crop_only", (0, 0))):
        detector = FER(mtcnn=False, offsets=offsets)
        top = []
        for crop in crops:
            bgr = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
            found = detector.detect_emotions(bgr, face_rectangles=[(0, 0, crop.shape[1], crop.shape[0])])
            if not found:
                top.append(-1)
                continue
            scores = found[0]["emotions"]
            top.append(labels.index(max(scores, key=scores.get)))
        tops[name] = top
    import fer

    print(json.dumps({"labels": labels, "top": tops, "fer": fer.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
