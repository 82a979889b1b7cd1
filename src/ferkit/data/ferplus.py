"""Reader for FER+: FER2013 images relabelled by 10 annotator votes each, as majority and soft labels."""
from __future__ import annotations

import csv
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ferkit.data import fer2013
from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset
from ferkit.data.files import data_root
from ferkit.data.names import FER8_CLASSES, class_index, usage_split
from ferkit.data.pipeline import (Decoded, Listed, Listing, ReadOptions, Source, file_key_entry, load_cached,
                                  make_splits, read_listing)
from ferkit.data.readers import register_reader
from ferkit.errors import FerkitError

VOTES_CSV = "fer2013new.csv"
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                "unknown", "NF")
"""The vote columns of fer2013new.csv and label.csv, in file order; NF = not a face."""
PNG_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
PNG_LABELS = "label.csv"
HARD_LABELS = ("ferplus", "fer2013")
"""Where a FER+ image's hard label comes from: the annotators' majority, or FER2013's own (from fer2013.csv)."""
_VAL_MISSING = "no PublicTest rows"

LAYOUTS = (
    f"<root>/{VOTES_CSV} with the FER+ PNG folders <root>/FER2013{{Train,Valid,Test}}/ferNNNNNNN.png",
    f"<root>/{VOTES_CSV} with the original <root>/{fer2013.CSV_NAME}",
    f"<root>/FER2013{{Train,Valid,Test}}/ferNNNNNNN.png with each folder's {PNG_LABELS}",
)


@dataclass(frozen=True)
class _VoteRow:
    """One FER+ row: the image it names (empty where FER+ made none), its split and its votes."""

    name: str
    split: str
    votes: tuple[int, ...]  # one count per VOTE_COLUMNS entry


def load_ferplus(
    path: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    classes: int = 8,
    hard_labels: str = "ferplus",
    images: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Read FER+ with majority-vote labels and vote-distribution `soft_labels`.

    `path` is fer2013new.csv or a folder holding it and/or the FER+ PNG folders. Images come
    from `images` (default: beside the votes): the PNG folders FER2013{Train,Valid,Test}/, matched
    by image name, or the original fer2013.csv, matched row by row. Votes come from
    fer2013new.csv when there is one, else from the PNG folders' label.csv files.
    The label is the class with the most votes; images whose top count is tied, or whose top
    is unknown or NF (not a face), are left out. `classes=8` keeps contempt (FER_CLASSES +
    contempt); `classes=7` also leaves out contempt-majority images. Soft labels are the votes
    of the kept classes, normalised to sum to 1. Training -> train, PublicTest -> val,
    PrivateTest -> test (`val_fraction` and `seed` carve val from train only if there are no
    PublicTest rows); each split's `note` counts the rows left out and why.
    `hard_labels="fer2013"` (with images from fer2013.csv and `classes=7`) keeps every row with FER2013's
    own label as its hard label and the FER+ votes as its soft label (one-hot where no vote is for one
    of the 7 classes): both teachers in one data set, scored against FER2013's labels.
    """
    root = data_root(path)
    options = ReadOptions(splits=splits, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    if classes not in (7, 8):
        raise FerkitError(f"FER+ classes must be 7 or 8 (8 keeps contempt), got {classes}")
    if hard_labels not in HARD_LABELS:
        raise FerkitError(f"FER+ hard_labels must be one of {', '.join(HARD_LABELS)}, got {hard_labels!r}")
    if hard_labels == "fer2013" and classes != 7:
        raise FerkitError("FER+ hard_labels=fer2013 needs classes=7: FER2013 has no contempt class")
    votes_file = root if root.is_file() else root / VOTES_CSV
    image_root = Path(images).expanduser() if images is not None else votes_file.parent
    if not image_root.exists():
        raise FerkitError(f"{image_root}: no such file or folder")
    png = _has_png_folders(image_root)
    if votes_file.is_file():
        rows = _read_votes(votes_file)
        votes_from = VOTES_CSV
    elif png:
        rows = _read_label_files(image_root)
        votes_from = f"the folders' {PNG_LABELS}"
    else:
        raise FerkitError(f"{root}: not a FER+ layout; expected one of: {'; '.join(LAYOUTS)}")

    names = FER8_CLASSES if classes == 8 else FER_CLASSES
    labels, soft, reasons = _majority(rows, names)
    pixels_csv = image_root if image_root.is_file() else image_root / fer2013.CSV_NAME
    if hard_labels == "fer2013":
        if not pixels_csv.is_file():
            raise FerkitError(f"{image_root}: hard_labels=fer2013 reads FER2013's labels from {fer2013.CSV_NAME}, "
                              "which is not there (images= can point to it)")
        entries = [file_key_entry(pixels_csv), file_key_entry(votes_file)]
        decoded = load_cached(
            cache_dir, "ferplus-fer2013", entries,
            functools.partial(_from_pixels_csv, pixels_csv, votes_file, rows, None, soft, progress),
        )
        notes = dict.fromkeys(SPLITS, f"FER2013 labels from {fer2013.CSV_NAME}, FER+ votes as soft labels, 7 classes")
        return make_splits(decoded, Source(root, _VAL_MISSING, names, notes), options)
    if png:
        files, reasons = _png_listing(rows, labels, soft, reasons)
        source = Source(root, _VAL_MISSING, names, _notes(votes_from, len(names), rows, reasons))
        return read_listing(Listing(image_root, files, "ferplus-png"), source, options)
    if not (pixels_csv.is_file() and pixels_csv.suffix.lower() == ".csv"):
        raise FerkitError(
            f"{votes_file}: no FER+ images found; expected {', '.join(PNG_FOLDERS.values())} "
            f"or {fer2013.CSV_NAME} in {image_root} (images= can point elsewhere)"
        )
    kept = [i for i, label in enumerate(labels) if label >= 0]
    entries = [file_key_entry(pixels_csv)]
    entries += [(f"row {i}\t{labels[i]}\t{rows[i].split}\t{soft[i].tolist()}", 0, 0) for i in kept]
    decoded = load_cached(
        cache_dir, "ferplus-csv", entries,
        functools.partial(_from_pixels_csv, pixels_csv, votes_file, rows, labels, soft, progress),
    )
    source = Source(root, _VAL_MISSING, names, _notes(votes_from, len(names), rows, reasons))
    return make_splits(decoded, source, options)


def is_ferplus(path: Path) -> bool:
    """Whether `path` is a FER+ vote CSV, or a folder holding fer2013new.csv or the FER+ PNG folders."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            return False
        try:
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
                return "Image name" in handle.readline()
        except OSError:
            return False
    return (path / VOTES_CSV).is_file() or any((path / f / PNG_LABELS).is_file() for f in PNG_FOLDERS.values())


# A FER+ folder may hold the original fer2013.csv too; FER2013's layout is a catch-all, so this one wins.
register_reader("ferplus", "FER+", LAYOUTS, is_ferplus, load_ferplus,
                description="FER+: FER2013's faces relabelled by 10 annotators each, as majority and soft labels")


def _has_png_folders(path: Path) -> bool:
    return path.is_dir() and any((path / folder).is_dir() for folder in PNG_FOLDERS.values())


def _counts(fields: Sequence[str], where: str) -> tuple[int, ...]:
    """Vote counts from text fields, which must be whole numbers >= 0."""
    bad = [f for f in fields if not f.strip().isdigit()]
    if bad:
        raise FerkitError(f"{where}: vote counts must be whole numbers >= 0, found {bad[0]!r}")
    return tuple(int(f) for f in fields)


def _read_votes(path: Path) -> list[_VoteRow]:
    """The rows of fer2013new.csv (Usage, Image name, then one column per VOTE_COLUMNS entry)."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in ("Usage", "Image name", *VOTE_COLUMNS) if name not in header]
            if missing:
                raise FerkitError(
                    f"{path}: not a FER+ vote file, missing column(s) {', '.join(missing)}; expected "
                    f"Usage, Image name, {', '.join(VOTE_COLUMNS)}"
                )
            usage_col, name_col = header.index("Usage"), header.index("Image name")
            vote_cols = [header.index(name) for name in VOTE_COLUMNS]
            for where, row in fer2013.csv_rows(reader, path, len(header)):
                split = usage_split(row[usage_col], where)
                rows.append(_VoteRow(row[name_col].strip(), split, _counts([row[c] for c in vote_cols], where)))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise FerkitError(f"{path}: cannot read the FER+ vote file ({err})") from None
    return rows


def _read_label_files(root: Path) -> list[_VoteRow]:
    """The rows of each PNG folder's label.csv (image name, face box, then the 10 vote counts)."""
    rows = []
    for split, folder in PNG_FOLDERS.items():
        if not (root / folder).is_dir():
            continue
        path = root / folder / PNG_LABELS
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                columns = f"image name, face box, {', '.join(VOTE_COLUMNS)}"
                for where, row in fer2013.csv_rows(csv.reader(handle), path, 2 + len(VOTE_COLUMNS), columns):
                    rows.append(_VoteRow(row[0].strip(), split, _counts(row[2:], where)))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise FerkitError(f"{path}: cannot read the FER+ label file ({err})") from None
    return rows


def _majority(rows: Sequence[_VoteRow], names: Sequence[str]) -> tuple[list[int], np.ndarray, list[str]]:
    """Per row: the majority label (-1 if left out), the soft label over `names`, and why it was left out."""
    votes = np.array([row.votes for row in rows], dtype=np.int64).reshape(len(rows), len(VOTE_COLUMNS))
    # Where each vote column goes among the kept classes; -1 for unknown, NF and dropped contempt.
    target = [class_index(column, names) for column in VOTE_COLUMNS]
    top = votes.max(axis=1, initial=0)
    tied = (votes == top[:, None]).sum(axis=1) > 1
    winner = votes.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    soft = np.zeros((len(rows), len(names)), dtype=np.float32)
    for column, index in enumerate(target):
        if index is not None:
            soft[:, index] = votes[:, column]
    totals = soft.sum(axis=1, keepdims=True)
    soft = np.divide(soft, totals, out=np.zeros_like(soft), where=totals > 0)
    labels, reasons = [], []
    for is_tied, column in zip(tied.tolist(), winner.tolist()):
        index = target[column]
        if is_tied:
            reason = "tied"
        elif index is None:
            reason = {"unknown": "unknown", "NF": "not a face"}.get(VOTE_COLUMNS[column], VOTE_COLUMNS[column])
        else:
            reason = ""
        labels.append(-1 if reason else index)
        reasons.append(reason)
    return labels, soft, reasons


def _png_listing(
    rows: Sequence[_VoteRow], labels: Sequence[int], soft: np.ndarray, reasons: Sequence[str]
) -> tuple[list[Listed], list[str]]:
    """The PNGs to read for the kept rows, and each row's reason to be left out, now including image trouble."""
    files: list[Listed] = []
    seen: set[str] = set()
    updated = list(reasons)
    for i, row in enumerate(rows):
        relpath = f"{PNG_FOLDERS[row.split]}/{row.name}"
        if not row.name:
            # FER+ made no PNG for these rows (nearly all are not faces).
            updated[i] = reasons[i] or "without an image"
            continue
        if relpath in seen:
            # A few names repeat in fer2013new.csv; the PNG belongs to the first row naming it.
            updated[i] = "repeating an image name"
            continue
        seen.add(relpath)
        if labels[i] >= 0:
            files.append(Listed(relpath, labels[i], row.split, soft=tuple(soft[i].tolist())))
    return files, updated


def _from_pixels_csv(
    pixels_csv: Path,
    votes_file: Path,
    rows: Sequence[_VoteRow],
    labels: Sequence[int] | None,
    soft: np.ndarray,
    progress: bool,
) -> Decoded:
    """The kept rows' images from the original fer2013.csv, whose rows match fer2013new.csv one to one.

    ``labels`` None keeps every row with fer2013.csv's own label, its soft label one-hot where the
    votes give none of the classes.
    """
    pixels = fer2013.read_csv(pixels_csv, progress)
    if len(pixels.labels) != len(rows):
        raise FerkitError(
            f"{pixels_csv}: {len(pixels.labels)} rows but {votes_file} has {len(rows)}; "
            "FER+ votes must match fer2013.csv row for row"
        )
    vote_splits = torch.tensor([SPLITS.index(row.split) for row in rows], dtype=torch.int64)
    differ = torch.nonzero(vote_splits != pixels.split_ids).flatten()
    if len(differ):
        i = int(differ[0])
        raise FerkitError(
            f"{pixels_csv}: row {i + 1} is {SPLITS[int(pixels.split_ids[i])]} but {votes_file} row {i + 1} is "
            f"{rows[i].split}; FER+ votes must match fer2013.csv row for row"
        )
    if labels is None:
        targets = torch.from_numpy(soft).clone()
        unvoted = targets.sum(dim=1) == 0
        targets[unvoted] = torch.nn.functional.one_hot(pixels.labels[unvoted], targets.shape[1]).float()
        return Decoded(images=pixels.images, labels=pixels.labels, split_ids=pixels.split_ids,
                       bad_files=[], bad_reasons=[], bad_split_ids=[], soft_labels=targets)
    keep = torch.tensor([i for i, label in enumerate(labels) if label >= 0], dtype=torch.int64)
    return Decoded(
        images=pixels.images[keep],
        labels=torch.tensor(labels, dtype=torch.int64)[keep],
        split_ids=pixels.split_ids[keep],
        bad_files=[], bad_reasons=[], bad_split_ids=[],
        soft_labels=torch.from_numpy(soft)[keep],
    )


def _notes(votes_from: str, classes: int, rows: Sequence[_VoteRow], reasons: Sequence[str]) -> dict[str, str]:
    """Per split: what its labels are and how many of its rows were left out, by reason."""
    note = f"FER+ majority vote from {votes_from}, {classes} classes"
    notes = {}
    for split in SPLITS:
        counts = Counter(reason for row, reason in zip(rows, reasons) if reason and row.split == split)
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda item: -item[1]))
        notes[split] = f"{note}; left out {sum(counts.values())} rows: {detail}" if counts else note
    return notes
