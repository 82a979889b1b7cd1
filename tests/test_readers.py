"""Tests for the CK+, CK+48, RAF-DB and FER+ readers, layout dispatch and subject folds."""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from ferkit.data import (
    FER8_CLASSES,
    FER_CLASSES,
    FERDataset,
    load_ckplus,
    load_ckplus48,
    load_dataset,
    load_ferplus,
    load_rafdb,
    stratified_folds,
    subject_folds,
    subject_split,
)
from ferkit.data import ckplus
from ferkit.errors import FerkitError


def save_gray(path: Path, value: int, size: tuple[int, int] = (20, 16), rgb: bool = False) -> None:
    """A flat image (width x height) of one grey value, so its content tells which file it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", size, value)
    (image.convert("RGB") if rgb else image).save(path)


def error_names(err: pytest.ExceptionInfo[FerkitError], path: Path) -> bool:
    message = str(err.value)
    return str(path) in message and "\n" not in message


def index_of(name: str, classes: tuple[str, ...] = FER_CLASSES) -> int:
    return classes.index(name)


# ---- CK+ original layout ----

# (subject, sequence, frames, emotion code or None for an unlabelled sequence)
CK_SEQUENCES = [
    ("S005", "001", 5, 3),     # disgust
    ("S005", "002", 4, None),  # unlabelled: its Emotion folder is empty
    ("S010", "001", 6, 2),     # contempt
    ("S010", "002", 3, 5),     # happy; only 3 frames, so no separate first frame
    ("S011", "001", 4, 1),     # anger
    ("S011", "003", 5, 7),     # surprise
    ("S022", "001", 4, 6),     # sadness
    ("S022", "002", 4, 4),     # fear
    ("S026", "001", 4, 0),     # neutral
]
CK_NAMES = {0: "neutral", 1: "angry", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sad", 7: "surprise"}


def frame_value(frame: int) -> int:
    """Grey value of frame `frame` (0-based) of any sequence."""
    return 20 + 20 * frame


def write_ckplus(root: Path, sequences=CK_SEQUENCES) -> Path:
    for subject, seq, frames, code in sequences:
        folder = root / "cohn-kanade-images" / subject / seq
        for j in range(frames):
            # S011's frames are RGB, as some CK+ subjects are.
            save_gray(folder / f"{subject}_{seq}_{j + 1:08d}.png", frame_value(j), rgb=subject == "S011")
        (folder / ".DS_Store").write_bytes(b"junk")
        emotion = root / "Emotion" / subject / seq
        emotion.mkdir(parents=True, exist_ok=True)
        if code is not None:
            (emotion / f"{subject}_{seq}_{frames:08d}_emotion.txt").write_text(f"   {code:.7e}\n")
    return root


@pytest.fixture
def ck_root(tmp_path: Path) -> Path:
    return write_ckplus(tmp_path / "CK+")


def ck_items(data: FERDataset) -> Counter:
    """(subject, class name, frame index) of every image."""
    frames = (data.images[:, 0, 0, 0].int() - 20) // 20
    return Counter(
        (data.group_names[g], data.classes[c], f)
        for g, c, f in zip(data.groups.tolist(), data.labels.tolist(), frames.tolist())
    )


def expected_ck(last_n: int = 3, first_as_neutral: bool = False, contempt: bool = False) -> Counter:
    items: Counter = Counter()
    for subject, _, frames, code in CK_SEQUENCES:
        if code is None or (code == 2 and not contempt):
            continue
        if first_as_neutral and frames > last_n:
            items[(subject, "neutral", 0)] += 1
        for f in range(max(0, frames - last_n), frames):
            items[(subject, CK_NAMES[code], f)] += 1
    return items


def test_ckplus_default_last_three_frames_seven_classes(ck_root: Path) -> None:
    data = load_ckplus(ck_root, size=8, progress=False)
    assert list(data) == ["train"]
    train = data["train"]
    assert train.classes == FER_CLASSES and train.split == "train"
    assert train.images.shape == (21, 1, 8, 8) and train.images.dtype == torch.uint8
    assert train.class_counts() == dict.fromkeys(FER_CLASSES, 3)
    assert train.group_names == ("S005", "S010", "S011", "S022", "S026")
    assert Counter(train.group_names[g] for g in train.groups.tolist()) == {
        "S005": 3, "S010": 3, "S011": 6, "S022": 6, "S026": 3,
    }
    # Every image is the right frame of the right subject with the right label (5 -> happy, ...).
    assert ck_items(train) == expected_ck()
    assert ("S010", "happy", 2) in ck_items(train) and FER_CLASSES[train.labels[0]] == "disgust"


def test_ckplus_options(ck_root: Path) -> None:
    with_contempt = load_ckplus(ck_root, size=8, contempt=True, progress=False)["train"]
    assert with_contempt.classes == FER8_CLASSES and len(with_contempt.classes) == 8
    assert len(with_contempt) == 24 and with_contempt.class_counts()["contempt"] == 3
    assert ck_items(with_contempt) == expected_ck(contempt=True)

    neutral_too = load_ckplus(ck_root, size=8, first_as_neutral=True, progress=False)["train"]
    assert len(neutral_too) == 27 and neutral_too.class_counts()["neutral"] == 3 + 6
    assert ck_items(neutral_too) == expected_ck(first_as_neutral=True)

    last_one = load_ckplus(ck_root, size=8, last_n=1, progress=False)["train"]
    assert ck_items(last_one) == expected_ck(last_n=1) and len(last_one) == 7


def test_ckplus_crop_hook_and_val_by_subject(ck_root: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def crop(image: Image.Image) -> Image.Image:
        seen.append(image.size)
        return image.crop((0, 0, 10, 10)).point(lambda v: v + 1)

    cache = tmp_path / "crop-cache"
    cropped = load_ckplus(ck_root, size=8, crop=crop, cache_dir=cache, progress=False)["train"]
    assert set(seen) == {(20, 16)} and len(seen) == 21
    plain = load_ckplus(ck_root, size=8, progress=False)["train"]
    assert torch.equal(cropped.images, plain.images + 1)
    assert not cache.exists()  # a crop hook bypasses the cache

    data = load_ckplus(ck_root, size=8, val_fraction=0.3, seed=1, progress=False)
    train, val = data["train"], data["val"]
    assert len(train) + len(val) == 21 and len(val) >= 0.3 * 21
    assert not {train.group_names[g] for g in train.groups.tolist()} & {val.group_names[g] for g in val.groups.tolist()}
    assert "whole subjects" in val.note and "seed 1" in val.note


def test_ckplus_second_load_uses_cache(ck_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_ckplus(ck_root, size=8, cache_dir=tmp_path / "c", progress=False)["train"]

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ckplus, "decode_listing", fail)
    again = load_ckplus(ck_root, size=8, cache_dir=tmp_path / "c", progress=False)["train"]
    assert torch.equal(again.images, first.images) and torch.equal(again.groups, first.groups)
    with pytest.raises(AssertionError, match="decoded again"):  # other options: other files, other entry
        load_ckplus(ck_root, size=8, contempt=True, cache_dir=tmp_path / "c", progress=False)


def test_ckplus_has_no_test_split(ck_root: Path) -> None:
    with pytest.raises(FerkitError, match="no official split, so there is no 'test' split") as err:
        load_ckplus(ck_root, splits=("train", "test"), progress=False)
    assert error_names(err, ck_root)
    with pytest.raises(FerkitError, match="no 'val' split"):
        load_ckplus(ck_root, splits=("val",), progress=False)


@pytest.mark.parametrize(
    "content, message",
    [
        ("   9.0000000e+00\n", "emotion 9.0000000e+00 is not a CK+ code"),
        ("2.5", "emotion 2.5 is not a CK+ code"),
        ("happy", "expected one number 0..7, found 'happy'"),
        ("1 2", "expected one number 0..7, found 2 values"),
        (b"\xff\xfe\x00", "cannot read the emotion file"),
    ],
)
def test_ckplus_bad_emotion_file(ck_root: Path, content, message: str) -> None:
    path = ck_root / "Emotion" / "S022" / "001" / "S022_001_00000004_emotion.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(FerkitError, match=re.escape(message)) as err:
        load_ckplus(ck_root, progress=False)
    assert error_names(err, path)


def test_ckplus_layout_errors(ck_root: Path, tmp_path: Path) -> None:
    frames = ck_root / "cohn-kanade-images" / "S011" / "003"
    for png in frames.glob("*.png"):
        png.unlink()
    message = "no images for the sequence labelled by S011_003_00000005_emotion.txt"
    with pytest.raises(FerkitError, match=message) as err:
        load_ckplus(ck_root, progress=False)
    assert error_names(err, frames)

    write_ckplus(ck_root)
    extra = ck_root / "Emotion" / "S005" / "001" / "S005_001_00000004_emotion.txt"
    extra.write_text("1")
    with pytest.raises(FerkitError, match="2 emotion files, expected one per sequence") as err:
        load_ckplus(ck_root, progress=False)
    assert error_names(err, extra.parent)

    other = tmp_path / "other"
    save_gray(other / "images" / "a.png", 0)
    with pytest.raises(FerkitError, match=r"not a CK\+ layout; expected <root>/cohn-kanade-images/S005") as err:
        load_ckplus(other)
    assert error_names(err, other)
    with pytest.raises(FerkitError, match="last_n must be at least 1"):
        load_ckplus(ck_root, last_n=0)


# ---- CK+48 ----

CK48 = {  # folder -> subjects of its images
    "anger": ["S005", "S010"], "contempt": ["S011"], "disgust": ["S005", "S022"], "fear": ["S010"],
    "happy": ["S005", "S010", "S022"], "sadness": ["S022"], "surprise": ["S011", "S022"],
}


@pytest.fixture
def ck48_root(tmp_path: Path) -> Path:
    root = tmp_path / "CK+48"
    for folder, subjects in CK48.items():
        for i, subject in enumerate(subjects):
            save_gray(root / folder / f"{subject}_00{i + 1}_{i + 10:08d}.png", 100, size=(48, 48))
    return root


def test_ckplus48_counts_subjects_and_contempt(ck48_root: Path) -> None:
    train = load_ckplus48(ck48_root, progress=False)["train"]
    assert train.classes == FER_CLASSES and train.images.shape == (11, 1, 48, 48)
    assert train.class_counts() == {
        "angry": 2, "disgust": 2, "fear": 1, "happy": 3, "sad": 1, "surprise": 2, "neutral": 0,
    }
    assert train.group_names == ("S005", "S010", "S011", "S022")
    subjects = Counter(train.group_names[g] for g in train.groups.tolist())
    assert subjects == {"S005": 3, "S010": 3, "S011": 1, "S022": 4}
    with_contempt = load_ckplus48(ck48_root, contempt=True, size=24, progress=False)["train"]
    assert with_contempt.classes == FER8_CLASSES and len(with_contempt) == 12
    assert with_contempt.class_counts()["contempt"] == 1 and with_contempt.images.shape[-1] == 24
    # Dispatch picks CK+48, not FER2013's <root>/<class>/ layout (which has no contempt).
    detected = load_dataset(ck48_root, progress=False)["train"]
    assert torch.equal(detected.labels, train.labels) and detected.groups is not None


def test_ckplus48_errors(ck48_root: Path) -> None:
    stray = ck48_root / "happy" / "face1.png"
    save_gray(stray, 0, size=(48, 48))
    with pytest.raises(FerkitError, match="does not start with a CK\\+ subject id") as err:
        load_ckplus48(ck48_root, progress=False)
    assert error_names(err, stray)
    stray.unlink()
    save_gray(ck48_root / "joy" / "S005_001_00000001.png", 0, size=(48, 48))
    with pytest.raises(FerkitError, match="unknown class folder 'joy'; CK\\+48 has anger, contempt") as err:
        load_ckplus48(ck48_root, progress=False)
    assert error_names(err, ck48_root / "joy")


# ---- RAF-DB ----

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


# ---- FER+ ----

FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                  "fear", "contempt", "unknown", "NF"]
# Usage, image name (empty: FER+ made no PNG), votes; the names drift from the row index as in the real file.
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]),    # 0 neutral
    ("Training", "fer0000001.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),   # 1 happy
    ("Training", "fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 6, 2, 2]),    # 2 contempt
    ("Training", "fer0000003.png", [0, 4, 4, 0, 0, 0, 0, 0, 2, 0]),    # 3 tie -> out
    ("Training", "fer0000004.png", [1, 0, 0, 0, 0, 0, 0, 0, 6, 3]),    # 4 unknown -> out
    ("Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),                 # 5 not a face, no PNG
    ("Training", "fer0000005.png", [0, 0, 0, 0, 2, 0, 0, 0, 0, 8]),    # 6 not a face -> out
    ("Training", "fer0000006.png", [0, 0, 0, 3, 5, 2, 0, 0, 0, 0]),    # 7 angry
    ("Training", "fer0000007.png", [0, 0, 7, 0, 0, 0, 3, 0, 0, 0]),    # 8 surprise
    ("PublicTest", "fer0000008.png", [0, 0, 0, 0, 0, 8, 2, 0, 0, 0]),  # 9 disgust
    ("PublicTest", "fer0000009.png", [0, 0, 0, 0, 0, 0, 0, 5, 0, 5]),  # 10 tie contempt/NF -> out
    ("PublicTest", "fer0000010.png", [2, 0, 0, 6, 0, 0, 0, 2, 0, 0]),  # 11 sad
    ("PrivateTest", "fer0000011.png", [0, 0, 0, 0, 0, 0, 9, 1, 0, 0]),  # 12 fear
    ("PrivateTest", "fer0000012.png", [3, 0, 0, 0, 0, 0, 0, 7, 0, 0]),  # 13 contempt
    ("PrivateTest", "fer0000011.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # 14 repeats row 12's name
]
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
# Rows kept with 8 classes, by split, with their labels.
FERPLUS_KEPT = {
    "train": [(0, "neutral"), (1, "happy"), (2, "contempt"), (7, "angry"), (8, "surprise")],
    "val": [(9, "disgust"), (11, "sad")],
    "test": [(12, "fear"), (13, "contempt")],
}


def row_value(row: int) -> int:
    return 10 + 10 * row


def write_votes(path: Path, rows=FERPLUS_ROWS, header=FERPLUS_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([usage, name, *votes] for usage, name, votes in rows)
    return path


def write_pngs(root: Path, label_csv_rows=FERPLUS_ROWS) -> Path:
    """FER2013{Train,Valid,Test}/ferNNNNNNN.png (first row naming a file wins) and each folder's label.csv."""
    labels: dict[str, list[list]] = {folder: [] for folder in FERPLUS_FOLDERS.values()}
    for i, (usage, name, votes) in enumerate(label_csv_rows):
        path = root / FERPLUS_FOLDERS[usage] / name
        if not name or path.exists():
            continue
        save_gray(path, row_value(i), size=(48, 48))
        labels[FERPLUS_FOLDERS[usage]].append([name, "(0, 0, 48, 48)", *votes])
    for folder, rows in labels.items():
        with open(root / folder / "label.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


def write_fer2013_csv(path: Path, usages: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        for i, usage in enumerate(usages):
            writer.writerow([i % 7, " ".join([str(row_value(i))] * 2304), usage])
    return path


@pytest.fixture
def ferplus_root(tmp_path: Path) -> Path:
    root = tmp_path / "ferplus"
    write_votes(root / "fer2013new.csv")
    return write_pngs(root)


def check_ferplus(data: dict[str, FERDataset], classes: tuple[str, ...] = FER8_CLASSES) -> None:
    for split, kept in FERPLUS_KEPT.items():
        kept = [(row, name) for row, name in kept if name in classes]
        d = data[split]
        assert d.classes == classes and d.images.shape == (len(kept), 1, 48, 48)
        assert [classes[i] for i in d.labels.tolist()] == [name for _, name in kept]
        assert d.images[:, 0, 0, 0].tolist() == [row_value(row) for row, _ in kept]
        assert d.soft_labels is not None and d.soft_labels.shape == (len(kept), len(classes))
        assert torch.allclose(d.soft_labels.sum(dim=1), torch.ones(len(kept)))
        assert torch.equal(d.soft_labels.argmax(dim=1), d.labels)


def test_ferplus_png_folders_majority_and_soft_labels(ferplus_root: Path) -> None:
    data = load_ferplus(ferplus_root, progress=False)
    check_ferplus(data)
    assert [len(data[s]) for s in ("train", "val", "test")] == [5, 2, 2]
    neutral_row = data["train"].soft_labels[0]
    expected = dict(neutral=0.4, sad=0.1, angry=0.3, disgust=0.2)
    assert neutral_row.tolist() == pytest.approx([expected.get(c, 0.0) for c in FER8_CLASSES])
    assert data["train"].note == (
        "FER+ majority vote from fer2013new.csv, 8 classes; left out 4 rows: 2 not a face, 1 tied, 1 unknown"
    )
    assert data["test"].note.endswith("left out 1 rows: 1 repeating an image name")

    seven = load_ferplus(ferplus_root, classes=7, progress=False)
    check_ferplus(seven, FER_CLASSES)
    assert [len(seven[s]) for s in ("train", "val", "test")] == [4, 2, 1]
    sad_row = seven["val"].soft_labels[1]
    assert sad_row.tolist() == pytest.approx([0.75 if c == "sad" else 0.25 if c == "neutral" else 0.0
                                              for c in FER_CLASSES])
    assert "1 contempt" in seven["train"].note


def test_ferplus_from_original_csv_matches_pngs(ferplus_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "csv-form"
    write_votes(root / "fer2013new.csv")
    write_fer2013_csv(root / "fer2013.csv", [usage for usage, _, _ in FERPLUS_ROWS])
    from_csv = load_ferplus(root / "fer2013new.csv", progress=False)
    check_ferplus(from_csv)
    from_png = load_ferplus(ferplus_root, progress=False)
    for split in from_png:
        assert torch.equal(from_csv[split].images, from_png[split].images)
        assert torch.equal(from_csv[split].soft_labels, from_png[split].soft_labels)
    # A folder with both CSVs is FER+ to the dispatcher, and FER2013 when forced.
    assert load_dataset(root, progress=False)["train"].soft_labels is not None
    forced = load_dataset(root, format="fer2013", progress=False)
    assert forced["train"].classes == FER_CLASSES and len(forced["train"]) == 9


def test_ferplus_with_fer2013_hard_labels_keeps_every_row(tmp_path: Path) -> None:
    root = tmp_path / "csv-form"
    write_votes(root / "fer2013new.csv")
    write_fer2013_csv(root / "fer2013.csv", [usage for usage, _, _ in FERPLUS_ROWS])
    data = load_dataset(root, classes=7, hard_labels="fer2013", progress=False)
    usages = [usage for usage, _, _ in FERPLUS_ROWS]
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        rows = [i for i, u in enumerate(usages) if u == usage]
        d = data[split]
        assert d.classes == FER_CLASSES and len(d) == len(rows)
        assert d.labels.tolist() == [i % 7 for i in rows]  # fer2013.csv's emotion column, not the votes
        assert d.images[:, 0, 0, 0].tolist() == [row_value(i) for i in rows]
        assert torch.allclose(d.soft_labels.sum(dim=1), torch.ones(len(rows)))
    train = data["train"]
    # Row 0's votes over the 7 classes; row 5 (all not-a-face) falls back to its own label, one-hot.
    assert train.soft_labels[0].tolist() == pytest.approx(
        [dict(neutral=0.4, sad=0.1, angry=0.3, disgust=0.2).get(c, 0.0) for c in FER_CLASSES])
    assert train.soft_labels[5].tolist() == [1.0 if i == 5 % 7 else 0.0 for i in range(7)]
    # Row 2 has contempt votes and two unknown/NF: its 7-class mass is empty too, so one-hot.
    assert train.soft_labels[2].tolist() == [1.0 if i == 2 else 0.0 for i in range(7)]


@pytest.mark.parametrize("options, message", [
    (dict(hard_labels="fer2013"), "needs classes=7"),
    (dict(classes=7, hard_labels="votes"), "hard_labels must be one of ferplus, fer2013"),
])
def test_ferplus_hard_label_errors(ferplus_root: Path, options: dict, message: str) -> None:
    with pytest.raises(FerkitError, match=message):
        load_dataset(ferplus_root, progress=False, **options)


def test_ferplus_fer2013_labels_need_the_original_csv(ferplus_root: Path) -> None:
    with pytest.raises(FerkitError, match="reads FER2013's labels from fer2013.csv"):
        load_dataset(ferplus_root, classes=7, hard_labels="fer2013", progress=False)


def test_reader_refuses_an_option_it_does_not_take(tmp_path: Path) -> None:
    root = tmp_path / "csv-form"
    write_fer2013_csv(root.parent / "fer2013.csv", ["Training"] * 3 + ["PublicTest", "PrivateTest"])
    with pytest.raises(FerkitError, match="FER2013 data takes no option hard_labels"):
        load_dataset(root.parent / "fer2013.csv", hard_labels="fer2013", progress=False)


def test_ferplus_votes_from_label_csv_or_elsewhere(tmp_path: Path) -> None:
    # label.csv that disagrees with fer2013new.csv on row 8: 10 fear votes instead of 7 surprise.
    rows = [(u, n, [0, 0, 0, 0, 0, 0, 10, 0, 0, 0] if i == 8 else v) for i, (u, n, v) in enumerate(FERPLUS_ROWS)]
    pngs = write_pngs(tmp_path / "pngs", rows)
    only_folders = load_dataset(pngs, progress=False)["train"]
    assert FER8_CLASSES[int(only_folders.labels[-1])] == "fear"
    assert "from the folders' label.csv" in only_folders.note
    votes = write_votes(tmp_path / "votes" / "fer2013new.csv")
    with_csv = load_ferplus(votes.parent, images=pngs, progress=False)
    check_ferplus(with_csv)  # fer2013new.csv wins over label.csv: row 8 is surprise
    assert with_csv["train"].source == str(votes.parent)


@pytest.mark.parametrize(
    "row, message",
    [
        (["Training", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, "x"], "line 17: vote counts must be whole numbers"),
        (["Training", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, -1], "line 17: vote counts must be whole numbers"),
        (["Validation", "fer0000099.png", 1, 2, 3, 4, 5, 6, 7, 8, 9, 0], "line 17: Usage 'Validation'"),
        (["Training", "fer0000099.png", 1, 2], "line 17: 4 fields, expected 12"),
    ],
)
def test_ferplus_bad_vote_rows(ferplus_root: Path, row: list, message: str) -> None:
    votes = ferplus_root / "fer2013new.csv"
    with open(votes, "a", newline="") as handle:
        csv.writer(handle).writerow(row)
    with pytest.raises(FerkitError, match=message) as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)


def test_ferplus_file_errors(ferplus_root: Path, tmp_path: Path) -> None:
    votes = ferplus_root / "fer2013new.csv"
    missing = ferplus_root / "FER2013Valid" / "fer0000010.png"
    missing.unlink()
    with pytest.raises(FerkitError, match="cannot read as an image") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, missing)
    assert load_ferplus(ferplus_root, skip_bad=True, progress=False)["val"].skipped == 1

    write_votes(votes, header=FERPLUS_HEADER[:-1] + ["not_face"])
    with pytest.raises(FerkitError, match="not a FER\\+ vote file, missing column\\(s\\) NF") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)
    votes.write_bytes(b"Usage,Image name\n\xff\xfe")
    with pytest.raises(FerkitError, match="cannot read the FER\\+ vote file") as err:
        load_ferplus(ferplus_root, progress=False)
    assert error_names(err, votes)

    lone = write_votes(tmp_path / "lone" / "fer2013new.csv")
    with pytest.raises(FerkitError, match="no FER\\+ images found; expected FER2013Train") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone)
    write_fer2013_csv(lone.parent / "fer2013.csv", ["Training"] * 3)
    with pytest.raises(FerkitError, match="3 rows but .* has 15") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone.parent / "fer2013.csv")
    write_fer2013_csv(lone.parent / "fer2013.csv", ["Training"] * 15)
    with pytest.raises(FerkitError, match="row 10 is train but .* row 10 is val") as err:
        load_ferplus(lone, progress=False)
    assert error_names(err, lone.parent / "fer2013.csv")
    with pytest.raises(FerkitError, match="classes must be 7 or 8"):
        load_ferplus(ferplus_root, classes=6)


# ---- dispatch ----

def test_load_dataset_forced_format_and_unknown(ck_root: Path, raf_root: Path) -> None:
    assert load_dataset(ck_root, format="ckplus", size=8, progress=False)["train"].groups is not None
    with pytest.raises(FerkitError, match="not a RAF-DB layout") as err:
        load_dataset(ck_root, format="rafdb")
    assert error_names(err, ck_root)
    with pytest.raises(FerkitError, match="unknown data format 'affectnet'; valid formats: fer2013, ferplus"):
        load_dataset(ck_root, format="affectnet")
    # The keyword arguments training passes work for every reader.
    common = dict(skip_bad=False, val_fraction=0.2, seed=0, progress=False)
    assert set(load_dataset(ck_root, size=8, **common)) == {"train", "val"}
    assert set(load_dataset(raf_root, **common)) == {"train", "val", "test"}


# ---- the in-memory form's optional fields ----

def test_subset_carries_groups_and_soft_labels() -> None:
    data = FERDataset(
        images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1, 2, 3]),
        classes=FER_CLASSES, split="train", source="memory",
        groups=torch.tensor([1, 0, 1, 0]), group_names=("S1", "S2"),
        soft_labels=torch.eye(7)[:4],
    )
    part = data.subset(torch.tensor([2, 3]))
    assert part.groups.tolist() == [1, 0] and part.group_names == ("S1", "S2")
    assert torch.equal(part.soft_labels, torch.eye(7)[2:4])
    base = (data.images, data.labels, FER_CLASSES, "train", "m")
    with pytest.raises(FerkitError, match=re.escape("groups must be int64 with shape (4,)")):
        FERDataset(*base, groups=torch.tensor([0, 1]), group_names=("a", "b"))
    with pytest.raises(FerkitError, match=re.escape("groups must index group_names (1 names)")):
        FERDataset(*base, groups=torch.tensor([0, 1, 0, 0]), group_names=("a",))
    with pytest.raises(FerkitError, match=re.escape("soft_labels must be float32 with shape (4, 7)")):
        FERDataset(*base, soft_labels=torch.zeros(4, 8))


# ---- folds ----

SUBJECT_SIZES = [7, 1, 3, 5, 2, 2, 4, 6, 1, 3]


def subject_groups() -> torch.Tensor:
    groups = torch.cat([torch.full((n,), s) for s, n in enumerate(SUBJECT_SIZES)])
    return groups[torch.randperm(len(groups), generator=torch.Generator().manual_seed(0))]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_subject_folds_disjoint_cover_and_balanced(k: int) -> None:
    groups = subject_groups()
    folds = subject_folds(groups, k, seed=4)
    assert len(folds) == k
    assert sorted(torch.cat(folds).tolist()) == list(range(len(groups)))
    subjects = [set(groups[f].tolist()) for f in folds]
    assert all(not subjects[a] & subjects[b] for a in range(k) for b in range(a + 1, k))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(SUBJECT_SIZES)
    assert all(torch.equal(a, b) for a, b in zip(folds, subject_folds(groups, k, seed=4)))


def test_subject_folds_on_ckplus(ck_root: Path) -> None:
    train = load_ckplus(ck_root, size=8, first_as_neutral=True, progress=False)["train"]
    folds = subject_folds(train.groups, 5, seed=0)
    assert sorted(len(f) for f in folds) == [3, 4, 4, 8, 8]  # one subject per fold
    assert sorted(torch.cat(folds).tolist()) == list(range(len(train)))
    with pytest.raises(FerkitError, match="k <= the number of subjects \\(5\\), got k=6"):
        subject_folds(train.groups, 6)


def test_stratified_folds_and_subject_split() -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 4)
    folds = stratified_folds(labels, 3, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(21))
    assert sorted(len(f) for f in folds) == [7, 7, 7]
    for c in range(3):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
    with pytest.raises(FerkitError, match="k <= the number of images"):
        stratified_folds(labels[:2], 3)

    groups = subject_groups()
    rest, held = subject_split(groups, 0.25, seed=2)
    assert sorted(rest.tolist() + held.tolist()) == list(range(len(groups)))
    assert not set(groups[rest].tolist()) & set(groups[held].tolist())
    assert 0.25 * len(groups) <= len(held) < 0.25 * len(groups) + max(SUBJECT_SIZES)


# ---- layout detection from the whole tree ----

def test_an_odd_image_first_does_not_turn_a_fer2013_tree_into_photos(tmp_path: Path) -> None:
    from conftest import write_kaggle_tree

    from ferkit.data import PhotoDataset, photos

    root = write_kaggle_tree(tmp_path / "fer", {"Training": 4, "PublicTest": 2, "PrivateTest": 2})
    odd = root / "test" / "angry" / "PrivateTest_0.png"  # the first file of its folder and of the tree
    save_gray(odd, 100, size=(300, 200))
    assert not photos.is_photos(root)
    # FER2013's reader reports the odd image by name, not the first one it read
    with pytest.raises(FerkitError, match=r"image is 300x200 but .* is 16x16, like 56 of the 57 images; "
                                          r"all images must have the same size: resize or remove the 1 other") as err:
        load_dataset(root, progress=False)
    assert error_names(err, odd)
    odd.unlink()
    data = load_dataset(root, progress=False)
    assert {name: len(split) for name, split in data.items()} == {"train": 28, "val": 14, "test": 14}
    assert not any(isinstance(split, PhotoDataset) for split in data.values())


def test_photos_or_crops_by_most_images_of_the_tree(tmp_path: Path) -> None:
    from ferkit.data import photos

    crops = tmp_path / "crops"  # no Kaggle prefixes: the sizes decide
    for folder in ("happy", "sad"):
        for i in range(20):
            save_gray(crops / folder / f"img{i:02d}.png", 10 * i, size=(48, 48))
    save_gray(crops / "happy" / "a_photo.jpg", 0, size=(640, 480))
    assert not photos.is_photos(crops)
    shots = tmp_path / "shots"
    for folder in ("happy", "sad"):
        for i in range(5):
            save_gray(shots / folder / f"img{i:02d}.jpg", 10 * i, size=(640, 480))
    save_gray(shots / "happy" / "a_crop.png", 0, size=(48, 48))
    assert photos.is_photos(shots)


def test_empty_path_or_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_kaggle_tree

    monkeypatch.chdir(write_kaggle_tree(tmp_path / "here", {"Training": 2, "PublicTest": 1, "PrivateTest": 1}))
    for loader in (load_dataset, load_ckplus, load_rafdb):
        with pytest.raises(FerkitError, match="the data path is empty; give the folder or file of the data set"):
            loader("", progress=False)  # never the current folder, though it holds a data set
    empty = tmp_path / "empty"
    (empty / "train" / "happy").mkdir(parents=True)
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(FerkitError, match=f"{re.escape(str(empty))}: empty folder"):
        load_dataset(empty, progress=False)
