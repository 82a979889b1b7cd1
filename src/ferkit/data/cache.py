"""Decode-once disk cache: decoded tensors keyed by a fingerprint of the source files."""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ferkit.fileio import atomic_write

CACHE_FORMAT = 1
"""Bumped whenever what a reader stores changes, so old cache files are never read back."""


def default_cache_dir() -> Path:
    """The cache folder: $FERKIT_CACHE if set, else ~/.cache/ferkit."""
    env = os.environ.get("FERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ferkit"


def cache_key(kind: str, entries: Iterable[tuple[str, int, int]]) -> str:
    """A sha256 hex digest over the cache format, the reader kind and (path, size, mtime_ns) entries."""
    digest = hashlib.sha256(f"ferkit-cache {CACHE_FORMAT} {kind}\n".encode())
    for path, size, mtime_ns in entries:
        # One entry per line with the path last, so no two listings can hash the same text.
        digest.update(f"{size} {mtime_ns} {path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cache_path(cache_dir: str | Path | None, kind: str, key: str) -> Path:
    """Where the entry for `key` lives in `cache_dir` (None: the default folder)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"{kind}-{key[:32]}.pt"


def load_entry(path: Path) -> dict[str, Any] | None:
    """The stored dict at `path`, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        # weights_only: a cache file is data, and loading it must never run code.
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        # The unpickler fails on damaged bytes with many exception types (KeyError, EOFError,
        # UnpicklingError, ...); any of them is a miss, and the caller rebuilds the file.
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        return None
    return entry


def save_entry(path: Path, entry: dict[str, Any]) -> None:
    """Store `entry` (tensors, str, int and lists of them) at `path` atomically.

    A failure to write only warns: the data is already in memory, the next load decodes again.
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save({**entry, "format": CACHE_FORMAT}, handle)
            handle.flush()
            os.fsync(handle.fileno())

    try:
        atomic_write(path, write)
    except OSError as err:
        warnings.warn(f"could not write the data cache {path}: {err}", stacklevel=2)
