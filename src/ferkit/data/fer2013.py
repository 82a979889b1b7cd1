"""Readers for FER2013: the original CSV and the Kaggle image folders."""
from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset
from ferkit.data.files import IMAGE_SUFFIXES, data_root, is_ignored, subfolders
from ferkit.data.names import CLASS_SYNONYMS, SPLIT_FOLDERS, USAGE_TO_SPLIT, class_index, usage_split
from ferkit.data.pipeline import (Decoded, Listed, Listing, ReadOptions, Source, file_key_entry, load_cached,
                                  make_splits, read_listing)
from ferkit.data.readers import register_reader
from ferkit.errors import FerkitError

CSV_NAME = "fer2013.csv"
CSV_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIZE = 48  # the CSV stores 48 x 48 images as 2304 values

LAYOUTS = (
    f"a FER2013 CSV ({CSV_NAME}, columns {','.join(CSV_COLUMNS)}) or a folder holding it",
    "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (Kaggle FER2013)",
    "<root>/<class>/*.jpg",
)


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
    root = data_root(path)
    options = ReadOptions(splits=splits, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    csv_file = _find_csv(root)
    if csv_file is not None:
        decoded = load_cached(cache_dir, "fer2013-csv", [file_key_entry(csv_file)],
                              functools.partial(read_csv, csv_file, progress))
        return make_splits(decoded, Source(root, "no PublicTest rows"), options)
    files, left_out = _list_folders(root)
    source = Source(root, "no PublicTest_ prefixes or val folder found", notes=dict.fromkeys(SPLITS, left_out))
    return read_listing(Listing(root, files, "fer2013-folders"), source, options)


def is_fer2013(path: Path) -> bool:
    """Whether `path` looks like FER2013: a CSV file, a folder holding fer2013.csv, or FER2013 folders."""
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return (path / CSV_NAME).is_file() or _folder_layout(path) is not None


# Many folders pass for FER2013's: CK+48's and labelled photos' class folders for <root>/<class>/, a FER+ folder
# holding fer2013.csv for the CSV. It is tried last, after every specific layout and after photos.
register_reader("fer2013", "FER2013", LAYOUTS, is_fer2013, load_fer2013, catch_all=2,
                description="FER2013: 48x48 grey faces in 7 classes, from the original CSV or the Kaggle class folders")


def _find_csv(path: Path) -> Path | None:
    """The CSV to read when `path` is a CSV file or a folder holding fer2013.csv, else None."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FerkitError(f"{path}: not a FER2013 file; expected one of: {'; '.join(LAYOUTS)}")
        return path
    # The CSV is lossless, so it wins over JPEG folders sitting beside it.
    candidate = path / CSV_NAME
    return candidate if candidate.is_file() else None


def read_csv(path: Path, progress: bool) -> Decoded:
    """Parse the original FER2013 CSV (emotion,pixels,Usage) into a Decoded, one entry per row."""
    try:
        return _parse_csv(path, progress)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FerkitError(f"{path}: not a readable FER2013 CSV ({type(e).__name__}: {e})") from None


class CsvReader(Protocol):
    """What csv.reader returns: rows of fields, and the number of the line the last row ended on."""

    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...


def csv_rows(
    reader: CsvReader, path: Path, width: int, columns: str = "", progress: bool = False
) -> Iterator[tuple[str, list[str]]]:
    """The non-empty rows of a csv.reader over `path`, each after where it is ("<path> line N").

    A row of other than `width` fields raises FerkitError (`columns`, when given, names the expected ones).
    """
    for row in tqdm(reader, desc=f"reading {path.name}", unit=" rows", disable=None if progress else True):
        if not row:
            continue
        where = f"{path} line {reader.line_num}"
        if len(row) != width:
            raise FerkitError(f"{where}: {len(row)} fields, expected {width}" + (f" ({columns})" if columns else ""))
        yield where, row


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
        for where, row in csv_rows(reader, path, len(found), progress=progress):
            try:
                emotion = int(row[emotion_col])
            except ValueError:
                emotion = -1
            if not 0 <= emotion < len(FER_CLASSES):
                raise FerkitError(
                    f"{where}: emotion {row[emotion_col]!r} is not in 0..{len(FER_CLASSES) - 1}"
                )
            split = usage_split(row[usage_col], where)
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
    label = class_index(folder.name, FER_CLASSES)
    if label is None:
        raise FerkitError(
            f"{folder}: unknown class folder {folder.name!r}; valid names: {', '.join(FER_CLASSES)} "
            f"(also {', '.join(CLASS_SYNONYMS)})"
        )
    return label


def _folder_layout(root: Path) -> list[tuple[Path, str]] | None:
    """The (class folder, split of its folder) pairs of a FER2013-style folder tree, or None."""
    if not root.is_dir():
        return None
    top = subfolders(root)
    split_folders = [
        (Path(e.path), SPLIT_FOLDERS[e.name.lower()]) for e in top if e.name.lower() in SPLIT_FOLDERS
    ]
    if split_folders:
        return [(Path(c.path), split) for folder, split in split_folders for c in subfolders(folder)]
    if any(class_index(e.name, FER_CLASSES) is not None for e in top):
        return [(Path(e.path), "train") for e in top]
    return None


def _list_folders(root: Path) -> tuple[list[Listed], str]:
    """Every candidate image file of a FER2013-style folder tree, sorted by relative path (class folders
    read with their subfolders), and a note on the images the layout leaves out ("" when none)."""
    layout = _folder_layout(root)
    if layout is None:
        raise FerkitError(f"{root}: not a FER2013 layout; expected one of: {'; '.join(LAYOUTS)}")
    files = []
    for folder, folder_split in layout:
        label = _class_label(folder)
        for path in _walk(folder):
            # The Kaggle file-name prefix carries the official split; the folder only says
            # train or test, and Kaggle's test folder mixes PublicTest and PrivateTest.
            usage, has_prefix, _ = path.name.partition("_")
            split = USAGE_TO_SPLIT.get(usage, folder_split) if has_prefix else folder_split
            files.append(Listed(path.relative_to(root).as_posix(), label, split))
    files.sort(key=lambda f: f.relpath)
    return files, _left_out_note(root, {folder for folder, _ in layout})


def _walk(folder: Path) -> list[Path]:
    """The files in ``folder`` and below it, tool litter left out."""
    found = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        found += [Path(top) / name for name in sorted(names) if not is_ignored(name)]
    return found


def _left_out_note(root: Path, class_folders: set[Path]) -> str:
    """Which images of the tree lie outside its class folders, and so have no label: counted, by folder."""
    counts: dict[str, int] = {}
    for top, dirs, names in os.walk(root):
        here = Path(top)
        dirs[:] = sorted(d for d in dirs if not is_ignored(d) and here / d not in class_folders)
        images = [n for n in names if not is_ignored(n) and Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if images:
            counts[(here.relative_to(root).as_posix() + "/") if here != root else "./"] = len(images)
    if not counts:
        return ""
    where = ", ".join(f"{n} in {folder}" for folder, n in counts.items())
    return f"left out {sum(counts.values())} images outside class folders (no label): {where}"
