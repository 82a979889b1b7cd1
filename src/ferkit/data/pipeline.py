"""The pipeline every reader runs: check the request, decode listed files once through the cache,
report unreadable files, and cut the decoded source into splits."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ferkit.data.cache import cache_key, cache_path, load_entry, save_entry
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset, stratified_split
from ferkit.data.decode import Crop, decode_images
from ferkit.data.files import data_root
from ferkit.data.folds import subject_split
from ferkit.errors import FerkitError


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
