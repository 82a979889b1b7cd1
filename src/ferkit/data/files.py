"""Which files of a data set path are read: the path check, image suffixes, and tool litter left out."""
from __future__ import annotations

import os
from pathlib import Path

from ferkit.errors import FerkitError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
# Files and folders that operating systems and tools drop into data folders; never images.
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


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
