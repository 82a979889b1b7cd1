"""FER2013 PrivateTest accuracy of the peer package ``fer``, beside ferkit's shipped model, on the same crops.

fer runs in its own interpreter (``--fer-python``, a venv holding fer 25.10.3 and TensorFlow; see
predict_speed.py) through ``_fer_classify_worker.py``: each 48x48 test crop goes to fer's
``detect_emotions`` with the whole crop as the face box, with fer's default box offsets (10 px of its
padding on each side) and with none (exactly the crop). ferkit's figure is the shipped model scored by
``ferkit.engine.evaluate`` on the same split (its test-time views included), so both see the crops as
they are, with no face detection. One JSON line per tool on stdout.

    python benchmarks/fer_accuracy.py --data ../shared/data/fer2013 --fer-python /work/fer-venv/bin/python \\
        --out results/fer_accuracy.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_speed import write_record  # noqa: E402

from ferkit.data.readers import load_dataset  # noqa: E402
from ferkit.engine.evaluate import evaluate  # noqa: E402
from ferkit.engine import modelfile  # noqa: E402
from ferkit.engine.modelfile import pretrained_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 folder or CSV")
    parser.add_argument("--fer-python", required=True, help="python of a venv with fer installed")
    parser.add_argument("--model", default="default", help="shipped model name")
    parser.add_argument("--out", help="also write the figures with provenance to this JSON file")
    args = parser.parse_args(argv)

    test = load_dataset(args.data, format="fer2013", splits=("test",), progress=False)["test"]
    truth = test.labels.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crops.npy"
        np.save(path, test.images[:, 0].numpy())
        done = subprocess.run([args.fer_python, str(Path(__file__).with_name("_fer_classify_worker.py")), str(path)],
                              capture_output=True, text=True, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    # fer's label order, mapped to the data's class indices by name
    to_ours = [test.classes.index(name) for name in answer["labels"]]
    figures = []
    for setting, found in answer["top"].items():
        top = np.array([to_ours[i] if i >= 0 else -1 for i in found])
        figures.append({"benchmark": "fer_accuracy", "tool": "fer", "version": answer["fer"], "setting": setting,
                        "split": "PrivateTest", "images": len(truth), "no_answer": int((top < 0).sum()),
                        "accuracy": round(float((top == truth).mean()), 4)})

    model, meta = modelfile.load(pretrained_path(args.model))
    with torch.no_grad():
        report, _ = evaluate(model, test, meta, meta.tta, 256, "fp32", False)
    figures.append({"benchmark": "fer_accuracy", "tool": "ferkit", "model": args.model, "split": "PrivateTest",
                    "images": len(truth), "tta": meta.tta, "accuracy": round(report.accuracy, 4)})
    for line in figures:
        print(json.dumps(line), flush=True)
    if args.out:
        write_record(args.out, "fer_accuracy", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
