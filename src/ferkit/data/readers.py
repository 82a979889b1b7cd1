"""One entry point for every data set format: recognise the layout at a path and read it."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferkit.data import ckplus, fer2013, ferplus, photos, rafdb
from ferkit.data.dataset import FERDataset
from ferkit.data.files import data_root
from ferkit.errors import FerkitError


@dataclass(frozen=True)
class _Reader:
    """A data set format: how to recognise its layout and how to read it."""

    name: str
    layouts: tuple[str, ...]
    matches: Callable[[Path], bool]
    load: Callable[..., dict[str, FERDataset]]


_READERS: dict[str, _Reader] = {}
_DETECTION_ORDER: list[str] = []
_CATCH_ALL = ("photos", "fer2013")  # layouts that many folders pass for: tried last, in this order


def register_reader(key: str, name: str, layouts: tuple[str, ...], matches: Callable[[Path], bool],
                    load: Callable[..., dict[str, FERDataset]]) -> None:
    """Make a data set format known to :func:`load_dataset` as ``format=key``; ``matches(root)`` recognises
    its layout when no format is given. Formats are tried in registration order, before the catch-all
    folder layouts (labelled photos, then FER2013's class folders)."""
    _READERS[key] = _Reader(name, layouts, matches, load)
    order = [k for k in _DETECTION_ORDER if k != key] + [key]
    _DETECTION_ORDER[:] = sorted(order, key=lambda k: _CATCH_ALL.index(k) if k in _CATCH_ALL else -1)  # stable


def data_formats() -> tuple[str, ...]:
    """The names ``load_dataset(..., format=...)`` accepts."""
    return tuple(_READERS)


# Recognised most specific first, the catch-alls last: a FER+ folder may also hold fer2013.csv, and CK+48's
# class folders would otherwise pass for FER2013's <root>/<class>/ layout. Photos share that layout too; the
# whole tree tells them apart (Kaggle file-name prefixes, most images' sizes), so folders of crops stay
# FER2013's even when an odd image sorts first: photos are tried before fer2013.
register_reader("fer2013", "FER2013", fer2013.LAYOUTS, fer2013.is_fer2013, fer2013.load_fer2013)
register_reader("ferplus", "FER+", ferplus.LAYOUTS, ferplus.is_ferplus, ferplus.load_ferplus)
register_reader("ckplus", "CK+", ckplus.LAYOUTS, ckplus.is_ckplus, ckplus.load_ckplus)
register_reader("ckplus48", "CK+48", ckplus.LAYOUTS_48, ckplus.is_ckplus48, ckplus.load_ckplus48)
register_reader("rafdb", "RAF-DB", rafdb.LAYOUTS, rafdb.is_rafdb, rafdb.load_rafdb)
register_reader("photos", "labelled photos", photos.LAYOUTS, photos.is_photos, photos.load_photos)


def load_dataset(path: str | Path, format: str | None = None, **kwargs: Any) -> dict[str, FERDataset]:
    """Read the data set at `path` into one FERDataset per split, detecting its format unless `format` names one.

    Keyword arguments go to the reader (every reader takes `splits`, `skip_bad`, `val_fraction`,
    `seed`, `cache_dir` and `progress`; see each `load_*` for its own options).
    """
    root = data_root(path)
    if format is not None:
        reader = _READERS.get(format.lower())
        if reader is None:
            raise FerkitError(f"unknown data format {format!r}; valid formats: {', '.join(data_formats())}")
        return _read(reader, root, kwargs)
    for name in _DETECTION_ORDER:
        if _READERS[name].matches(root):
            return _read(_READERS[name], root, kwargs)
    expected = "; ".join(f"{r.name}: {layout}" for r in _READERS.values() for layout in r.layouts)
    raise FerkitError(f"{root}: no known data set layout; expected one of: {expected}")


def _read(reader: _Reader, root: Path, options: dict[str, Any]) -> dict[str, FERDataset]:
    """``reader.load(root, **options)``, refusing options the reader does not take by name."""
    taken = inspect.signature(reader.load).parameters
    unknown = sorted(key for key in options if key not in taken)
    if unknown:
        raise FerkitError(f"{root}: {reader.name} data takes no option {', '.join(unknown)} "
                          f"(it takes {', '.join(k for k in taken if k != 'path')})")
    return reader.load(root, **options)
