"""Readers for CK+ (extended Cohn-Kanade): the original sequences with emotion files, and CK+48 folders."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from ferkit.data.dataset import FER_CLASSES, FERDataset
from ferkit.data.decode import Crop
from ferkit.data.files import data_root, image_names, subfolders
from ferkit.data.names import FER8_CLASSES, class_index
from ferkit.data.pipeline import Listed, Listing, ReadOptions, Source, read_listing
from ferkit.data.readers import register_reader
from ferkit.errors import FerkitError

IMAGES_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"
EMOTION_SUFFIX = "_emotion.txt"
CODES = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
"""The emotion a CK+ emotion file's number stands for, by number."""
CK48_FOLDERS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

LAYOUTS = (
    f"<root>/{IMAGES_DIR}/S005/001/S005_001_00000011.png with "
    f"<root>/{EMOTION_DIR}/S005/001/S005_001_00000011{EMOTION_SUFFIX} (CK+)",
)
LAYOUTS_48 = (f"<root>/{{{','.join(CK48_FOLDERS)}}}/S005_001_00000011.png (CK+48)",)

# CK+ file names start with the subject id: S005_001_00000011.png is subject S005.
_SUBJECT = re.compile(r"(S\d+)_\d+_")
_NO_SPLIT = "CK+ has no official split"


def ckplus_classes(contempt: bool) -> tuple[str, ...]:
    """The class names CK+ readers use: FER_CLASSES, plus contempt last when it is kept."""
    return FER8_CLASSES if contempt else FER_CLASSES


def load_ckplus(
    path: str | Path,
    splits: Sequence[str] | None = None,
    *,
    last_n: int = 3,
    first_as_neutral: bool = False,
    contempt: bool = False,
    size: int = 48,
    crop: Crop | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Read CK+ from its original sequence folders, with each image's subject kept in `groups`.

    Only sequences with an emotion file are used: their last `last_n` frames get its emotion,
    and with `first_as_neutral` their first frame is also taken as neutral. Contempt sequences
    are left out unless `contempt` (8 classes, contempt last). Frames become grayscale,
    `crop` (e.g. a face detector) is applied when given, and the result is resized to
    `size` x `size`; without `crop` the whole 640x490 frame is squeezed to a square.
    CK+ has no official split: everything is train, unless `val_fraction` > 0 holds out
    whole subjects as val (`splits=None` returns what there is). For cross-validation, fold
    train by subject with `ferkit.data.folds.subject_folds`. Decoded images are cached in
    `cache_dir`, except with `crop`, whose effect a cache key cannot see.
    """
    root = data_root(path)
    options = ReadOptions(splits=splits or (), val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    if not is_ckplus(root):
        raise FerkitError(f"{root}: not a CK+ layout; expected {LAYOUTS[0]}")
    if last_n < 1:
        raise FerkitError(f"last_n must be at least 1, got {last_n}")
    options = _with_splits(root, options, splits)
    classes = ckplus_classes(contempt)
    files, subjects = _list_sequences(root, classes, last_n, first_as_neutral)
    # A crop hook's effect is invisible to a cache key, so cropped frames are decoded every time.
    listing = Listing(root, files, None if crop is not None else f"ckplus-{size}", subjects, size=size, crop=crop)
    return read_listing(listing, Source(root, _NO_SPLIT, classes), options)


def is_ckplus(path: Path) -> bool:
    """Whether `path` holds the original CK+ folders (cohn-kanade-images/ and Emotion/)."""
    return (path / IMAGES_DIR).is_dir() and (path / EMOTION_DIR).is_dir()


register_reader("ckplus", "CK+", LAYOUTS, is_ckplus, load_ckplus,
                description="CK+ (extended Cohn-Kanade): posed sequences, their last frames labelled, with subject ids")


def load_ckplus48(
    path: str | Path,
    splits: Sequence[str] | None = None,
    *,
    contempt: bool = False,
    size: int = 48,
    val_fraction: float = 0.0,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Read the CK+48 class folders, with each image's subject (its file-name prefix) kept in `groups`.

    Classes, contempt and splits work as in `load_ckplus`; images are grayscale, resized to
    `size` x `size` if they are not already.
    """
    root = data_root(path)
    options = ReadOptions(splits=splits or (), val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    if not is_ckplus48(root):
        raise FerkitError(f"{root}: not a CK+48 layout; expected {LAYOUTS_48[0]}")
    options = _with_splits(root, options, splits)
    classes = ckplus_classes(contempt)
    files, subjects = _list_ck48(root, classes)
    listing = Listing(root, files, f"ckplus48-{size}", subjects, size=size)
    return read_listing(listing, Source(root, _NO_SPLIT, classes), options)


def is_ckplus48(path: Path) -> bool:
    """Whether `path` holds class folders (CK+48 names) whose image files start with a subject id."""
    if not path.is_dir():
        return False
    for folder in subfolders(path):
        if class_index(folder.name, FER8_CLASSES) is not None:
            names = image_names(Path(folder.path))
            if names:
                return _SUBJECT.match(names[0]) is not None
    return False


register_reader("ckplus48", "CK+48", LAYOUTS_48, is_ckplus48, load_ckplus48,
                description="CK+48: CK+ frames as 48x48 crops in class folders, with subject ids")


def _with_splits(root: Path, options: ReadOptions, splits: Sequence[str] | None) -> ReadOptions:
    """The options with the splits to return (None: what there is): train, plus val when `val_fraction`
    holds subjects out."""
    available = ("train", "val") if options.val_fraction > 0 else ("train",)
    if splits is None:
        return dataclasses.replace(options, splits=available)
    missing = [name for name in splits if name not in available]
    if missing:
        raise FerkitError(
            f"{root}: {_NO_SPLIT}, so there is no {missing[0]!r} split; it gives {' and '.join(available)}"
            " (val only with val_fraction > 0); fold by subject with ferkit.data.folds.subject_folds"
        )
    return options


def _read_emotion(path: Path) -> str:
    """The emotion name a CK+ emotion file holds (one number, 0..7)."""
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as err:
        raise FerkitError(f"{path}: cannot read the emotion file ({err})") from None
    if len(fields) != 1:
        raise FerkitError(f"{path}: expected one number 0..{len(CODES) - 1}, found {len(fields)} values")
    try:
        value = float(fields[0])
    except ValueError:
        raise FerkitError(f"{path}: expected one number 0..{len(CODES) - 1}, found {fields[0]!r}") from None
    if value not in range(len(CODES)):
        known = ", ".join(f"{i} {name}" for i, name in enumerate(CODES))
        raise FerkitError(f"{path}: emotion {fields[0]} is not a CK+ code ({known})")
    return CODES[int(value)]


def _list_sequences(
    root: Path, classes: Sequence[str], last_n: int, first_as_neutral: bool
) -> tuple[list[Listed], list[str]]:
    """The frames to read from every labelled sequence, and the sorted subject names they index."""
    chosen: list[tuple[str, str, int]] = []  # (relpath, subject, label)
    for subject in subfolders(root / EMOTION_DIR):
        for sequence in subfolders(Path(subject.path)):
            emotion_files = sorted(p for p in Path(sequence.path).iterdir() if p.name.endswith(EMOTION_SUFFIX))
            if not emotion_files:
                continue  # CK+ labels only some sequences; the rest have empty Emotion folders
            if len(emotion_files) > 1:
                raise FerkitError(
                    f"{sequence.path}: {len(emotion_files)} emotion files, expected one per sequence"
                )
            label = class_index(_read_emotion(emotion_files[0]), classes)
            if label is None:
                continue  # contempt when it is not kept
            frames_dir = root / IMAGES_DIR / subject.name / sequence.name
            frames = image_names(frames_dir) if frames_dir.is_dir() else []
            if not frames:
                raise FerkitError(
                    f"{frames_dir}: no images for the sequence labelled by {emotion_files[0].name}"
                )
            prefix = f"{IMAGES_DIR}/{subject.name}/{sequence.name}"
            # A sequence no longer than last_n has its first frame among the labelled ones already.
            if first_as_neutral and len(frames) > last_n:
                chosen.append((f"{prefix}/{frames[0]}", subject.name, classes.index("neutral")))
            chosen.extend((f"{prefix}/{frame}", subject.name, label) for frame in frames[-last_n:])
    return _with_groups(chosen)


def _list_ck48(root: Path, classes: Sequence[str]) -> tuple[list[Listed], list[str]]:
    """Every image of the CK+48 class folders that `classes` keeps, and the sorted subject names."""
    chosen: list[tuple[str, str, int]] = []
    for folder in subfolders(root):
        if class_index(folder.name, FER8_CLASSES) is None:
            raise FerkitError(
                f"{folder.path}: unknown class folder {folder.name!r}; CK+48 has {', '.join(CK48_FOLDERS)}"
            )
        label = class_index(folder.name, classes)
        if label is None:
            continue  # contempt when it is not kept
        for name in image_names(Path(folder.path)):
            match = _SUBJECT.match(name)
            if match is None:
                raise FerkitError(
                    f"{Path(folder.path) / name}: file name does not start with a CK+ subject id like S005_001_"
                )
            chosen.append((f"{folder.name}/{name}", match.group(1), label))
    return _with_groups(chosen)


def _with_groups(chosen: list[tuple[str, str, int]]) -> tuple[list[Listed], list[str]]:
    """Listed files with subject indices into the sorted subject names, and those names."""
    subjects = sorted({subject for _, subject, _ in chosen})
    group = {name: i for i, name in enumerate(subjects)}
    files = [Listed(relpath, label, "train", group[subject]) for relpath, subject, label in chosen]
    return files, subjects

