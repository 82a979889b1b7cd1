"""The registry of data set formats: one entry point that recognises the layout at a path and reads it.

Each reader module registers its format beside its loader (``register_reader`` at import);
``ferkit.data`` imports them all, so every format is known once any part of the package is.
This module imports no reader.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferkit.data.dataset import FERDataset
from ferkit.data.files import data_root
from ferkit.errors import FerkitError


@dataclass(frozen=True)
class DataFormat:
    """A registered data set format: its names, the layouts it reads, and how to recognise and read them."""

    key: str  # what load_dataset(..., format=key) takes
    name: str  # how people write it: "FER2013", "CK+"
    description: str  # one line, for help texts and the README
    layouts: tuple[str, ...]  # the file layouts it reads, as error messages spell them out
    matches: Callable[[Path], bool]
    load: Callable[..., dict[str, FERDataset]]
    catch_all: int  # 0: a layout of this format alone; n > 0: one that other formats' folders pass for too


_FORMATS: dict[str, DataFormat] = {}


def register_reader(key: str, name: str, layouts: tuple[str, ...], matches: Callable[[Path], bool],
                    load: Callable[..., dict[str, FERDataset]], *, description: str, catch_all: int = 0) -> None:
    """Make a data set format known to :func:`load_dataset` as ``format=key``.

    ``matches(root)`` recognises its layout when no format is given. Layouts are tried by
    ``catch_all``, then in registration order: 0 (the default) for a layout no other format has,
    n > 0 for a catch-all that other formats' folders pass for too (bare class folders), tried
    after every specific layout, lowest n first. Registering a key again replaces its reader.
    """
    if key != key.lower() or not key:
        raise ValueError(f"a data format key is a non-empty lower-case name, got {key!r}")
    if catch_all < 0:
        raise ValueError(f"catch_all must be 0 (a specific layout) or more, got {catch_all}")
    _FORMATS[key] = DataFormat(key, name, description, tuple(layouts), matches, load, catch_all)


def data_formats() -> tuple[str, ...]:
    """The names ``load_dataset(..., format=...)`` accepts, in registration order."""
    return tuple(_FORMATS)


def describe_formats() -> dict[str, DataFormat]:
    """Every registered format by key, in registration order: names, description and layouts for help and docs."""
    return dict(_FORMATS)


def load_dataset(path: str | Path, format: str | None = None, **kwargs: Any) -> dict[str, FERDataset]:
    """Read the data set at `path` into one FERDataset per split, detecting its format unless `format` names one.

    Keyword arguments go to the reader (every reader takes `splits`, `skip_bad`, `val_fraction`,
    `seed`, `cache_dir` and `progress`; see each `load_*` for its own options).
    """
    root = data_root(path)
    if format is not None:
        chosen = _FORMATS.get(format.lower())
        if chosen is None:
            raise FerkitError(f"unknown data format {format!r}; valid formats: {', '.join(data_formats())}")
        return _read(chosen, root, kwargs)
    # sorted() is stable: formats of one catch_all rank keep their registration order.
    for candidate in sorted(_FORMATS.values(), key=lambda f: f.catch_all):
        if candidate.matches(root):
            return _read(candidate, root, kwargs)
    expected = "; ".join(f"{f.name}: {layout}" for f in _FORMATS.values() for layout in f.layouts)
    raise FerkitError(f"{root}: no known data set layout; expected one of: {expected}")


def _read(chosen: DataFormat, root: Path, options: dict[str, Any]) -> dict[str, FERDataset]:
    """``chosen.load(root, **options)``, refusing options the reader does not take by name."""
    taken = inspect.signature(chosen.load).parameters
    unknown = sorted(key for key in options if key not in taken)
    if unknown:
        raise FerkitError(f"{root}: {chosen.name} data takes no option {', '.join(unknown)} "
                          f"(it takes {', '.join(k for k in taken if k != 'path')})")
    return chosen.load(root, **options)
