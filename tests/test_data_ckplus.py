"""Tests for ferkit.data.ckplus: CK+'s sequence folders and the CK+48 class folders, grouped by subject."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from data_helpers import error_names, save_gray
from PIL import Image

from ferkit.data import FER8_CLASSES, FER_CLASSES, FERDataset, load_ckplus, load_ckplus48, load_dataset, subject_folds
from ferkit.data import pipeline
from ferkit.errors import FerkitError

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

    monkeypatch.setattr(pipeline, "decode_listing", fail)
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


# ---- through load_dataset, and folds by subject ----

def test_ckplus_through_load_dataset(ck_root: Path) -> None:
    assert load_dataset(ck_root, format="ckplus", size=8, progress=False)["train"].groups is not None
    # The keyword arguments training passes work for CK+ too.
    common = dict(skip_bad=False, val_fraction=0.2, seed=0, progress=False)
    assert set(load_dataset(ck_root, size=8, **common)) == {"train", "val"}


def test_subject_folds_on_ckplus(ck_root: Path) -> None:
    train = load_ckplus(ck_root, size=8, first_as_neutral=True, progress=False)["train"]
    folds = subject_folds(train.groups, 5, seed=0)
    assert sorted(len(f) for f in folds) == [3, 4, 4, 8, 8]  # one subject per fold
    assert sorted(torch.cat(folds).tolist()) == list(range(len(train)))
    with pytest.raises(FerkitError, match="k <= the number of subjects \\(5\\), got k=6"):
        subject_folds(train.groups, 6)
