"""What every reader shares: file-name rules, class names, decoding, the cache and split assembly."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ferkit.data.cache import cache_key, cache_path, load_entry, save_entry
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.folds import subject_split
from ferkit.errors import FerkitError

FER8_CLASSES: tuple[str, ...] = (*FER_CLASSES, "contempt")
"""FER_CLASSES plus contempt, the eighth class of CK+ and FER+."""

# The FER2013 protocol names: the CSV's Usage column, the Kaggle file-name prefixes, FER+'s Usage.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
CLASS_SYNONYMS = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "happiness": "happy",
    "sadness": "sad", "surprised": "surprise", "normal": "neutral",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# Files and folders that operating systems and tools drop into data folders; never images.
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
# PIL raises SyntaxError for some damaged files (e.g. broken PNG chunks) while decoding.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

Crop = Callable[[Image.Image], Image.Image]
"""A hook that cuts the face out of a decoded image (e.g. a face detector's box)."""


def is_ignored(name: str) -> bool:
    """Whether a file or folder name is tool litter (hidden files, Thumbs.db, __MACOSX)."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def subfolders(path: Path) -> list[os.DirEntry[str]]:
    """The non-ignored subfolders of `path`, sorted by name."""
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir() and not is_ignored(e.name)), key=lambda e: e.name)


def image_names(folder: Path) -> list[str]:
    """The names of the image files in `folder` (by suffix, tool litter left out), sorted."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name for e in entries
            if not is_ignored(e.name) and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
        )


def class_index(name: str, classes: Sequence[str]) -> int | None:
    """The index in `classes` of a class name as data sets spell it (any case, synonyms allowed), or None."""
    name = name.lower()
    name = CLASS_SYNONYMS.get(name, name)
    return classes.index(name) if name in classes else None


def data_root(path: str | Path) -> Path:
    """The data path to read, after checking it is given, exists and, when a folder, holds files."""
    if isinstance(path, str) and not path.strip():
        # Path("") is the current folder, which must never be read as a data set by accident.
        raise FerkitError("the data path is empty; give the folder or file of the data set")
    root = Path(path).expanduser()
    if not root.exists():
        raise FerkitError(f"{root}: no such file or folder")
    if root.is_dir() and not _holds_files(root):
        raise FerkitError(f"{root}: empty folder (no files in it or below it); give the folder holding the data set")
    return root


def _holds_files(folder: Path) -> bool:
    """Whether any file that is not tool litter lies in `folder` or below it."""
    for _, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_ignored(d)]
        if any(not is_ignored(name) for name in names):
            return True
    return False


def check_request(path: str | Path, splits: Iterable[str], val_fraction: float) -> Path:
    """The path to read, after checking it (:func:`data_root`) and the requested splits and val_fraction."""
    root = data_root(path)
    unknown = [name for name in splits if name not in SPLITS]
    if unknown:
        raise FerkitError(f"unknown split {unknown[0]!r}; valid splits: {', '.join(SPLITS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise FerkitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return root


@dataclass
class Decoded:
    """A whole source decoded: every readable image, its label and the split its source gave it."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    split_ids: torch.Tensor  # int64, N, index into SPLITS
    bad_files: list[str]  # unreadable files, with the reason and split of each beside
    bad_reasons: list[str]
    bad_split_ids: list[int]
    groups: torch.Tensor | None = None  # int64, N, index into group_names
    group_names: list[str] = field(default_factory=list)
    soft_labels: torch.Tensor | None = None  # float32, N x classes

    def to_entry(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Decoded | None:
        # Optional fields may be absent from entries written before they existed.
        try:
            return cls(**{name: entry[name] for name in cls.__dataclass_fields__ if name in entry})
        except TypeError:
            return None


@dataclass(frozen=True)
class Listed:
    """One image file a reader found, with what the layout says about it."""

    relpath: str  # relative to the reader's root, '/'-separated
    label: int
    split: str
    group: int = -1  # index into the reader's group names; -1: the source has no groups
    soft: tuple[float, ...] = ()  # target distribution over the classes; empty: none

    def key_line(self) -> str:
        """Everything the listing says about the file, so the cache key changes when labels do."""
        return "\t".join((self.relpath, str(self.label), self.split, str(self.group), repr(self.soft)))


def listing_key_entries(root: Path, files: Sequence[Listed]) -> list[tuple[str, int, int]]:
    """Cache-key entries for listed files: what the listing says, with each file's size and mtime."""
    entries = []
    for file in files:
        try:
            stat = (root / file.relpath).stat()
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            # A missing file is decoded as unreadable; its key must change once it appears.
            size, mtime_ns = -1, -1
        entries.append((file.key_line(), size, mtime_ns))
    return entries


def load_cached(
    cache_dir: str | Path | None, kind: str, entries: Iterable[tuple[str, int, int]], decode: Callable[[], Decoded]
) -> Decoded:
    """The Decoded stored for these key entries, or `decode()` stored for next time."""
    entry_path = cache_path(cache_dir, kind, cache_key(kind, entries))
    entry = load_entry(entry_path)
    decoded = Decoded.from_entry(entry) if entry is not None else None
    if decoded is None:
        decoded = decode()
        save_entry(entry_path, decoded.to_entry())
    return decoded


def decode_images(
    root: Path,
    relpaths: Sequence[str],
    *,
    rgb: bool = False,
    size: int | None = None,
    crop: Crop | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """Decode files to grayscale (or RGB), optionally cropped and resized to `size` x `size`.

    Returns the uint8 N x C x H x W images of the readable files, their positions in `relpaths`,
    and (position, reason) of each unreadable one. Without `size`, all images must share one size:
    otherwise FerkitError names an image of a size fewer of them have.
    """
    pixels: np.ndarray | None = None
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    odd: list[tuple[int, tuple[int, ...]]] = []  # (position, shape) of readable images unlike the first
    listed = tqdm(relpaths, desc=f"decoding {root.name}", unit=" img", disable=None if progress else True)
    for i, relpath in enumerate(listed):
        try:
            mode = "RGB" if rgb else "L"
            with Image.open(root / relpath) as opened:
                image = opened.convert(mode)
            if crop is not None:
                image = crop(image).convert(mode)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image)
        except DECODE_ERRORS as err:
            bad.append((i, f"{type(err).__name__}: {err}"))
            continue
        if pixels is None:
            pixels = np.empty((len(relpaths), *array.shape), dtype=np.uint8)
        elif array.shape != pixels.shape[1:]:
            odd.append((i, array.shape))
            continue
        pixels[len(kept)] = array
        kept.append(i)
    if pixels is not None and odd:
        raise _mixed_sizes(root, relpaths, [(i, pixels.shape[1:]) for i in kept] + odd)
    channels = 3 if rgb else 1
    if pixels is None:
        side = size or 48
        return torch.empty((0, channels, side, side), dtype=torch.uint8), kept, bad
    images = torch.from_numpy(pixels[: len(kept)].copy())
    return (images.permute(0, 3, 1, 2).contiguous() if rgb else images.unsqueeze(1)), kept, bad


def _mixed_sizes(root: Path, relpaths: Sequence[str], shapes: list[tuple[int, tuple[int, ...]]]) -> FerkitError:
    """The error for images of several sizes: it names one of a rarer size beside one of the commonest."""
    counts = Counter(shape for _, shape in shapes)
    common = counts.most_common(1)[0][0]
    example, shape = next((i, s) for i, s in shapes if s != common)
    reference = next(i for i, s in shapes if s == common)
    return FerkitError(
        f"{root / relpaths[example]}: image is {shape[1]}x{shape[0]} but {relpaths[reference]} is "
        f"{common[1]}x{common[0]}, like {counts[common]} of the {len(shapes)} images; all images must have "
        f"the same size: resize or remove the {len(shapes) - counts[common]} other one(s)"
    )


def decode_listing(
    root: Path,
    files: Sequence[Listed],
    group_names: Sequence[str] = (),
    *,
    rgb: bool = False,
    size: int | None = None,
    crop: Crop | None = None,
    progress: bool = True,
) -> Decoded:
    """Decode listed files into a Decoded; unreadable ones are recorded, not raised."""
    images, kept, bad = decode_images(root, [f.relpath for f in files], rgb=rgb, size=size, crop=crop,
                                      progress=progress)
    chosen = [files[i] for i in kept]
    return Decoded(
        images=images,
        labels=torch.tensor([f.label for f in chosen], dtype=torch.int64),
        split_ids=torch.tensor([SPLITS.index(f.split) for f in chosen], dtype=torch.int64),
        bad_files=[files[i].relpath for i, _ in bad],
        bad_reasons=[reason for _, reason in bad],
        bad_split_ids=[SPLITS.index(files[i].split) for i, _ in bad],
        groups=torch.tensor([f.group for f in chosen], dtype=torch.int64) if group_names else None,
        group_names=list(group_names),
        soft_labels=(
            torch.tensor([f.soft for f in chosen], dtype=torch.float32).view(len(chosen), -1)
            if any(f.soft for f in files) else None
        ),
    )


def raise_unreadable(decoded: Decoded, root: Path, skip_bad: bool) -> None:
    """Raise FerkitError naming the first unreadable file, unless there is none or `skip_bad`."""
    if decoded.bad_files and not skip_bad:
        raise FerkitError(
            f"{root / decoded.bad_files[0]}: cannot read as an image ({decoded.bad_reasons[0]}); "
            f"{len(decoded.bad_files)} unreadable file(s) in {root}, use skip_bad to leave them out"
        )


def make_splits(
    decoded: Decoded,
    source: str,
    splits: Iterable[str],
    val_fraction: float,
    seed: int,
    val_missing: str,
    classes: Sequence[str] = FER_CLASSES,
    notes: Mapping[str, str] | None = None,
) -> dict[str, FERDataset]:
    """Cut a decoded source into the requested splits, carving val from train when the source has none.

    Val is a stratified share of train, or whole subjects when the source has groups, so no
    person is in both. `notes` are per-split remarks the reader wants kept with the data.
    """
    index = {name: torch.nonzero(decoded.split_ids == i).flatten() for i, name in enumerate(SPLITS)}
    given = dict(notes or {})
    carved = dict.fromkeys(SPLITS, "")
    if len(index["val"]) == 0 and val_fraction > 0:
        train = index["train"]
        percent = f"{val_fraction * 100:g}%"
        if decoded.groups is None:
            rest, held_out = stratified_split(decoded.labels[train], val_fraction, seed)
            carved["val"] = f"val: stratified {percent} of train, seed {seed} ({val_missing})"
        else:
            rest, held_out = subject_split(decoded.groups[train], val_fraction, seed)
            carved["val"] = f"val: whole subjects holding about {percent} of train, seed {seed} ({val_missing})"
        index["train"], index["val"] = train[rest], train[held_out]
        carved["train"] = f"train: the rest of train after holding out {percent} as val, seed {seed}"

    datasets = {}
    for name in splits:
        picked = index[name]
        if len(picked) == 0:
            found = ", ".join(f"{n} {len(i)}" for n, i in index.items())
            raise FerkitError(f"no images for split {name!r} in {source} (found {found})")
        datasets[name] = FERDataset(
            images=decoded.images[picked],
            labels=decoded.labels[picked],
            classes=tuple(classes),
            split=name,
            source=source,
            note="; ".join(n for n in (given.get(name, ""), carved[name]) if n),
            skipped=decoded.bad_split_ids.count(SPLITS.index(name)),
            groups=None if decoded.groups is None else decoded.groups[picked],
            group_names=tuple(decoded.group_names),
            soft_labels=None if decoded.soft_labels is None else decoded.soft_labels[picked],
        )
    return datasets

