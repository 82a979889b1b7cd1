"""A model's accuracy on faces as people photograph them, seen through shifts of FER2013's own faces.

Expression sets from other sources (movie stills, news photos, posed portraits) differ from FER2013
in framing, aspect, resolution, compression, colour, light, pose and occlusion. Without their data,
this suite makes each of those differences from FER2013's faces and scores the model on each, one
row per (labels, shift), with per-class accuracy and the drop from the unshifted row:

- ``fer2013_val``: FER2013 PublicTest with FER2013's labels (model selection);
- ``ferplus_val`` / ``ferplus_test``: PublicTest / PrivateTest with FER+'s majority labels (7 classes,
  ties, contempt, unknown and not-a-face left out): cleaner labels, as other sets have.

Every shifted face goes through ``Recognizer(detect=False)`` as a uint8 array, as a user's crop would:
the Recognizer squares it, converts it to grey and resizes it. Shifts are drawn per image from
``--seed`` and the image's index, so every model sees the same shifted faces.

    python benchmarks/shift_suite.py --fer2013 path/to/fer2013 --ferplus path/to/ferplus --out results/shift_suite.json
    python benchmarks/shift_suite.py ... --model runs/x/best.pt --sets fer2013_val ferplus_val --limit 1000
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402

from ferkit.data import FER_CLASSES, load_dataset  # noqa: E402
from ferkit.engine.metrics import ClassificationReport  # noqa: E402
from ferkit.engine.predict import Recognizer  # noqa: E402

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]
"""(48x48 uint8 grey face, this image's generator) -> the face as another camera or framing shows it."""


def _resize(image: np.ndarray, width: int, height: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=interpolation)


def tight(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The face fills the frame: 10-25 % of the border cut (split at random between the sides)."""
    h, w = image.shape[:2]
    cut = rng.uniform(0.10, 0.25)
    side = round(w * (1 - cut))
    x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    return _resize(image[y0:y0 + side, x0:x0 + side], 144, 144, cv2.INTER_CUBIC)


def tall(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 143x181 (w x h) crop with the face filling it: the square face's sides cut to that aspect."""
    h, w = image.shape[:2]
    keep = round(w * 143 / 181)
    x0 = (w - keep) // 2
    return _resize(image[:, x0:x0 + keep], 143, 181, cv2.INTER_CUBIC)


def squeezed(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 143x181 face crop squeezed to square by a pipeline that resizes without keeping the aspect."""
    tall_face = tall(image, rng)
    return _resize(tall_face, 162, 162)


def lowres(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small face in a photo, enlarged: 16-24 px, then 4x-6x up."""
    side = int(rng.integers(16, 25))
    small = _resize(image, side, side, cv2.INTER_AREA)
    return _resize(small, 112, 112, cv2.INTER_LINEAR)


def sharp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sharp high-resolution face: 4x up by Lanczos with an unsharp mask, as phone cameras sharpen."""
    big = _resize(image, 192, 192, cv2.INTER_LANCZOS4).astype(np.float32)
    blurred = cv2.GaussianBlur(big, (0, 0), 2.0)
    return np.clip(big + 1.0 * (big - blurred), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A web photo: 2x up, saved as JPEG at quality 10-25."""
    big = _resize(image, 96, 96, cv2.INTER_CUBIC)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="JPEG", quality=int(rng.integers(10, 26)))
    return np.asarray(Image.open(buffer).convert("L"))


def colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour photo (warm skin tones, a colour cast) that the Recognizer turns to grey itself."""
    grey = image.astype(np.float32) / 255
    cast = rng.uniform(0.7, 1.0, size=3) * np.array([1.0, 0.85, 0.7])
    rgb = np.stack([grey ** 0.9 * cast[0], grey * cast[1], grey ** 1.1 * cast[2]], axis=-1)
    return np.clip(rgb / rgb.max() * 255, 0, 255).astype(np.uint8)


def dark(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dim light: gamma 1.5-2.2 and 30-60 % of the exposure, with sensor noise."""
    p = (image.astype(np.float32) / 255) ** rng.uniform(1.5, 2.2) * rng.uniform(0.3, 0.6)
    p = p + rng.normal(0, 0.01, size=p.shape)
    return np.clip(p * 255, 0, 255).astype(np.uint8)


def bright(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Over-exposed: 1.5-2x the exposure, highlights clipped."""
    p = (image.astype(np.float32) / 255) ** rng.uniform(0.6, 0.8) * rng.uniform(1.5, 2.0)
    return np.clip(p * 255, 0, 255).astype(np.uint8)


def pose(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A head turned or nodded: a perspective warp that shrinks one side by 15-25 %."""
    h, w = image.shape[:2]
    big = _resize(image, 4 * w, 4 * h, cv2.INTER_CUBIC)
    s = 4 * w
    d = s * rng.uniform(0.075, 0.125)
    corners = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
    moved = corners.copy()
    side = int(rng.integers(4))  # which side recedes: left, right, top, bottom
    if side == 0:
        moved[[0, 3], 1] += [d, -d]
    elif side == 1:
        moved[[1, 2], 1] += [d, -d]
    elif side == 2:
        moved[[0, 1], 0] += [d, -d]
    else:
        moved[[3, 2], 0] += [d, -d]
    matrix = cv2.getPerspectiveTransform(corners, moved)
    return cv2.warpPerspective(big, matrix, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def tilt(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tilted head: rotated by 15-25 degrees either way."""
    h, w = image.shape[:2]
    angle = rng.uniform(15, 25) * rng.choice([-1, 1])
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def occluded(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand, a cup or a microphone: a flat block over 12-25 % of the face, away from its centre."""
    h, w = image.shape[:2]
    out = image.copy()
    area = rng.uniform(0.12, 0.25) * h * w
    bw = int(np.clip(np.sqrt(area * rng.uniform(0.5, 2.0)), 8, w))
    bh = int(np.clip(area / bw, 8, h))
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    out[y0:y0 + bh, x0:x0 + bw] = int(rng.integers(0, 256))
    return out


SHIFTS: dict[str, Shift | None] = {
    "none": None, "tight": tight, "tall": tall, "squeezed": squeezed, "lowres": lowres, "sharp": sharp,
    "jpeg": jpeg, "colour": colour, "dark": dark, "bright": bright, "pose": pose, "tilt": tilt,
    "occluded": occluded,
}
SETS = ("fer2013_val", "ferplus_val", "ferplus_test")


def labelled_faces(name: str, fer2013: Path | None, ferplus: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 N x 1 x 48 x 48 faces and FER_CLASSES labels of one of SETS."""
    if name == "fer2013_val":
        if fer2013 is None:
            raise SystemExit("fer2013_val needs --fer2013")
        split = load_dataset(fer2013, format="fer2013", splits=("val",), progress=False)["val"]
    else:
        if ferplus is None:
            raise SystemExit(f"{name} needs --ferplus")
        which = "val" if name == "ferplus_val" else "test"
        split = load_dataset(ferplus, format="ferplus", splits=(which,), classes=7, progress=False)[which]
    if split.classes != FER_CLASSES:
        raise SystemExit(f"{name}: classes {split.classes}, expected {FER_CLASSES}")
    return split.images, split.labels


def shifted(faces: torch.Tensor, shift: Shift | None, seed: int) -> list[np.ndarray]:
    """Each face under ``shift``, drawn from a generator of (seed, the face's index)."""
    arrays = [face[0].numpy() for face in faces]
    if shift is None:
        return arrays
    return [shift(a, np.random.default_rng([seed, i])) for i, a in enumerate(arrays)]


def score(recognizer, images: list[np.ndarray], labels: torch.Tensor) -> ClassificationReport:
    """The Recognizer's top-1 on ``images`` (face crops) against ``labels`` (FER_CLASSES indices)."""
    results = recognizer(images, keep_images=False)
    failed = [r for r in results if r.status != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} images gave no prediction, e.g. {failed[0].error}")
    preds = torch.tensor([FER_CLASSES.index(r.faces[0].top1) for r in results])
    return ClassificationReport.from_predictions(preds, labels, FER_CLASSES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", type=Path, help="FER2013: Kaggle folders or fer2013.csv")
    parser.add_argument("--ferplus", type=Path, help="FER+: fer2013new.csv with its PNG folders or fer2013.csv")
    parser.add_argument("--model", default="default", help="shipped model name or a .safetensors/.pt file")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    parser.add_argument("--limit", type=int, default=0, help="score N faces of each set, drawn by --seed (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts")
    parser.add_argument("--backend", default="auto", help="auto | onnx | torch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)
    if "none" not in args.shifts:
        args.shifts.insert(0, "none")  # every drop is measured from it

    recognizer = Recognizer.load(args.model, backend=args.backend, threads=args.threads, detect=False)
    if tuple(recognizer.classes) != FER_CLASSES:
        raise SystemExit(f"{args.model}: classes {recognizer.classes}; this suite scores FER2013's seven")
    figures = []
    for name in args.sets:
        faces, labels = labelled_faces(name, args.fer2013, args.ferplus)
        if args.limit:  # a seeded random subset, the same for every model: the sets are sorted by class
            keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))[:args.limit]
            faces, labels = faces[keep.sort().values], labels[keep.sort().values]
        base = None
        for shift_name in args.shifts:
            start = time.perf_counter()
            report = score(recognizer, shifted(faces, SHIFTS[shift_name], args.seed), labels)
            if base is None:
                base = report.accuracy
            line = {"benchmark": "shift_suite", "model": args.model, "set": name, "shift": shift_name,
                    "images": len(labels), "accuracy": round(report.accuracy, 4),
                    "drop": round(base - report.accuracy, 4),
                    "mean_class_accuracy": round(report.mean_class_accuracy, 4),
                    "per_class_accuracy": {k: round(v, 4) for k, v in report.per_class_accuracy.items()
                                           if v is not None},
                    "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps(line), flush=True)
            figures.append(line)
    if args.out:
        write_record(args.out, "shift_suite", figures, model_description=recognizer.describe(), seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
