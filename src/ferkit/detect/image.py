"""Reading photos from disk as RGB arrays, and the sample photo that ships with ferkit."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ferkit.errors import FerkitError


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An HxWx3 RGB uint8 array of the image file at ``path``, turned upright by its EXIF orientation.

    Raises FerkitError for a missing, unreadable or truncated file, and for one with more pixels
    than Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such image file")
    too_big = (f"{path}: more pixels than the limit of {Image.MAX_IMAGE_PIXELS} "
               "(raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)")
    try:
        with Image.open(path) as im:
            # Pillow refuses at twice the limit and only warns above it; ferkit refuses at the limit.
            if Image.MAX_IMAGE_PIXELS is not None and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise FerkitError(too_big)
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except Image.DecompressionBombError:
        raise FerkitError(too_big) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FerkitError(f"{path}: not a readable image ({reason})") from None
    return np.array(rgb, dtype=np.uint8)


def sample_image_path() -> Path:
    """The public-domain NASA portrait of astronaut Eileen Collins (512x512 JPEG) shipped with ferkit."""
    return Path(str(resources.files("ferkit.assets") / "astronaut.jpg"))
