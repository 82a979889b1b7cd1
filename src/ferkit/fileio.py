"""Atomic file writes: every file ferkit writes (checkpoints, caches, models, results, pictures) goes through here.

A write goes to a temporary file in the target's folder and is then renamed over the target, so a crash
or a full disk leaves the old file or the new one, never half of one, and readers never see a partial file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``; returns ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(payload: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` to ``path`` as indented JSON, atomically."""
    text = json.dumps(payload, indent=2) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
