"""Reader for RAF-DB basic: the aligned 100x100 faces and the partition/label list."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ferkit.data.dataset import FER_CLASSES, SPLITS, FERDataset
from ferkit.data.files import data_root
from ferkit.data.names import CLASS_SYNONYMS
from ferkit.data.pipeline import Listed, Listing, ReadOptions, Source, read_listing
from ferkit.data.readers import register_reader
from ferkit.errors import FerkitError

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB's own spelling
IMAGE_DIR = "Image/aligned"
CODES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
"""The emotion a RAF-DB label number stands for."""
_LABELS = {code: FER_CLASSES.index(CLASS_SYNONYMS.get(name, name)) for code, name in CODES.items()}
_PREFIX_TO_SPLIT = {"train": "train", "test": "test"}

LAYOUTS = (
    f"<root>/basic/{IMAGE_DIR}/train_00001_aligned.jpg with <root>/basic/{LABEL_FILE} "
    "(lines 'train_00001.jpg 5'), or the basic/ folder itself",
)


def load_rafdb(
    path: str | Path,
    splits: Sequence[str] = SPLITS,
    *,
    grayscale: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, FERDataset]:
    """Read RAF-DB basic (the aligned faces) into train, val and test, labels in FER_CLASSES order.

    train_* images are train and test_* images are test; RAF-DB has no val, so val is a
    stratified, seeded `val_fraction` of train (recorded in `note`). Images stay RGB as in the
    files (N x 3 x 100 x 100) unless `grayscale`. Unreadable or missing images raise
    FerkitError unless `skip_bad`. Decoded images are cached in `cache_dir`.
    """
    root = data_root(path)
    options = ReadOptions(splits=splits, val_fraction=val_fraction, seed=seed, skip_bad=skip_bad,
                          cache_dir=cache_dir, progress=progress)
    basic = _basic_folder(root)
    if basic is None:
        raise FerkitError(f"{root}: not a RAF-DB layout; expected {LAYOUTS[0]}")
    files = _read_labels(basic / LABEL_FILE)
    listing = Listing(basic, files, "rafdb-gray" if grayscale else "rafdb-rgb", rgb=not grayscale)
    return read_listing(listing, Source(root, "RAF-DB has no val split"), options)


def is_rafdb(path: Path) -> bool:
    """Whether `path` is a RAF-DB basic folder or holds one."""
    return _basic_folder(path) is not None


register_reader("rafdb", "RAF-DB", LAYOUTS, is_rafdb, load_rafdb,
                description="RAF-DB basic: aligned 100x100 colour faces from the web, 7 classes, train and test")


def _basic_folder(path: Path) -> Path | None:
    """The folder holding EmoLabel/ and Image/: `path` itself or its basic/ subfolder."""
    for candidate in (path, path / "basic"):
        if (candidate / LABEL_FILE).is_file():
            return candidate
    return None


def _read_labels(path: Path) -> list[Listed]:
    """One listed aligned image per line of the label file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise FerkitError(f"{path}: cannot read the label file ({err})") from None
    files = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 2:
            raise FerkitError(f"{where}: expected '<image> <label>' like 'train_00001.jpg 5', found {line.strip()!r}")
        name, code = fields
        split = _PREFIX_TO_SPLIT.get(name.partition("_")[0])
        if split is None:
            raise FerkitError(f"{where}: image name {name!r} starts with neither train_ nor test_")
        label = int(code) if code.isdigit() else -1
        if label not in CODES:
            known = ", ".join(f"{i} {emotion}" for i, emotion in CODES.items())
            raise FerkitError(f"{where}: label {code!r} is not a RAF-DB label ({known})")
        files.append(Listed(f"{IMAGE_DIR}/{Path(name).stem}_aligned.jpg", _LABELS[label], split))
    return files
