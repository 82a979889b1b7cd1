"""Readers for FER2013: the original CSV and the Kaggle image folders."""
from __future__ import annotations

import csv
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ferkit.data.cache import cache_key, cache_path, load_entry, save_entry
from ferkit.data.common import (
    CLASS_SYNONYMS,
    USAGE_TO_SPLIT,
    Decoded,
    check_request,
    decode_images,
    is_ignored,
    make_splits,
    subfolders,
)
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset
from ferkit.errors import FerkitError

CSV_NAME = "fer2013.csv"
CSV_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIZE = 48  # the CSV stores 48 x 48 images as 2304 values

_SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}

LAYOUTS = (
    f"a FER2013 CSV ({CSV_NAME}, columns {','.join(CSV_COLUMNS)}) or a folder holding it",
    "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (Kaggle FER2013)",
    "<root>/<class>/*.jpg",
)


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
    root = check_request(path, splits, val_fraction)

    csv_file = _find_csv(root)
    if csv_file is not None:
        stat = csv_file.stat()
        kind = "fer2013-csv"
        key = cache_key(kind, [(str(csv_file.resolve()), stat.st_size, stat.st_mtime_ns)])
        decode: Callable[[], Decoded] = functools.partial(_read_csv, csv_file, progress)
        val_missing = "no PublicTest rows"
    else:
        files = _list_folders(root)
        kind = "fer2013-folders"
        key = cache_key(kind, ((f.relpath, f.size, f.mtime_ns) for f in files))
        decode = functools.partial(_decode_files, root, files, progress)
        val_missing = "no PublicTest_ prefixes or val folder found"

    entry_path = cache_path(cache_dir, kind, key)
    entry = load_entry(entry_path)
    decoded = Decoded.from_entry(entry) if entry is not None else None
    if decoded is None:
        decoded = decode()
        save_entry(entry_path, decoded.to_entry())

    if decoded.bad_files and not skip_bad:
        raise FerkitError(
            f"{root / decoded.bad_files[0]}: cannot read as an image ({decoded.bad_reasons[0]}); "
            f"{len(decoded.bad_files)} unreadable file(s) in {root}, use skip_bad to leave them out"
        )
    return make_splits(decoded, str(root), splits, val_fraction, seed, val_missing)


def _find_csv(path: Path) -> Path | None:
    """The CSV to read when `path` is a CSV file or a folder holding fer2013.csv, else None."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FerkitError(f"{path}: not a FER2013 file; expected one of: {'; '.join(LAYOUTS)}")
        return path
    # The CSV is lossless, so it wins over JPEG folders sitting beside it.
    candidate = path / CSV_NAME
    return candidate if candidate.is_file() else None


def _read_csv(path: Path, progress: bool) -> Decoded:
    """Parse the original FER2013 CSV (emotion,pixels,Usage) into a Decoded."""
    try:
        return _parse_csv(path, progress)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FerkitError(f"{path}: not a readable FER2013 CSV ({type(e).__name__}: {e})") from None


def _parse_csv(path: Path, progress: bool) -> Decoded:
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
            split = USAGE_TO_SPLIT.get(row[usage_col].strip())
            if split is None:
                raise FerkitError(
                    f"{where}: Usage {row[usage_col]!r} is not one of {', '.join(USAGE_TO_SPLIT)}"
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
    return Decoded(
        images=torch.from_numpy(stacked).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE),
        labels=torch.tensor(labels, dtype=torch.int64),
        split_ids=torch.tensor(split_ids, dtype=torch.int64),
        bad_files=[], bad_reasons=[], bad_split_ids=[],
    )


def _class_label(folder: Path) -> int:
    """The FER_CLASSES index a class folder name stands for (case-insensitive, synonyms allowed)."""
    name = folder.name.lower()
    name = CLASS_SYNONYMS.get(name, name)
    if name not in FER_CLASSES:
        raise FerkitError(
            f"{folder}: unknown class folder {folder.name!r}; valid names: {', '.join(FER_CLASSES)} "
            f"(also {', '.join(CLASS_SYNONYMS)})"
        )
    return FER_CLASSES.index(name)


def _folder_layout(root: Path) -> list[tuple[Path, str]] | None:
    """The (class folder, split of its folder) pairs of a FER2013-style folder tree, or None."""
    if not root.is_dir():
        return None
    top = subfolders(root)
    split_folders = [
        (Path(e.path), _SPLIT_FOLDERS[e.name.lower()]) for e in top if e.name.lower() in _SPLIT_FOLDERS
    ]
    if split_folders:
        return [(Path(c.path), split) for folder, split in split_folders for c in subfolders(folder)]
    if any(CLASS_SYNONYMS.get(e.name.lower(), e.name.lower()) in FER_CLASSES for e in top):
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
                if is_ignored(entry.name) or not entry.is_file():
                    continue
                # The Kaggle file-name prefix carries the official split; the folder only says
                # train or test, and Kaggle's test folder mixes PublicTest and PrivateTest.
                usage, has_prefix, _ = entry.name.partition("_")
                stat = entry.stat()
                files.append(_ImageFile(
                    relpath=f"{prefix}/{entry.name}",
                    label=label,
                    split=USAGE_TO_SPLIT.get(usage, folder_split) if has_prefix else folder_split,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                ))
    files.sort(key=lambda f: f.relpath)
    return files


def _decode_files(root: Path, files: Sequence[_ImageFile], progress: bool) -> Decoded:
    """Decode every listed file to grayscale; unreadable ones are recorded, not raised."""
    images, kept, bad = decode_images(root, [f.relpath for f in files], progress=progress)
    if not kept:
        images = torch.empty((0, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    return Decoded(
        images=images,
        labels=torch.tensor([files[i].label for i in kept], dtype=torch.int64),
        split_ids=torch.tensor([SPLITS.index(files[i].split) for i in kept], dtype=torch.int64),
        bad_files=[files[i].relpath for i, _ in bad], bad_reasons=[reason for _, reason in bad],
        bad_split_ids=[SPLITS.index(files[i].split) for i, _ in bad],
    )


def is_fer2013(path: Path) -> bool:
    """Whether `path` looks like FER2013: a CSV file, a folder holding fer2013.csv, or FER2013 folders."""
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return (path / CSV_NAME).is_file() or _folder_layout(path) is not None
