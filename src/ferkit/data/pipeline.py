"""The pipeline every reader runs: check the request, decode listed files once through the cache,
report unreadable files, and cut the decoded source into splits.

A reader states only what is its own: the files it found with their labels, groups and decode settings
(:class:`Listing`), and what it says of its source (:class:`Source`: classes, notes, why val is carved).
:func:`read_listing` does the rest under the :class:`ReadOptions` every reader takes; readers of other
sources (a CSV) call the steps that apply: :func:`load_cached`, :func:`make_splits`."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ferkit.data.cache import cache_key, cache_path, load_entry, save_entry
from ferkit.data.dataset import ALL, FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.decode import Crop, decode_images
from ferkit.data.folds import subject_split
from ferkit.errors import FerkitError


@dataclass(frozen=True, kw_only=True)
class ReadOptions:
    """The options every reader takes, whatever its format; checked when made.

    `splits` are the splits asked for, `val_fraction` and `seed` carve val from train when the source
    has no val, `skip_bad` leaves unreadable files out instead of raising, `cache_dir` holds decoded
    images (None: the default cache), `progress` shows progress bars.
    """

    splits: Sequence[str]
    val_fraction: float
    seed: int
    skip_bad: bool
    cache_dir: str | Path | None
    progress: bool

    def __post_init__(self) -> None:
        unknown = [name for name in self.splits if name not in (*SPLITS, ALL)]
        if unknown:
            raise FerkitError(f"unknown split {unknown[0]!r}; valid splits: {', '.join(SPLITS)} or {ALL}")
        if ALL in self.splits and len(self.splits) > 1:
            raise FerkitError(f"split {ALL!r} holds every image: ask for it alone, not beside {', '.join(SPLITS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise FerkitError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


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
        """The fields as a dict, as the cache stores them."""
        return dict(vars(self))

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Decoded | None:
        """The Decoded a cache entry holds, or None when its fields do not fit."""
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


@dataclass(frozen=True)
class Listing:
    """What a reader found to decode: image files under one folder, and how to decode them.

    `kind` names the reader and every decode setting the files' key cannot see (it starts the cache
    file's name); None decodes every time, for a `crop` hook whose effect no key can see.
    """

    root: Path
    files: Sequence[Listed]
    kind: str | None
    group_names: Sequence[str] = ()
    rgb: bool = False
    size: int | None = None
    crop: Crop | None = None



@dataclass(frozen=True)
class Source:
    """What a reader says of the data set it read, for the datasets it cuts from it."""

    path: str | Path  # as the user gave it: each dataset's `source`
    val_missing: str  # why val is carved from train, for its note: the source has no val of its own
    classes: Sequence[str] = FER_CLASSES
    notes: Mapping[str, str] = field(default_factory=dict)  # per-split remarks kept with the data

def file_key_entry(path: Path) -> tuple[str, int, int]:
    """The cache-key entry of one source file read whole (a CSV): its resolved path, size and mtime."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


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


def decode_listing(listing: Listing, progress: bool = True) -> Decoded:
    """Decode listed files into a Decoded; unreadable ones are recorded, not raised."""
    files = listing.files
    images, kept, bad = decode_images(listing.root, [f.relpath for f in files], rgb=listing.rgb, size=listing.size,
                                      crop=listing.crop, progress=progress)
    chosen = [files[i] for i in kept]
    return Decoded(
        images=images,
        labels=torch.tensor([f.label for f in chosen], dtype=torch.int64),
        split_ids=torch.tensor([SPLITS.index(f.split) for f in chosen], dtype=torch.int64),
        bad_files=[files[i].relpath for i, _ in bad],
        bad_reasons=[reason for _, reason in bad],
        bad_split_ids=[SPLITS.index(files[i].split) for i, _ in bad],
        groups=torch.tensor([f.group for f in chosen], dtype=torch.int64) if listing.group_names else None,
        group_names=list(listing.group_names),
        soft_labels=(
            torch.tensor([f.soft for f in chosen], dtype=torch.float32).view(len(chosen), -1)
            if any(f.soft for f in files) else None
        ),
    )


def decode_cached(listing: Listing, options: ReadOptions) -> Decoded:
    """The listed files decoded, or read back from the cache where an earlier load stored them."""
    decode = functools.partial(decode_listing, listing, options.progress)
    if listing.kind is None:
        return decode()
    return load_cached(options.cache_dir, listing.kind, listing_key_entries(listing.root, listing.files), decode)


def raise_unreadable(decoded: Decoded, root: Path, skip_bad: bool) -> None:
    """Raise FerkitError naming the first unreadable file, unless there is none or `skip_bad`."""
    if decoded.bad_files and not skip_bad:
        raise FerkitError(
            f"{root / decoded.bad_files[0]}: cannot read as an image ({decoded.bad_reasons[0]}); "
            f"{len(decoded.bad_files)} unreadable file(s) in {root}, use skip_bad to leave them out"
        )


def make_splits(decoded: Decoded, source: Source, options: ReadOptions) -> dict[str, FERDataset]:
    """Cut a decoded source into the requested splits, carving val from train when the source has none.

    Val is a stratified share of train, or whole subjects when the source has groups, so no
    person is in both.
    """
    val_fraction, seed = options.val_fraction, options.seed
    index = {name: torch.nonzero(decoded.split_ids == i).flatten() for i, name in enumerate(SPLITS)}
    index[ALL] = torch.arange(len(decoded.labels))
    carved = dict.fromkeys((*SPLITS, ALL), "")
    carved[ALL] = "every image of the data set, whatever split it was given"
    if len(index["val"]) == 0 and val_fraction > 0 and ALL not in options.splits:
        train = index["train"]
        percent = f"{val_fraction * 100:g}%"
        if decoded.groups is None:
            rest, held_out = stratified_split(decoded.labels[train], val_fraction, seed)
            carved["val"] = f"val: stratified {percent} of train, seed {seed} ({source.val_missing})"
        else:
            rest, held_out = subject_split(decoded.groups[train], val_fraction, seed)
            carved["val"] = f"val: whole subjects holding about {percent} of train, seed {seed} ({source.val_missing})"
        index["train"], index["val"] = train[rest], train[held_out]
        carved["train"] = f"train: the rest of train after holding out {percent} as val, seed {seed}"

    datasets = {}
    for name in options.splits:
        picked = index[name]
        if len(picked) == 0:
            found = ", ".join(f"{n} {len(index[n])}" for n in SPLITS)
            raise FerkitError(f"no images for split {name!r} in {source.path} (found {found})")
        datasets[name] = FERDataset(
            images=decoded.images[picked],
            labels=decoded.labels[picked],
            classes=tuple(source.classes),
            split=name,
            source=str(source.path),
            note="; ".join(n for n in (source.notes.get(name, ""), carved[name]) if n),
            skipped=len(decoded.bad_files) if name == ALL else decoded.bad_split_ids.count(SPLITS.index(name)),
            groups=None if decoded.groups is None else decoded.groups[picked],
            group_names=tuple(decoded.group_names),
            soft_labels=None if decoded.soft_labels is None else decoded.soft_labels[picked],
        )
    return datasets


def read_listing(listing: Listing, source: Source, options: ReadOptions) -> dict[str, FERDataset]:
    """The listed files as one FERDataset per requested split: decoded once through the cache, unreadable
    files raised unless `options.skip_bad`, and split as :func:`make_splits` cuts them."""
    decoded = decode_cached(listing, options)
    raise_unreadable(decoded, listing.root, options.skip_bad)
    return make_splits(decoded, source, options)
