"""The names data sets give classes and splits, mapped onto ferkit's class names and SPLITS."""
from __future__ import annotations

from collections.abc import Sequence

from ferkit.data.dataset import FER_CLASSES
from ferkit.errors import FerkitError

FER8_CLASSES: tuple[str, ...] = (*FER_CLASSES, "contempt")
"""FER_CLASSES plus contempt, the eighth class of CK+ and FER+."""

# The FER2013 protocol names: the CSV's Usage column, the Kaggle file-name prefixes, FER+'s Usage.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# Split folder names as users spell them (lower-cased), for layouts of <root>/<split>/<class>/.
SPLIT_FOLDERS = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
CLASS_SYNONYMS = {
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "happiness": "happy",
    "sadness": "sad", "surprised": "surprise", "normal": "neutral",
}


def class_index(name: str, classes: Sequence[str]) -> int | None:
    """The index in `classes` of a class name as data sets spell it (any case, synonyms allowed), or None."""
    name = name.lower()
    name = CLASS_SYNONYMS.get(name, name)
    return classes.index(name) if name in classes else None


def usage_split(usage: str, where: str) -> str:
    """The split a FER2013 Usage value names ("Training" -> "train"); FerkitError naming `where` for others."""
    split = USAGE_TO_SPLIT.get(usage.strip())
    if split is None:
        raise FerkitError(f"{where}: Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}")
    return split
