"""Readers for FER2013: the original CSV and the Kaggle image folders, plus layout dispatch."""
from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ferkit.data.cache import cache_key, cache_path, load_entry, save_entry
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.errors import FerkitError

CSV_NAME = "fer2013.csv"
CSV_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIZE = 48  # the CSV stores 48 x 48 images as 2304 values

# The same three-way protocol names the CSV's Usage column and the Kaggle file-name prefixes.
_USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
_CLASS_SYNONYMS = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "happiness": "happy",
    "sadness": "sad", "surprised": "surprise", "normal": "neutral",
}
# Files and folders that operating systems and tools drop into data folders; never images.
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
# PIL raises SyntaxError for some damaged files (e.g. broken PNG chunks) while decoding.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

LAYOUTS = (
    f"a FER2013 CSV ({CSV_NAME}, columns {','.join(CSV_COLUMNS)}) or a folder holding it",
    "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (Kaggle FER2013)",
    "<root>/<class>/*.jpg",
)


@dataclass
class _Decoded:
    """A whole source decoded: every readable image, its label and the split its source gave it."""

    images: torch.Tensor  # uint8, N x 1 x H x W
    labels: torch.Tensor  # int64, N
    split_ids: torch.Tensor  # int64, N, index into SPLITS
    bad_files: list[str]  # unreadable files, with the reason and split of each beside
    bad_reasons: list[str]
    bad_split_ids: list[int]

    def to_entry(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> _Decoded | None:
        try:
            return cls(**{name: entry[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


@dataclass(frozen=True)
class _ImageFile:
    """One listed image file of a folder layout."""

    relpath: str  # relative to the root, '/'-separated
    label: int
    split: str
    size: int
    mtime_ns: int


def load_fer2013(
    path: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    skip_bad: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Read FER2013 from its CSV or from image folders, one FERDataset per requested split.

    Splits follow the FER2013 protocol: Training -> train, PublicTest -> val, PrivateTest -> test
    (the CSV's Usage column, or the Kaggle file-name prefixes). Folders without that information
    give test = the test folder and val = a stratified, seeded `val_fraction` of train (recorded
    in the datasets' `note`). Unreadable images raise FerkitError unless `skip_bad`, which leaves
    them out and counts them in `skipped`. Decoded images are cached in `cache_dir`
    (default $FERKIT_CACHE or ~/.cache/ferkit), so a second load skips decoding.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FerkitError(f"{root}: no such file or folder")
    unknown = [name for name in splits if name not in SPLITS]
    if unknown:
        raise FerkitError(f"unknown split {unknown[0]!r}; valid splits: {', '.join(SPLITS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise FerkitError(f"val_fraction must be in [0, 1), got {val_fraction}")

    csv_file = _find_csv(root)
    if csv_file is not None:
        stat = csv_file.stat()
        kind = "fer2013-csv"
        key = cache_key(kind, [(str(csv_file.resolve()), stat.st_size, stat.st_mtime_ns)])
        decode: Callable[[], _Decoded] = functools.partial(_read_csv, csv_file, progress)
        val_missing = "no PublicTest rows"
    else:
        files = _list_folders(root)
        kind = "fer2013-folders"
        key = cache_key(kind, ((f.relpath, f.size, f.mtime_ns) for f in files))
        decode = functools.partial(_decode_files, root, files, progress)
        val_missing = "no PublicTest_ prefixes or val folder found"

    entry_path = cache_path(cache_dir, kind, key)
    entry = load_entry(entry_path)
    decoded = _Decoded.from_entry(entry) if entry is not None else None
    if decoded is None:
        decoded = decode()
        save_entry(entry_path, decoded.to_entry())

    if decoded.bad_files and not skip_bad:
        raise FerkitError(
            f"{root / decoded.bad_files[0]}: cannot read as an image ({decoded.bad_reasons[0]}); "
            f"{len(decoded.bad_files)} unreadable file(s) in {root}, use skip_bad to leave them out"
        )
    return _make_splits(decoded, str(root), splits, val_fraction, seed, val_missing)


def _find_csv(path: Path) -> Path | None:
    """The CSV to read when `path` is a CSV file or a folder holding fer2013.csv, else None."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FerkitError(f"{path}: not a FER2013 file; expected one of: {'; '.join(LAYOUTS)}")
        return path
    # The CSV is lossless, so it wins over JPEG folders sitting beside it.
    candidate = path / CSV_NAME
    return candidate if candidate.is_file() else None


def _read_csv(path: Path, progress: bool) -> _Decoded:
    """Parse the original FER2013 CSV (emotion,pixels,Usage) into a _Decoded."""
    pixel_count = IMAGE_SIZE * IMAGE_SIZE
    images: list[np.ndarray] = []
    labels: list[int] = []
    split_ids: list[int] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        found = [name.strip() for name in next(reader, [])]
        if any(name not in found for name in CSV_COLUMNS):
            raise FerkitError(
                f"{path}: expected columns {','.join(CSV_COLUMNS)}, found {','.join(found) or 'none'}"
            )
        emotion_col, pixels_col, usage_col = (found.index(name) for name in CSV_COLUMNS)
        rows = tqdm(reader, desc=f"reading {path.name}", unit=" rows", disable=None if progress else True)
        for row in rows:
            if not row:
                continue
            where = f"{path} line {reader.line_num}"
            if len(row) != len(found):
                raise FerkitError(f"{where}: {len(row)} fields, expected {len(found)}")
            try:
                emotion = int(row[emotion_col])
            except ValueError:
                emotion = -1
            if not 0 <= emotion < len(FER_CLASSES):
                raise FerkitError(
                    f"{where}: emotion {row[emotion_col]!r} is not in 0..{len(FER_CLASSES) - 1}"
                )
            split = _USAGE_TO_SPLIT.get(row[usage_col].strip())
            if split is None:
                raise FerkitError(
                    f"{where}: Usage {row[usage_col]!r} is not one of {', '.join(_USAGE_TO_SPLIT)}"
                )
            try:
                pixels = np.fromstring(row[pixels_col], dtype=np.int32, sep=" ")
            except ValueError:
                raise FerkitError(f"{where}: pixels must be space-separated integers") from None
            if len(pixels) != pixel_count:
                raise FerkitError(
                    f"{where}: {len(pixels)} pixel values, expected {pixel_count} ({IMAGE_SIZE}x{IMAGE_SIZE})"
                )
            if pixels.min() < 0 or pixels.max() > 255:
                raise FerkitError(f"{where}: pixel values must be in 0..255")
            images.append(pixels.astype(np.uint8))
            labels.append(emotion)
            split_ids.append(SPLITS.index(split))
    stacked = np.stack(images) if images else np.empty((0, pixel_count), dtype=np.uint8)
    return _Decoded(
        images=torch.from_numpy(stacked).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE),
        labels=torch.tensor(labels, dtype=torch.int64),
        split_ids=torch.tensor(split_ids, dtype=torch.int64),
        bad_files=[], bad_reasons=[], bad_split_ids=[],
    )


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def _subfolders(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir() and not _is_ignored(e.name)), key=lambda e: e.name)


def _class_label(folder: Path) -> int:
    """The FER_CLASSES index a class folder name stands for (case-insensitive, synonyms allowed)."""
    name = folder.name.lower()
    name = _CLASS_SYNONYMS.get(name, name)
    if name not in FER_CLASSES:
        raise FerkitError(
            f"{folder}: unknown class folder {folder.name!r}; valid names: {', '.join(FER_CLASSES)} "
            f"(also {', '.join(_CLASS_SYNONYMS)})"
        )
    return FER_CLASSES.index(name)


def _folder_layout(root: Path) -> list[tuple[Path, str]] | None:
    """The (class folder, split of its folder) pairs of a FER2013-style folder tree, or None."""
    if not root.is_dir():
        return None
    top = _subfolders(root)
    split_folders = [
        (Path(e.path), _SPLIT_FOLDERS[e.name.lower()]) for e in top if e.name.lower() in _SPLIT_FOLDERS
    ]
    if split_folders:
        return [(Path(c.path), split) for folder, split in split_folders for c in _subfolders(folder)]
    if any(_CLASS_SYNONYMS.get(e.name.lower(), e.name.lower()) in FER_CLASSES for e in top):
        return [(Path(e.path), "train") for e in top]
    return None


def _list_folders(root: Path) -> list[_ImageFile]:
    """Every candidate image file of a FER2013-style folder tree, sorted by relative path."""
    layout = _folder_layout(root)
    if layout is None:
        raise FerkitError(f"{root}: not a FER2013 layout; expected one of: {'; '.join(LAYOUTS)}")
    files = []
    for folder, folder_split in layout:
        label = _class_label(folder)
        prefix = folder.relative_to(root).as_posix()
        with os.scandir(folder) as entries:
            for entry in entries:
                if _is_ignored(entry.name) or not entry.is_file():
                    continue
                # The Kaggle file-name prefix carries the official split; the folder only says
                # train or test, and Kaggle's test folder mixes PublicTest and PrivateTest.
                usage, has_prefix, _ = entry.name.partition("_")
                stat = entry.stat()
                files.append(_ImageFile(
                    relpath=f"{prefix}/{entry.name}",
                    label=label,
                    split=_USAGE_TO_SPLIT.get(usage, folder_split) if has_prefix else folder_split,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                ))
    files.sort(key=lambda f: f.relpath)
    return files


def _decode_files(root: Path, files: Sequence[_ImageFile], progress: bool) -> _Decoded:
    """Decode every listed file to grayscale; unreadable ones are recorded, not raised."""
    pixels: np.ndarray | None = None
    first = ""
    kept: list[int] = []
    bad_files, bad_reasons, bad_split_ids = [], [], []
    listed = tqdm(files, desc=f"decoding {root.name}", unit=" img", disable=None if progress else True)
    for i, file in enumerate(listed):
        try:
            with Image.open(root / file.relpath) as image:
                array = np.asarray(image.convert("L"))
        except _DECODE_ERRORS as err:
            bad_files.append(file.relpath)
            bad_reasons.append(f"{type(err).__name__}: {err}")
            bad_split_ids.append(SPLITS.index(file.split))
            continue
        if pixels is None:
            pixels = np.empty((len(files), *array.shape), dtype=np.uint8)
            first = file.relpath
        elif array.shape != pixels.shape[1:]:
            raise FerkitError(
                f"{root / file.relpath}: image is {array.shape[1]}x{array.shape[0]} but {first} is "
                f"{pixels.shape[2]}x{pixels.shape[1]}; all images must have the same size"
            )
        pixels[len(kept)] = array
        kept.append(i)
    if pixels is None:
        pixels = np.empty((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return _Decoded(
        images=torch.from_numpy(pixels[: len(kept)].copy()).unsqueeze(1),
        labels=torch.tensor([files[i].label for i in kept], dtype=torch.int64),
        split_ids=torch.tensor([SPLITS.index(files[i].split) for i in kept], dtype=torch.int64),
        bad_files=bad_files, bad_reasons=bad_reasons, bad_split_ids=bad_split_ids,
    )


def _make_splits(
    decoded: _Decoded, source: str, splits: Iterable[str], val_fraction: float, seed: int, val_missing: str
) -> dict[str, FERDataset]:
    """Cut a decoded source into the requested splits, carving val from train when the source has none."""
    index = {name: torch.nonzero(decoded.split_ids == i).flatten() for i, name in enumerate(SPLITS)}
    notes = dict.fromkeys(SPLITS, "")
    if len(index["val"]) == 0 and val_fraction > 0:
        train = index["train"]
        rest, held_out = stratified_split(decoded.labels[train], val_fraction, seed)
        index["train"], index["val"] = train[rest], train[held_out]
        percent = f"{val_fraction * 100:g}%"
        notes["val"] = f"val: stratified {percent} of train, seed {seed} ({val_missing})"
        notes["train"] = f"train: the rest of train after holding out {percent} as val, seed {seed}"

    datasets = {}
    for name in splits:
        if len(index[name]) == 0:
            found = ", ".join(f"{n} {len(i)}" for n, i in index.items())
            raise FerkitError(f"no images for split {name!r} in {source} (found {found})")
        datasets[name] = FERDataset(
            images=decoded.images[index[name]],
            labels=decoded.labels[index[name]],
            classes=FER_CLASSES,
            split=name,
            source=source,
            note=notes[name],
            skipped=decoded.bad_split_ids.count(SPLITS.index(name)),
        )
    return datasets


def _is_fer2013(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return (path / CSV_NAME).is_file() or _folder_layout(path) is not None


@dataclass(frozen=True)
class _Reader:
    """A data set format: how to recognise its layout and how to read it."""

    name: str
    layouts: tuple[str, ...]
    matches: Callable[[Path], bool]
    load: Callable[..., dict[str, FERDataset]]


# Tried in order; put more specific layouts first when adding readers.
_READERS: tuple[_Reader, ...] = (
    _Reader("FER2013", LAYOUTS, _is_fer2013, load_fer2013),
)


def load_dataset(path: str | Path, **kwargs: Any) -> dict[str, FERDataset]:
    """Read the data set at `path`, whatever its format, into one FERDataset per split.

    Keyword arguments go to the matching reader (e.g. `splits`, `skip_bad`, `cache_dir`).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FerkitError(f"{root}: no such file or folder")
    for reader in _READERS:
        if reader.matches(root):
            return reader.load(root, **kwargs)
    expected = "; ".join(f"{r.name}: {layout}" for r in _READERS for layout in r.layouts)
    raise FerkitError(f"{root}: no known data set layout; expected one of: {expected}")
