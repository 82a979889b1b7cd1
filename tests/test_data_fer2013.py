"""Tests for ferkit.data.fer2013: the original CSV, the Kaggle image folders, and the decode-once cache."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.data import FER_CLASSES, FERDataset, load_dataset, load_fer2013
from ferkit.data import fer2013, pipeline
from ferkit.data.cache import cache_key
from ferkit.errors import FerkitError

# Kaggle's folder names, alphabetical: not the FER label order.
KAGGLE_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


# Images per class for each Usage in the fixtures.
PER_CLASS = {"Training": 3, "PublicTest": 2, "PrivateTest": 1}


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def load(path: Path, cache: Path, **kwargs) -> dict[str, FERDataset]:
    return load_fer2013(path, cache_dir=cache, progress=False, **kwargs)


def write_csv(path: Path, rows: list[tuple[object, str, str]], header=("emotion", "pixels", "Usage")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def csv_rows() -> list[tuple[int, np.ndarray, str]]:
    """(emotion, 48x48 pixels, Usage) for every class and Usage, PER_CLASS rows each."""
    rng = np.random.default_rng(0)
    return [
        (emotion, rng.integers(0, 256, (48, 48), dtype=np.uint8), usage)
        for usage, count in PER_CLASS.items()
        for emotion in range(7)
        for _ in range(count)
    ]


@pytest.fixture
def csv_file(tmp_path: Path, csv_rows) -> Path:
    rows = [(e, " ".join(map(str, p.flatten())), u) for e, p, u in csv_rows]
    return write_csv(tmp_path / "fer2013.csv", rows)


def save_image(path: Path, value: int, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def gray_of(label: int) -> int:
    """The flat grey value fixture images of a class get, so content tells the class."""
    return 20 + 30 * label


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    """<root>/train/<class>/Training_*.jpg and <root>/test/<class>/{PublicTest,PrivateTest}_*.jpg."""
    root = tmp_path / "kaggle"
    for folder in KAGGLE_FOLDERS:
        value = gray_of(FER_CLASSES.index(folder))
        for usage, count in PER_CLASS.items():
            split_folder = "train" if usage == "Training" else "test"
            for i in range(count):
                save_image(root / split_folder / folder / f"{usage}_{folder}{i}.jpg", value)
    (root / "README.txt").write_text("not an image")
    (root / "train" / "happy" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "train" / "sad" / "._Training_sad0.jpg").write_bytes(b"AppleDouble junk")
    save_image(root / "train" / ".ipynb_checkpoints" / "Training_x.jpg", 0)
    return root


# Generic no-prefix tree: class folder (case and synonyms as users name them) -> train, test count.
GENERIC = {"Happiness": (10, 2), "NEUTRAL": (20, 3), "sadness": (30, 4)}


@pytest.fixture
def generic_root(tmp_path: Path) -> Path:
    root = tmp_path / "generic"
    for folder, (n_train, n_test) in GENERIC.items():
        for i in range(n_train):
            save_image(root / "train" / folder / f"img{i:03d}.png", i)
        for i in range(n_test):
            save_image(root / "test" / folder / f"img{i:03d}.png", i)
    return root


# ---- CSV ----

def test_csv_counts_labels_and_exact_pixels(csv_file: Path, csv_rows, cache: Path) -> None:
    data = load(csv_file, cache)
    assert {name: len(d) for name, d in data.items()} == {"train": 21, "val": 14, "test": 7}
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        d = data[name]
        assert d.images.dtype == torch.uint8 and d.images.shape == (len(d), 1, 48, 48)
        assert d.labels.dtype == torch.int64
        assert d.classes == FER_CLASSES and d.split == name and d.note == ""
        assert d.class_counts() == dict.fromkeys(FER_CLASSES, PER_CLASS[usage])
        expected = [(e, p) for e, p, u in csv_rows if u == usage]
        assert d.labels.tolist() == [e for e, _ in expected]
        assert np.array_equal(d.images[:, 0].numpy(), np.stack([p for _, p in expected]))


def test_csv_in_folder_and_load_dataset(csv_file: Path, cache: Path) -> None:
    direct = load(csv_file, cache, splits=("test",))
    via_folder = load(csv_file.parent, cache, splits=("test",))
    via_dispatch = load_dataset(csv_file, splits=("test",), cache_dir=cache, progress=False)
    assert list(direct) == list(via_folder) == list(via_dispatch) == ["test"]
    assert torch.equal(direct["test"].images, via_folder["test"].images)
    assert torch.equal(direct["test"].labels, via_dispatch["test"].labels)


def pixel_row(values: int = 2304) -> str:
    return " ".join(["7"] * values)


GOOD_ROW = (0, pixel_row(), "Training")


@pytest.mark.parametrize(
    "header, bad_row, message",
    [
        (("label", "pixels", "Usage"), GOOD_ROW, "expected columns emotion,pixels,Usage, found label,pixels"),
        (None, (1, pixel_row(2303), "Training"), "line 3: 2303 pixel values, expected 2304"),
        (None, (7, pixel_row(), "Training"), "line 3: emotion '7' is not in 0..6"),
        (None, ("x", pixel_row(), "Training"), "line 3: emotion 'x'"),
        (None, (0, pixel_row(), "Validation"), "line 3: Usage 'Validation'"),
        (None, (0, pixel_row(2303) + " 256", "Training"), "line 3: pixel values must be in 0..255"),
        (None, (0, pixel_row(2303) + " a", "Training"), "line 3: pixels must be"),
    ],
)
def test_csv_errors_name_the_file(tmp_path: Path, cache: Path, header, bad_row, message: str) -> None:
    path = write_csv(tmp_path / "bad.csv", [GOOD_ROW, bad_row], header or ("emotion", "pixels", "Usage"))
    with pytest.raises(FerkitError, match=message) as err:
        load(path, cache)
    assert str(path) in str(err.value)


def test_binary_csv_is_a_clear_error(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"emotion,pixels,Usage\n\xff\xfe\x00garbage\x9c\n")
    with pytest.raises(FerkitError, match="not a readable FER2013 CSV") as err:
        load(path, cache)
    assert str(path) in str(err.value)


# ---- Kaggle folders ----

def test_kaggle_folders_split_by_prefix_and_fer_label_order(kaggle_root: Path, cache: Path) -> None:
    data = load(kaggle_root, cache)
    for name, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        d = data[name]
        assert len(d) == 7 * PER_CLASS[usage]
        assert d.class_counts() == dict.fromkeys(FER_CLASSES, PER_CLASS[usage])
        assert d.images.dtype == torch.uint8 and d.images.shape == (len(d), 1, 48, 48)
        assert d.note == "" and d.skipped == 0
        # Each fixture image is flat grey with a value set by its folder's class: the label
        # must be the FER index of that folder (neutral/ -> 6, sad/ -> 4), not its alphabetical rank.
        means = d.images.float().mean(dim=(1, 2, 3))
        expected = torch.tensor([gray_of(int(label)) for label in d.labels], dtype=torch.float32)
        assert torch.allclose(means, expected, atol=2)
    assert FER_CLASSES.index("neutral") == 6 and FER_CLASSES.index("sad") == 4


def test_load_dataset_dispatches_folders(kaggle_root: Path, cache: Path) -> None:
    data = load_dataset(kaggle_root, splits=("val",), cache_dir=cache, progress=False)
    assert list(data) == ["val"] and len(data["val"]) == 14


def test_generic_folders_carve_stratified_val(generic_root: Path, cache: Path) -> None:
    data = load(generic_root, cache, val_fraction=0.1, seed=5)
    train, val, test = data["train"], data["val"], data["test"]
    index = {name: FER_CLASSES.index(name) for name in ("happy", "neutral", "sad")}
    assert test.class_counts() == {**dict.fromkeys(FER_CLASSES, 0), "happy": 2, "neutral": 3, "sad": 4}
    assert val.class_counts() == {**dict.fromkeys(FER_CLASSES, 0), "happy": 1, "neutral": 2, "sad": 3}
    assert train.class_counts() == {**dict.fromkeys(FER_CLASSES, 0), "happy": 9, "neutral": 18, "sad": 27}
    assert val.note == (
        "val: stratified 10% of train, seed 5 (no PublicTest_ prefixes or val folder found)"
    )
    assert "seed 5" in train.note and test.note == ""

    # Each train image's grey value is its number within its class folder, so (label, value)
    # identifies the file: val and the remaining train must be disjoint and cover the folder.
    def ids(d: FERDataset) -> set[tuple[int, int]]:
        return set(zip(d.labels.tolist(), d.images[:, 0, 0, 0].tolist()))

    assert not ids(train) & ids(val)
    assert ids(train) | ids(val) == {(index[c], i) for c, n in zip(index, (10, 20, 30)) for i in range(n)}

    again = load(generic_root, cache, val_fraction=0.1, seed=5)
    assert ids(again["val"]) == ids(val)
    other = load(generic_root, cache, val_fraction=0.1, seed=6)
    assert ids(other["val"]) != ids(val)
    assert other["val"].class_counts() == val.class_counts()


def test_class_only_layout_has_no_test(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "flat"
    for i in range(10):
        save_image(root / "Surprised" / f"{i}.png", i)
    data = load(root, cache, splits=("train", "val"))
    assert len(data["train"]) == 9 and len(data["val"]) == 1
    assert set(data["train"].labels.tolist()) == {FER_CLASSES.index("surprise")}
    with pytest.raises(FerkitError, match=rf"no images for split 'test' in {re.escape(str(root))}"):
        load(root, cache)


def test_corrupt_image_raises_or_is_skipped(kaggle_root: Path, cache: Path) -> None:
    bad = kaggle_root / "test" / "fear" / "PrivateTest_broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(FerkitError, match="cannot read as an image") as err:
        load(kaggle_root, cache)
    assert str(bad) in str(err.value)
    data = load(kaggle_root, cache, skip_bad=True)
    assert [data[s].skipped for s in ("train", "val", "test")] == [0, 0, 1]
    assert len(data["test"]) == 7


def test_truncated_image_is_unreadable(kaggle_root: Path, cache: Path) -> None:
    good = kaggle_root / "train" / "angry" / "Training_angry0.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FerkitError, match="Training_angry0.jpg: cannot read"):
        load(kaggle_root, cache)


@pytest.mark.parametrize("name", ["contempt", "Fear_old"])
def test_unknown_class_folder(kaggle_root: Path, cache: Path, name: str) -> None:
    save_image(kaggle_root / "train" / name / "Training_1.jpg", 0)
    with pytest.raises(FerkitError, match=f"unknown class folder '{name}'; valid names: angry, disg") as err:
        load(kaggle_root, cache)
    assert str(kaggle_root / "train" / name) in str(err.value)


def test_odd_image_size(kaggle_root: Path, cache: Path) -> None:
    odd = kaggle_root / "train" / "sad" / "Training_zzz.jpg"
    save_image(odd, 0, size=64)
    with pytest.raises(FerkitError, match="64x64 but .* is 48x48") as err:
        load(kaggle_root, cache)
    assert str(odd) in str(err.value)


def test_missing_path_and_not_a_fer2013_layout(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FerkitError, match=rf"{re.escape(str(missing))}: no such file or folder"):
        load_fer2013(missing, cache_dir=cache)
    other = tmp_path / "other"
    save_image(other / "images" / "a.png", 0)
    with pytest.raises(FerkitError, match=rf"{re.escape(str(other))}: not a FER2013 layout"):
        load(other, cache)


def test_folders_and_csv_of_the_same_images_give_the_same_datasets(tmp_path: Path, cache: Path) -> None:
    # Lossless PNGs in the Kaggle layout, and a CSV of the same pixels in the order the folders are read
    # (by relative path): both forms must come out as the same in-memory datasets.
    rng = np.random.default_rng(1)
    root = tmp_path / "png"
    files = []
    for usage, count in PER_CLASS.items():
        for folder in KAGGLE_FOLDERS:
            for i in range(count):
                relpath = f"{'train' if usage == 'Training' else 'test'}/{folder}/{usage}_{i}.png"
                pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
                (root / relpath).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / relpath)
                files.append((relpath, FER_CLASSES.index(folder), pixels, usage))
    files.sort(key=lambda file: file[0])
    csv_path = write_csv(tmp_path / "fer2013.csv",
                         [(label, " ".join(map(str, p.flatten())), usage) for _, label, p, usage in files])
    from_folders, from_csv = load(root, cache), load(csv_path, cache)
    # 7 classes x 3 Training, 2 PublicTest and 1 PrivateTest images each.
    assert {name: len(d) for name, d in from_folders.items()} == {"train": 21, "val": 14, "test": 7}
    for name in ("train", "val", "test"):
        assert torch.equal(from_folders[name].images, from_csv[name].images)
        assert torch.equal(from_folders[name].labels, from_csv[name].labels)
        assert from_folders[name].class_counts() == from_csv[name].class_counts()
        assert (from_folders[name].note, from_folders[name].skipped) == (from_csv[name].note, 0)


# ---- cache ----

def fail(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")


def test_second_load_uses_cache(
    kaggle_root: Path, csv_file: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load(kaggle_root, cache)
    first_csv = load(csv_file, cache)
    assert len(list(cache.glob("fer2013-folders-*.pt"))) == 1
    assert len(list(cache.glob("fer2013-csv-*.pt"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp files left
    monkeypatch.setattr(pipeline, "decode_listing", fail)
    monkeypatch.setattr(fer2013, "read_csv", fail)
    for path, before in ((kaggle_root, first), (csv_file, first_csv)):
        after = load(path, cache)
        for name in before:
            assert torch.equal(after[name].images, before[name].images)
            assert torch.equal(after[name].labels, before[name].labels)


def test_cache_key_follows_file_changes(
    kaggle_root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(kaggle_root, cache)
    changed = kaggle_root / "train" / "happy" / "Training_happy0.jpg"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(pipeline, "decode_listing", fail)
    with pytest.raises(AssertionError, match="decoded again"):
        load(kaggle_root, cache)
    assert cache_key("k", [("a", 1, 2)]) != cache_key("k", [("a", 1, 3)])
    assert cache_key("k", [("a", 1, 2)]) != cache_key("k", [("b", 1, 2)])
    assert cache_key("k", [("a", 1, 2)]) == cache_key("k", [("a", 1, 2)])


def test_skip_bad_state_is_cached(kaggle_root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (kaggle_root / "train" / "fear" / "Training_bad.jpg").write_bytes(b"junk")
    assert load(kaggle_root, cache, skip_bad=True)["train"].skipped == 1
    monkeypatch.setattr(pipeline, "decode_listing", fail)
    # From the cache, the unreadable file still raises unless skip_bad, and is still counted.
    with pytest.raises(FerkitError, match="Training_bad.jpg: cannot read"):
        load(kaggle_root, cache)
    assert load(kaggle_root, cache, skip_bad=True)["train"].skipped == 1


def test_damaged_cache_is_rebuilt(csv_file: Path, cache: Path) -> None:
    first = load(csv_file, cache)
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(b"half a file")
    again = load(csv_file, cache)
    assert torch.equal(again["train"].images, first["train"].images)
    assert entry.stat().st_size > 1000


def test_cache_dir_from_environment(
    csv_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "from-env"))
    load_fer2013(csv_file, progress=False)
    assert len(list((tmp_path / "from-env").glob("fer2013-csv-*.pt"))) == 1


def test_nested_loose_and_stray_images_are_read_or_said(tmp_path):
    from PIL import Image as PILImage

    def img(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(np.full((48, 48), value, np.uint8)).save(path)

    img(tmp_path / "train" / "happy" / "a.png", 10)
    img(tmp_path / "train" / "happy" / "more" / "b.png", 20)  # a subfolder of a class folder: that class
    img(tmp_path / "train" / "sad" / "c.png", 30)
    img(tmp_path / "train" / "sad" / "d.png", 35)
    img(tmp_path / "train" / "loose.png", 40)  # no class folder: no label
    img(tmp_path / "test" / "sad" / "e.png", 50)
    img(tmp_path / "extra" / "f.png", 60)  # beside train/ and test/
    img(tmp_path / "extra" / "deeper" / "g.png", 70)
    (tmp_path / "README.txt").write_text("not an image")
    data = load_fer2013(tmp_path, val_fraction=0.5, cache_dir=tmp_path / ".cache", progress=False)
    everything = torch.cat([data[s].images[:, 0, 0, 0] for s in ("train", "val")]).sort().values
    assert everything.tolist() == [10, 20, 30, 35]
    assert data["test"].images[:, 0, 0, 0].tolist() == [50]
    note = "left out 3 images outside class folders (no label): 1 in extra/, 1 in extra/deeper/, 1 in train/"
    assert all(data[s].note.startswith(note) for s in ("train", "val", "test")), data["train"].note
