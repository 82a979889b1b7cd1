"""Tests for ferkit.data.rafdb: RAF-DB basic's aligned faces and its partition/label list."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from data_helpers import error_names
from PIL import Image

from ferkit.data import FER_CLASSES, load_dataset, load_rafdb
from ferkit.errors import FerkitError

RAF_TRAIN = {1: 3, 2: 2, 3: 2, 4: 5, 5: 3, 6: 4, 7: 1}  # RAF-DB label -> train images


RAF_NAMES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}


def write_rafdb(root: Path) -> Path:
    """<root>/basic/Image/aligned/*_aligned.jpg and basic/EmoLabel/list_patition_label.txt."""
    basic = root / "basic"
    lines = []
    names = [("train", code) for code, n in RAF_TRAIN.items() for _ in range(n)]
    names += [("test", code) for code in range(1, 8)]
    counters: Counter = Counter()
    for split, code in names:
        counters[split] += 1
        name = f"{split}_{counters[split]:05d}"
        lines.append(f"{name}.jpg {code}")
        path = basic / "Image" / "aligned" / f"{name}_aligned.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Red tells the RAF-DB label, so the content checks the mapping.
        Image.new("RGB", (10, 10), (30 * code, 200, 10)).save(path, quality=95)
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True)
    label_file.write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def raf_root(tmp_path: Path) -> Path:
    return write_rafdb(tmp_path / "RAF-DB")


def test_rafdb_splits_labels_and_rgb(raf_root: Path) -> None:
    data = load_rafdb(raf_root, val_fraction=0.25, seed=3, progress=False)
    train, val, test = data["train"], data["val"], data["test"]
    expected_val = {RAF_NAMES[c]: round(0.25 * n) for c, n in RAF_TRAIN.items()}
    assert val.class_counts() == {name: expected_val.get(name, 0) for name in FER_CLASSES}
    assert train.class_counts() == {
        name: next(n for c, n in RAF_TRAIN.items() if RAF_NAMES[c] == name) - expected_val[name] for name in FER_CLASSES
    }
    assert test.class_counts() == dict.fromkeys(FER_CLASSES, 1)
    assert "stratified 25% of train, seed 3 (RAF-DB has no val split)" in val.note
    for split in data.values():
        assert split.classes == FER_CLASSES and split.images.shape[1:] == (3, 10, 10)
        codes = (split.images[:, 0].float().mean(dim=(1, 2)) / 30).round().long()
        assert [RAF_NAMES[int(c)] for c in codes] == [FER_CLASSES[int(i)] for i in split.labels]
    assert FER_CLASSES[int(test.labels[5])] == "angry"  # test_00006 has RAF-DB label 6
    gray = load_rafdb(raf_root / "basic", splits=("test",), grayscale=True, progress=False)["test"]
    assert gray.images.shape == (7, 1, 10, 10) and torch.equal(gray.labels, test.labels)
    assert torch.equal(load_dataset(raf_root, splits=("test",), progress=False)["test"].images, test.images)


@pytest.mark.parametrize(
    "line, message",
    [
        ("train_00001.jpg 8", "line 28: label '8' is not a RAF-DB label"),
        ("train_00001.jpg", "line 28: expected '<image> <label>'"),
        ("val_00001.jpg 2", "line 28: image name 'val_00001.jpg' starts with neither train_ nor test_"),
    ],
)
def test_rafdb_bad_label_lines(raf_root: Path, line: str, message: str) -> None:
    label_file = raf_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text() + line + "\n")
    with pytest.raises(FerkitError, match=message) as err:
        load_rafdb(raf_root, progress=False)
    assert error_names(err, label_file)


def test_rafdb_file_errors(raf_root: Path, tmp_path: Path) -> None:
    missing = raf_root / "basic" / "Image" / "aligned" / "test_00003_aligned.jpg"
    missing.unlink()
    with pytest.raises(FerkitError, match="cannot read as an image") as err:
        load_rafdb(raf_root, progress=False)
    assert error_names(err, missing)
    assert load_rafdb(raf_root, splits=("test",), skip_bad=True, progress=False)["test"].skipped == 1
    label_file = raf_root / "basic" / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(FerkitError, match="cannot read the label file") as err:
        load_rafdb(raf_root, progress=False)
    assert error_names(err, label_file)
    with pytest.raises(FerkitError, match="not a RAF-DB layout; expected <root>/basic/Image/aligned") as err:
        load_rafdb(tmp_path)
    assert error_names(err, tmp_path)


def test_rafdb_takes_the_options_training_passes(raf_root: Path) -> None:
    common = dict(skip_bad=False, val_fraction=0.2, seed=0, progress=False)
    assert set(load_dataset(raf_root, **common)) == {"train", "val", "test"}
