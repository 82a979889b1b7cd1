"""Tests for ferkit.data.readers, the registry of data set formats: what each registration declares, the order
layouts are detected in, forced formats, refused options, and a new reader added with one register_reader call."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import write_kaggle_tree
from data_helpers import error_names, save_gray

from ferkit.data import (FER_CLASSES, SPLITS, FERDataset, PhotoDataset, data_formats, describe_formats, load_dataset,
                         register_reader)
from ferkit.data import fer2013, photos, readers
from ferkit.data.files import data_root
from ferkit.data.pipeline import Listed, Listing, ReadOptions, Source, read_listing
from ferkit.errors import FerkitError

# The keyword arguments load_dataset documents for every reader, and training passes.
COMMON_OPTIONS = ("splits", "skip_bad", "val_fraction", "seed", "cache_dir", "progress")


# ---- what every registration declares ----

@pytest.mark.parametrize("key", data_formats())
def test_every_format_is_described_and_takes_the_common_options(key: str) -> None:
    described = describe_formats()[key]
    assert described.key == key == key.lower()
    assert described.name and described.layouts and all(described.layouts)
    assert described.description and "\n" not in described.description
    taken = inspect.signature(described.load).parameters
    assert [name for name in COMMON_OPTIONS if name not in taken] == []
    assert next(iter(taken)) == "path"


@pytest.mark.parametrize("key", data_formats())
def test_every_reader_checks_the_common_options_first(key: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a folder of no known layout")
    load = describe_formats()[key].load
    with pytest.raises(FerkitError, match="unknown split 'dev'; valid splits: train, val, test"):
        load(tmp_path, splits=("train", "dev"))
    with pytest.raises(FerkitError, match=re.escape("val_fraction must be in [0, 1), got 1.0")):
        load(tmp_path, val_fraction=1.0)


def test_catch_alls_are_tried_last_photos_before_fer2013() -> None:
    ranks = {key: described.catch_all for key, described in describe_formats().items()}
    assert 0 < ranks["photos"] < ranks["fer2013"] == max(ranks.values())
    assert {"ferplus", "ckplus", "ckplus48", "rafdb"} <= {key for key, rank in ranks.items() if rank == 0}


def test_every_format_is_registered_whichever_module_is_imported_first() -> None:
    # The registry imports no reader: importing it first must still register them all (the package does).
    code = "import ferkit.data.readers as registry; print(' '.join(registry.data_formats()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.split() == list(data_formats())


def test_register_reader_refuses_a_key_load_dataset_could_not_find() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        register_reader("AffectNet", "AffectNet", ("<root>",), bool, load_dataset, description="never registered")
    with pytest.raises(ValueError, match="catch_all must be 0"):
        register_reader("affectnet", "AffectNet", ("<root>",), bool, load_dataset, description="never", catch_all=-1)
    assert "affectnet" not in data_formats() and "AffectNet" not in data_formats()


# ---- a new reader: one file, one register_reader call ----

TOY_MARK = "toy-set.txt"


def is_toy(path: Path) -> bool:
    """The toy layout: class folders, as labelled photos and FER2013 have, and a file only toy sets have."""
    return (path / TOY_MARK).is_file()


def load_toy(
    path: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    val_fraction: float = 0.5,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Every image of a toy set's class folders as train, val carved from it."""
    root = data_root(path)
    options = ReadOptions(splits=splits, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    files = [Listed(f"{folder.name}/{image.name}", FER_CLASSES.index(folder.name), "train")
             for folder in sorted(p for p in root.iterdir() if p.is_dir()) for image in sorted(folder.iterdir())]
    return read_listing(Listing(root, files, "toy"), Source(root, "toy sets have no val"), options)


def test_a_new_reader_is_one_register_reader_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "toy"
    for offset, folder in enumerate(("happy", "sad")):
        for i in range(4):
            save_gray(root / folder / f"{i}.png", 100 * offset + 10 * i, size=(64, 64))
    (root / TOY_MARK).write_text("a toy set")
    # Both catch-alls take this layout too: class folders of images larger than FER2013's crops.
    assert photos.is_photos(root) and fer2013.is_fer2013(root)
    with monkeypatch.context() as patch:
        patch.setattr(readers, "_FORMATS", dict(readers._FORMATS))  # a scratch registry, the real one after
        register_reader("toy", "Toy", (f"<root>/{TOY_MARK} with <root>/<class>/*.png",), is_toy, load_toy,
                        description="a toy data set this test defines")
        assert data_formats()[-1] == "toy" and describe_formats()["toy"].catch_all == 0
        data = load_dataset(root, splits=("train", "val"), cache_dir=tmp_path / "cache", progress=False)
        assert not any(isinstance(split, PhotoDataset) for split in data.values())
        for split in data.values():
            assert split.source == str(root) and split.classes == FER_CLASSES
            assert {name: n for name, n in split.class_counts().items() if n} == {"happy": 2, "sad": 2}
        assert data["val"].note == "val: stratified 50% of train, seed 0 (toy sets have no val)"
        with pytest.raises(FerkitError, match="Toy data takes no option detect"):
            load_dataset(root, detect=False)
    assert "toy" not in data_formats()
    with pytest.raises(FerkitError, match="unknown data format 'toy'"):
        load_dataset(root, format="toy")
    # Without the toy reader the same folder is labelled photos again.
    photo = load_dataset(root, splits=("train",), detect=False, val_fraction=0.0, test_fraction=0.0, progress=False)
    assert isinstance(photo["train"], PhotoDataset) and len(photo["train"]) == 8


# ---- formats chosen, options refused ----

def test_forced_and_unknown_format(tmp_path: Path) -> None:
    root = write_kaggle_tree(tmp_path / "fer", {"Training": 2, "PublicTest": 1, "PrivateTest": 1})
    with pytest.raises(FerkitError, match="not a RAF-DB layout") as err:
        load_dataset(root, format="rafdb")  # forced: no detection, even where another layout fits
    assert error_names(err, root)
    assert len(load_dataset(root, format="FER2013", progress=False)["test"]) == 7  # any case
    with pytest.raises(FerkitError, match="unknown data format 'affectnet'; valid formats: fer2013, ferplus"):
        load_dataset(root, format="affectnet")


def test_reader_refuses_an_option_it_does_not_take(tmp_path: Path) -> None:
    root = write_kaggle_tree(tmp_path / "fer", {"Training": 2, "PublicTest": 1, "PrivateTest": 1})
    with pytest.raises(FerkitError, match="FER2013 data takes no option hard_labels"):
        load_dataset(root, hard_labels="fer2013", progress=False)


def test_missing_path_and_unknown_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FerkitError, match=rf"{re.escape(str(missing))}: no such file or folder"):
        load_dataset(missing)
    other = tmp_path / "other"
    save_gray(other / "images" / "a.png", 0)
    expected = rf"{re.escape(str(other))}: no known data set layout; expected one of: FER2013"
    with pytest.raises(FerkitError, match=expected):
        load_dataset(other)


# ---- layout detection from the whole tree ----

def test_an_odd_image_first_does_not_turn_a_fer2013_tree_into_photos(tmp_path: Path) -> None:
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


def test_empty_path_or_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(write_kaggle_tree(tmp_path / "here", {"Training": 2, "PublicTest": 1, "PrivateTest": 1}))
    for loader in (load_dataset, *(f.load for f in describe_formats().values())):
        with pytest.raises(FerkitError, match="the data path is empty; give the folder or file of the data set"):
            loader("", progress=False)  # never the current folder, though it holds a data set
    empty = tmp_path / "empty"
    (empty / "train" / "happy").mkdir(parents=True)
    (empty / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(FerkitError, match=f"{re.escape(str(empty))}: empty folder"):
        load_dataset(empty, progress=False)
