"""Tests for ferkit.data.photos, the labelled-photo folder reader: face detection and cropping, synonyms,
rejects, splits, and telling photos from FER2013-style crops."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import save_gray
from PIL import Image

from ferkit.data import FER8_CLASSES, FER_CLASSES, PhotoDataset, load_dataset, load_photos
from ferkit.data import photos
from ferkit.detect import crop_face, detect_faces, sample_image_path
from ferkit.errors import FerkitError

# (class folder, file name, face side in pixels or 0 for a blank photo, canvas width x height, grey)
PHOTOS = [
    ("anger", "a1.jpg", 260, (360, 300), False),
    ("anger", "a2.png", 300, (400, 340), False),
    ("anger", "a3.jpg", 280, (420, 320), True),
    ("anger", "blank.jpg", 0, (320, 240), False),
    ("Happiness", "h1.jpg", 240, (340, 300), True),
    ("Happiness", "h2.jpg", 320, (400, 400), False),
    ("normal", "n1.jpg", 260, (360, 300), False),
    ("normal", "sub/n2.jpg", 300, (400, 340), False),  # photos in subfolders count too
    ("normal", "empty.png", 0, (200, 200), True),
    ("surprised", "s1.jpg", 280, (420, 320), False),
]
# Flat backgrounds on which the Haar detector finds the pasted face at every size used here.
BACKGROUNDS = ((90, 140, 60), (128, 128, 128), (200, 200, 220), (30, 30, 30), (60, 90, 160), (230, 220, 200))
EXPECTED = {"angry": 3, "disgust": 0, "fear": 0, "happy": 2, "sad": 0, "surprise": 1, "neutral": 2}


def face_photo(side: int, canvas: tuple[int, int], grey: bool, seed: int) -> Image.Image:
    """The shipped sample portrait at `side` pixels pasted on a flat background; blank when `side` is 0."""
    photo = Image.new("RGB", canvas, BACKGROUNDS[seed % len(BACKGROUNDS)])
    if side:
        face = Image.open(sample_image_path()).convert("RGB").resize((side, side))
        photo.paste(face, ((canvas[0] - side) // 2, (canvas[1] - side) // 3))
    return photo.convert("L") if grey else photo


def write_photos(root: Path, items=PHOTOS) -> Path:
    for seed, (folder, name, side, canvas, grey) in enumerate(items):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # JPEG quality 95: at the default 75 the Haar cascade misses some of these small faces
        face_photo(side, canvas, grey, seed).save(path, quality=95)
    return root


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "mine")


@pytest.fixture(scope="module")
def photo_cache(tmp_path_factory) -> Path:
    """One cache for the module's loads of `photo_root`, so each crop setting is detected once."""
    return tmp_path_factory.mktemp("photo-cache")


def load_all(root: Path, cache: Path, **kwargs) -> PhotoDataset:
    return load_photos(root, splits=("train",), val_fraction=0.0, test_fraction=0.0, cache_dir=cache,
                       progress=False, **kwargs)["train"]


def test_faces_found_cropped_and_synonyms_mapped(photo_root: Path, photo_cache: Path) -> None:
    data = load_dataset(photo_root, splits=("train",), val_fraction=0.0, test_fraction=0.0,
                        cache_dir=photo_cache, progress=False)["train"]
    assert isinstance(data, PhotoDataset)
    assert data.classes == FER_CLASSES and data.class_counts() == EXPECTED
    assert tuple(data.images.shape) == (8, 1, 48, 48)
    assert data.rejected == (f"{photo_root / 'anger' / 'blank.jpg'}: no face found",
                             f"{photo_root / 'normal' / 'empty.png'}: no face found")
    assert "2 photo(s) left out, no face found" in data.note
    # The crop is the one `ferkit predict` makes: largest face, margin 0.1, levelled eyes, grey.
    # Images come in the order of their relative paths ("Happiness" sorts before "anger").
    kept = sorted(f"{folder}/{name}" for folder, name, side, _, _ in PHOTOS if side)
    grey = np.asarray(Image.open(photo_root / "anger" / "a1.jpg").convert("L"))
    expected = crop_face(grey, detect_faces(grey)[0], 48, 0.1, True, 1)
    assert np.array_equal(data.images[kept.index("anger/a1.jpg"), 0].numpy(), expected)


def test_crop_options_and_cache(photo_root: Path, photo_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    colour = load_all(photo_root, photo_cache, size=64, channels=3)
    assert tuple(colour.images.shape) == (8, 3, 64, 64) and len(colour.rejected) == 2
    first = load_all(photo_root, photo_cache)

    def fail(*args, **kwargs):
        raise AssertionError("detected again instead of reading the cache")

    monkeypatch.setattr(photos, "detect_faces", fail)
    again = load_all(photo_root, photo_cache)
    assert np.array_equal(again.images.numpy(), first.images.numpy()) and again.rejected == first.rejected
    with pytest.raises(AssertionError, match="detected again"):
        load_all(photo_root, photo_cache, margin=0.2)  # another crop setting is another cache entry


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    root = tmp_path / "exif"
    (root / "happy").mkdir(parents=True)
    sideways = face_photo(260, (360, 300), False, 0).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": the camera held sideways
    sideways.save(root / "happy" / "p.jpg", exif=exif.tobytes(), quality=95)
    assert len(load_all(root, tmp_path / "cache")) == 1


def write_plain(root: Path, counts: dict[str, int], size: tuple[int, int] = (40, 60)) -> Path:
    """Flat grey images whose value encodes (class folder, index), for layouts without detection."""
    for c, (folder, count) in enumerate(counts.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("L", size, 10 * c + i).save(root / folder / f"{i:03d}.png")
    return root


def test_no_detect_resizes_and_carves_stratified_splits(tmp_path: Path) -> None:
    root = write_plain(tmp_path / "crops", {"sadness": 10, "fearful": 10, "Contempt": 10})
    assert photos.is_photos(root)  # 40x60 is not a FER-style crop
    data = load_dataset(root, detect=False, seed=3, cache_dir=tmp_path / "c", progress=False)
    assert data["train"].classes == FER8_CLASSES
    for name, per_class in {"train": 8, "val": 1, "test": 1}.items():
        counts = data[name].class_counts()
        assert counts["sad"] == counts["fear"] == counts["contempt"] == per_class, name
        assert tuple(data[name].images.shape[1:]) == (1, 48, 48)
    assert "test: stratified 10% of the train photos, seed 3" in data["test"].note
    assert "val: stratified 10% of train" in data["val"].note
    values = {int(img[0, 0, 0]) for split in data.values() for img in split.images}
    assert len(values) == 30  # every image in exactly one split
    again = load_photos(root, detect=False, seed=3, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(again["test"].images.numpy(), data["test"].images.numpy())
    other = load_photos(root, detect=False, seed=4, cache_dir=tmp_path / "c", progress=False)
    assert not np.array_equal(other["test"].images.numpy(), data["test"].images.numpy())


def test_split_folders_are_used(tmp_path: Path) -> None:
    root = tmp_path / "split"
    write_plain(root / "train", {"happy": 5, "sad": 4})
    write_plain(root / "Validation", {"happy": 2, "sad": 1})
    write_plain(root / "test", {"happy": 3, "sad": 3})
    data = load_photos(root, detect=False, cache_dir=tmp_path / "c", progress=False)
    assert {name: len(split) for name, split in data.items()} == {"train": 9, "val": 3, "test": 6}
    assert all(not split.note for split in data.values())


def test_detection_leaves_fer_crops_to_fer2013(tmp_path: Path) -> None:
    crops = write_plain(tmp_path / "fer", {"happy": 3, "sad": 3}, size=(48, 48))
    assert not photos.is_photos(crops)
    assert not isinstance(load_dataset(crops, splits=("train",), val_fraction=0.0, progress=False)["train"],
                          PhotoDataset)
    forced = load_dataset(crops, format="photos", detect=False, splits=("train",), val_fraction=0.0,
                          test_fraction=0.0, progress=False)["train"]
    assert isinstance(forced, PhotoDataset) and len(forced) == 6


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    root = write_plain(tmp_path / "bad", {"happy": 3, "grumpy": 2})
    with pytest.raises(FerkitError, match="unknown class folder 'grumpy'") as err:
        load_photos(root, detect=False, progress=False)
    assert str(root / "grumpy") in str(err.value)

    root = write_plain(tmp_path / "stray", {"happy": 3})
    write_plain(root / "train", {"happy": 3})
    with pytest.raises(FerkitError, match="folder beside the split folders") as err:
        load_photos(root, detect=False, progress=False)
    assert str(root / "happy") in str(err.value)

    root = write_plain(tmp_path / "broken", {"happy": 4})
    (root / "happy" / "zz.jpg").write_bytes(b"not an image")
    with pytest.raises(FerkitError, match="cannot read as an image") as err:
        load_photos(root, detect=False, progress=False)
    assert str(root / "happy" / "zz.jpg") in str(err.value)
    skipped = load_photos(root, splits=("train",), detect=False, skip_bad=True, val_fraction=0.0,
                          test_fraction=0.0, progress=False)["train"]
    assert len(skipped) == 4 and skipped.skipped == 1
    assert len(skipped.rejected) == 1 and skipped.rejected[0].startswith(f"{root / 'happy' / 'zz.jpg'}: unreadable (")

    blank = write_plain(tmp_path / "blank", {"happy": 2}, size=(100, 80))
    with pytest.raises(FerkitError, match="no face found in any of its 2 photos; for face crops use detect=False"):
        load_photos(blank, progress=False)
    with pytest.raises(FerkitError, match="channels must be 1"):
        load_photos(blank, channels=2)
    with pytest.raises(FerkitError, match="not a photo folder layout"):
        load_photos(tmp_path / "bad" / "happy")


def test_photos_or_crops_by_most_images_of_the_tree(tmp_path: Path) -> None:
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


def test_split_all_reads_every_photo_with_nothing_carved(tmp_path: Path) -> None:
    root = write_plain(tmp_path / "crops", {"sadness": 10, "fearful": 10, "Contempt": 10})
    (every,) = load_dataset(root, detect=False, splits=("all",), cache_dir=tmp_path / "c", progress=False).values()
    assert len(every) == 30 and every.split == "all" and "every image" in every.note
    assert len({int(img[0, 0, 0]) for img in every.images}) == 30
    with pytest.raises(FerkitError, match="ask for it alone"):
        load_dataset(root, detect=False, splits=("all", "test"), progress=False)
