"""tools/fer2013_csv.py: Kaggle's FER2013 folders rebuilt as fer2013.csv in FER+'s row order."""
import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer2013_csv import build
from ferkit.data import FER_CLASSES, load_dataset

VOTES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
# FER+ rows in CSV order: usage, PNG name ("" = none), the Kaggle file it shows, its pixel value, votes.
ROWS = [
    ("Training", "fer0000000.png", "train/happy/Training_1.jpg", 10, [0, 9, 0, 0, 0, 0, 0, 0, 1, 0]),
    ("Training", "fer0000001.png", "train/sad/Training_2.jpg", 20, [6, 0, 0, 4, 0, 0, 0, 0, 0, 0]),
    ("Training", "", "train/angry/Training_3.jpg", 30, [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),
    # Two pixel-identical faces: the map sends both Kaggle files to the first PNG.
    ("Training", "fer0000002.png", "train/fear/Training_4.jpg", 40, [0, 0, 2, 0, 0, 0, 8, 0, 0, 0]),
    ("Training", "fer0000003.png", "train/surprise/Training_5.jpg", 40, [0, 0, 8, 0, 0, 0, 2, 0, 0, 0]),
    ("PublicTest", "fer0000004.png", "test/neutral/PublicTest_6.jpg", 60, [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("PrivateTest", "fer0000005.png", "test/disgust/PrivateTest_7.jpg", 70, [0, 0, 0, 0, 3, 7, 0, 0, 0, 0]),
]
FOLDER = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 48), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fixture(tmp_path: Path) -> tuple[Path, Path]:
    kaggle, ferplus = tmp_path / "fer2013", tmp_path / "ferplus"
    ferplus.mkdir()
    with open(ferplus / "fer2013new.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Usage", "Image name", *VOTES])
        writer.writerows([usage, name, *votes] for usage, name, _, _, votes in ROWS)
    with tarfile.open(ferplus / "ferplus_png.tar.gz", "w:gz") as tar:
        for usage, name, _, value, _ in ROWS:
            if name:
                data = _png(value)
                info = tarfile.TarInfo(f"{FOLDER[usage]}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open(ferplus / "fer2013_kaggle_to_ferplus.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kaggle_path", "usage", "ferplus_split", "ferplus_image", "rmse", "ambiguous_duplicate"])
        for usage, name, kaggle_path, value, _ in ROWS:
            path = kaggle / kaggle_path
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((48, 48), value, np.uint8)).save(path, quality=100)
            mapped = "fer0000002.png" if value == 40 else name  # the duplicate maps to the first copy
            writer.writerow([kaggle_path, usage, FOLDER[usage] if mapped else "", mapped, 0.5, int(value == 40)])
    return kaggle, ferplus


def test_rows_keep_ferplus_order_with_fer2013_labels(tmp_path):
    kaggle, ferplus = _fixture(tmp_path)
    counts = build(kaggle, ferplus, tmp_path / "out")
    assert counts == {"mapped": 5, "duplicate": 1, "no_png": 1}
    rows = list(csv.DictReader(open(tmp_path / "out" / "fer2013.csv", newline="")))
    assert [r["Usage"] for r in rows] == [usage for usage, *_ in ROWS]
    labels = [FER_CLASSES[int(r["emotion"])] for r in rows]
    assert labels == ["happy", "sad", "angry", "fear", "surprise", "neutral", "disgust"]
    assert [int(r["pixels"].split()[0]) for r in rows] == [value for *_, value, _ in ROWS]
    # The FER+ reader takes the folder as it is: FER2013's labels, FER+'s votes beside them.
    data = load_dataset(tmp_path / "out", classes=7, hard_labels="fer2013", progress=False)
    assert [FER_CLASSES[i] for i in data["train"].labels.tolist()] == labels[:5]
    assert data["train"].soft_labels[3, FER_CLASSES.index("fear")].item() == pytest.approx(0.8)
