"""Reader for a folder of labelled photos: one folder per class, faces found and cropped on the way in."""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ferkit.data.dataset import ALL, FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.decode import DECODE_ERRORS
from ferkit.data.files import IMAGE_SUFFIXES, data_root, is_ignored, subfolders
from ferkit.data.names import CLASS_SYNONYMS, FER8_CLASSES, SPLIT_FOLDERS, USAGE_TO_SPLIT, class_index
from ferkit.data.pipeline import (Decoded, Listed, Listing, ReadOptions, Source, decode_cached, make_splits,
                                  raise_unreadable)
from ferkit.data.readers import register_reader
from ferkit.detect import crop_face, detect_faces
from ferkit.detect.image import open_image
from ferkit.errors import FerkitError

LAYOUTS = (
    "<root>/<class>/*.jpg or <root>/{train,val,test}/<class>/*.jpg, photos of any size "
    "(faces are detected and cropped)",
)
CROP_MAX_SIDE = 48
"""Square images up to this side are taken for FER2013-style face crops, not photos."""
SAMPLES_PER_FOLDER = 16  # images per class folder whose size is looked at to tell photos from crops
NO_FACE = "no face found"


class _NoFace(ValueError):
    """Raised by the crop hook for a photo without a detectable face; decoding records it as a reject."""


@dataclass
class PhotoDataset(FERDataset):
    """A FERDataset read from photos, with the photos of its split that were left out.

    `rejected` lists each left-out file as "path: no face found" or "path: unreadable (reason)".
    """

    rejected: tuple[str, ...] = ()


def load_photos(
    path: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    detect: bool = True,
    size: int = 48,
    channels: int = 1,
    margin: float = 0.1,
    min_face: int = 24,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, PhotoDataset]:
    """Read a folder of labelled photos into face crops, one PhotoDataset per requested split.

    Class folder names may be any case and common synonyms (anger, happiness, sadness, surprised,
    normal, ...); classes are FER_CLASSES, plus contempt last when a contempt folder exists. In
    each photo the largest face at least `min_face` pixels wide is found, cropped square with
    `margin` of its side added on every side, levelled by the eyes and resized to `size` x `size`
    (`channels` 1 grey, 3 RGB). Photos without a face are left out and listed in `rejected`, and
    the split's `note` counts them. With `detect=False` the photos are taken as face crops already
    and only resized. Photos in train/val/test folders keep their split; without a test folder,
    test is a stratified, seeded `test_fraction` of train, and without a val folder val is a
    `val_fraction` of the rest. Unreadable files raise FerkitError unless
    `skip_bad`. Crops are cached in `cache_dir`, keyed by the files and every crop setting.
    """
    root = data_root(path)
    options = ReadOptions(splits=splits, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    if not 0.0 <= test_fraction < 1.0:
        raise FerkitError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if channels not in (1, 3):
        raise FerkitError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if size < 1 or min_face < 1:
        raise FerkitError(f"size and min_face must be at least 1, got size={size}, min_face={min_face}")
    found = _layout(root)
    if found is None:
        raise FerkitError(f"{root}: not a photo folder layout; expected {LAYOUTS[0]}")
    layout, strays = found
    if strays:
        raise FerkitError(
            f"{strays[0]}: folder beside the split folders is not one of {', '.join(sorted(SPLIT_FOLDERS))}"
        )
    classes = FER8_CLASSES if any(class_index(f.name, ("contempt",)) is not None for f, _ in layout) else FER_CLASSES
    files = _list_photos(root, layout, classes)
    if not files:
        raise FerkitError(f"{root}: no image files in the class folders ({', '.join(f.name for f, _ in layout)})")
    if detect:
        crop = functools.partial(_face_crop, size=size, channels=channels, margin=margin, min_face=min_face)
        kind = f"photos-face{size}-c{channels}-m{margin:g}-f{min_face}"
    else:
        crop, kind = _upright, f"photos-resize{size}-c{channels}"
    decoded = decode_cached(Listing(root, files, kind, rgb=channels == 3, size=size, crop=crop), options)
    # Faceless photos are decoded as unreadable (the crop hook raises); they are set aside before
    # unreadable files raise, since leaving them out is what the reader is meant to do.
    decoded, no_face = _set_aside_faceless(decoded)
    raise_unreadable(decoded, root, skip_bad)
    if len(decoded.labels) == 0 and no_face:
        raise FerkitError(f"{root}: {NO_FACE} in any of its {len(files)} photos; for face crops use detect=False")
    notes = {}
    if test_fraction > 0 and ALL not in splits and not bool((decoded.split_ids == SPLITS.index("test")).any()):
        decoded = _carve_test(decoded, test_fraction, seed)
        percent = f"{test_fraction * 100:g}%"
        notes["test"] = f"test: stratified {percent} of the train photos, seed {seed} (no test folder)"
    datasets = make_splits(decoded, Source(root, "no val folder", classes, notes), options)
    return {name: _with_rejected(data, root, decoded, no_face) for name, data in datasets.items()}


def is_photos(path: Path) -> bool:
    """Whether `path` holds class folders (optionally under train/val/test) of photos rather than face crops.

    The whole tree decides, never one odd file: a tree whose files mostly carry FER2013's Kaggle
    prefixes (Training_, PublicTest_, PrivateTest_) is FER2013's; otherwise it holds photos when
    most images, sampled evenly from every class folder, are not face crops (square, at most 48
    pixels wide). Trees of crops are left to the FER2013 reader, which reports images of other sizes.
    """
    found = _layout(path)
    if found is None:
        return False
    listings = [_image_files(folder) for folder, _ in found[0]]
    total = sum(len(files) for files in listings)
    prefixed = sum(file.name.partition("_")[0] in USAGE_TO_SPLIT for files in listings for file in files)
    if prefixed * 2 > total:
        return False
    crops = others = 0
    for files in listings:
        for file in files[:: max(1, len(files) // SAMPLES_PER_FOLDER)][:SAMPLES_PER_FOLDER]:
            try:
                with open_image(file) as image:
                    width, height = image.size
            except DECODE_ERRORS:
                continue
            if width == height <= CROP_MAX_SIDE:
                crops += 1
            else:
                others += 1
    return others > crops


# Photos share FER2013's <root>/<class>/ layout; is_photos looks at the whole tree (Kaggle file-name
# prefixes, most images' sizes), so it goes before FER2013's catch-all and folders of crops stay FER2013's.
register_reader("photos", "labelled photos", LAYOUTS, is_photos, load_photos, catch_all=1,
                description="your own photos in one folder per class, of any size: faces found, cropped and levelled")


def _layout(root: Path) -> tuple[list[tuple[Path, str]], list[str]] | None:
    """The (class folder, split) pairs under `root` and any stray folders beside split folders;
    None when `root` has neither split folders nor a class folder."""
    if not root.is_dir():
        return None
    top = subfolders(root)
    if any(e.name.lower() in SPLIT_FOLDERS for e in top):
        layout, strays = [], []
        for entry in top:
            split = SPLIT_FOLDERS.get(entry.name.lower())
            if split is None:
                strays.append(entry.path)
            else:
                layout.extend((Path(c.path), split) for c in subfolders(Path(entry.path)))
        return layout, strays
    if any(class_index(e.name, FER8_CLASSES) is not None for e in top):
        return [(Path(e.path), "train") for e in top], []
    return None


def _list_photos(root: Path, layout: list[tuple[Path, str]], classes: Sequence[str]) -> list[Listed]:
    """Every image file under the class folders (subfolders included), sorted by relative path."""
    files = []
    for folder, split in layout:
        label = class_index(folder.name, classes)
        if label is None:
            raise FerkitError(
                f"{folder}: unknown class folder {folder.name!r}; valid names: {', '.join(FER8_CLASSES)} "
                f"(also {', '.join(CLASS_SYNONYMS)})"
            )
        files.extend(Listed(file.relative_to(root).as_posix(), label, split) for file in _image_files(folder))
    return sorted(files, key=lambda f: f.relpath)


def _image_files(folder: Path) -> list[Path]:
    """The image files under `folder` and its subfolders (tool litter left out), sorted."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        found.extend(
            Path(parent) / name for name in sorted(names)
            if not is_ignored(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
    return found


def _upright(image: Image.Image) -> Image.Image:
    """The image turned upright by its EXIF orientation, as cameras record it."""
    return ImageOps.exif_transpose(image)


def _face_crop(image: Image.Image, *, size: int, channels: int, margin: float, min_face: int) -> Image.Image:
    """The largest face of a photo, cropped as `ferkit predict` crops faces; _NoFace when there is none."""
    array = np.asarray(_upright(image))
    faces = detect_faces(array, min_size=min_face)
    if not faces:
        raise _NoFace(NO_FACE)
    return Image.fromarray(crop_face(array, faces[0], size, margin, align=True, channels=channels))


def _set_aside_faceless(decoded: Decoded) -> tuple[Decoded, dict[str, int]]:
    """The Decoded with only unreadable files as bad ones, and the faceless files with their split ids."""
    marker = f"{_NoFace.__name__}: "
    faceless = {file: split for file, reason, split in
                zip(decoded.bad_files, decoded.bad_reasons, decoded.bad_split_ids) if reason.startswith(marker)}
    keep = [i for i, file in enumerate(decoded.bad_files) if file not in faceless]
    return dataclasses.replace(
        decoded,
        bad_files=[decoded.bad_files[i] for i in keep],
        bad_reasons=[decoded.bad_reasons[i] for i in keep],
        bad_split_ids=[decoded.bad_split_ids[i] for i in keep],
    ), faceless


def _carve_test(decoded: Decoded, fraction: float, seed: int) -> Decoded:
    """The Decoded with a stratified, seeded `fraction` of its train images moved to test."""
    train = torch.nonzero(decoded.split_ids == SPLITS.index("train")).flatten()
    _, held_out = stratified_split(decoded.labels[train], fraction, seed)
    split_ids = decoded.split_ids.clone()
    split_ids[train[held_out]] = SPLITS.index("test")
    return dataclasses.replace(decoded, split_ids=split_ids)


def _with_rejected(data: FERDataset, root: Path, decoded: Decoded, no_face: dict[str, int]) -> PhotoDataset:
    """`data` as a PhotoDataset listing the split's faceless and skipped photos, counted in its note."""
    def mine(split: int) -> bool:  # of this split (every split's, for "all")
        return data.split == ALL or split == SPLITS.index(data.split)

    rejected = [f"{root / file}: {NO_FACE}" for file, split in no_face.items() if mine(split)]
    faceless = len(rejected)
    rejected += [f"{root / file}: unreadable ({reason})" for file, reason, split in
                 zip(decoded.bad_files, decoded.bad_reasons, decoded.bad_split_ids) if mine(split)]
    note = data.note
    if faceless:
        note = "; ".join(n for n in (note, f"{data.split}: {faceless} photo(s) left out, {NO_FACE} "
                                           "(listed in .rejected)") if n)
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(FERDataset)}
    return PhotoDataset(**{**fields, "note": note}, rejected=tuple(sorted(rejected)))
