"""Helpers the data reader tests share: flat images whose grey value tells them apart, and error checks."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ferkit.errors import FerkitError


def save_gray(path: Path, value: int, size: tuple[int, int] = (20, 16), rgb: bool = False) -> None:
    """A flat image (width x height) of one grey value, so its content tells which file it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", size, value)
    (image.convert("RGB") if rgb else image).save(path)


def error_names(err: pytest.ExceptionInfo[FerkitError], path: Path) -> bool:
    """Whether the error's message names `path` on one line, as the CLI prints it."""
    message = str(err.value)
    return str(path) in message and "\n" not in message
