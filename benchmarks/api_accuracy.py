"""A model's FER2013 accuracy as a user gets it: the Python API on the data set's own image files.

Every PublicTest (validation) and PrivateTest (test) JPEG of a FER2013 Kaggle folder goes through
``Recognizer(detect=False)`` exactly as ``ferkit predict --no-detect`` would read it: decoded from
the file, taken as a face crop, classified with the model's test-time views, class bias and
temperature. For each split it reports accuracy, mean per-class accuracy, macro-F1 and the accuracy
of every class, one JSON line per split.

    python benchmarks/api_accuracy.py --data path/to/fer2013 --out results/api_accuracy.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402

from ferkit.data import FER_CLASSES  # noqa: E402
from ferkit.data.names import class_index  # noqa: E402
from ferkit.engine.metrics import ClassificationReport  # noqa: E402
from ferkit.engine.predict import Recognizer  # noqa: E402

SPLIT_PREFIXES = {"val": "PublicTest", "test": "PrivateTest"}


def split_files(root: Path, prefix: str) -> list[tuple[Path, int]]:
    """(file, FER2013 class index) of every ``test/<class>/<prefix>_*.jpg`` of a Kaggle folder, sorted."""
    files = []
    for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        label = class_index(folder.name, FER_CLASSES)
        if label is None:
            raise SystemExit(f"{folder}: not a FER2013 class folder")
        files += [(path, label) for path in sorted(folder.glob(f"{prefix}_*"))]
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 Kaggle folder (train/ and test/ of class folders)")
    parser.add_argument("--model", default="default", help="shipped model name or a .safetensors/.pt file")
    parser.add_argument("--backend", default="auto", help="auto | onnx | torch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)

    recognizer = Recognizer.load(args.model, backend=args.backend, threads=args.threads, detect=False)
    figures = []
    for split, prefix in SPLIT_PREFIXES.items():
        files = split_files(Path(args.data), prefix)
        start = time.perf_counter()
        results = recognizer([path for path, _ in files], keep_images=False)
        seconds = time.perf_counter() - start
        failed = [r.source for r in results if r.status != "ok"]
        if failed:
            raise SystemExit(f"{len(failed)} files gave no prediction, e.g. {failed[0]}")
        preds = torch.tensor([recognizer.classes.index(r.faces[0].top1) for r in results])
        # The model's classes are FER2013's; the folders are matched to them by name.
        targets = torch.tensor([recognizer.classes.index(FER_CLASSES[label]) for _, label in files])
        report = ClassificationReport.from_predictions(preds, targets, recognizer.classes)
        figures.append({"benchmark": "api_accuracy", "model": args.model, "split": prefix, "images": len(files),
                        "backend": recognizer.backend, "tta": recognizer.tta,
                        "accuracy": round(report.accuracy, 4),
                        "mean_class_accuracy": round(report.mean_class_accuracy, 4),
                        "macro_f1": round(report.macro_f1, 4),
                        "per_class_accuracy": {k: round(v, 4) for k, v in report.per_class_accuracy.items()
                                               if v is not None},
                        "seconds": round(seconds, 1)})
    for line in figures:
        print(json.dumps(line), flush=True)
    if args.out:
        write_record(args.out, "api_accuracy", figures, model_description=recognizer.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
