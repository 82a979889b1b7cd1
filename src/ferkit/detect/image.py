"""Images of any kind a user has (files, encoded bytes, PIL images, numpy arrays of any depth) as RGB uint8 arrays,
and the sample photo that ships with ferkit."""
from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ferkit.errors import FerkitError


def to_rgb_array(array: np.ndarray, source: str = "<array>") -> np.ndarray:
    """An HxWx3 (or HxW grey) uint8 array from an image array of any common depth and layout.

    HxW, HxWx1, HxWx3 and HxWx4 (alpha dropped) are accepted. 16-bit integers are scaled down by
    257 (65535 -> 255), other integers clipped to 0..255, floats taken as 0..1 when they all lie
    there (else clipped to 0..255), booleans as 0/255. Raises FerkitError for anything else.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., 0] if array.shape[2] == 1 else array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) or 0 in array.shape:
        raise FerkitError(f"{source}: an image must be H x W or H x W x 3 with pixels, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if array.dtype.kind in "ui":
        if array.dtype.itemsize == 2 and array.dtype.kind == "u":
            return np.ascontiguousarray((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.clip(array, 0, 255).astype(np.uint8))
    if array.dtype.kind == "f":
        values = array.astype(np.float64)
        ok = np.isfinite(values)
        # The scale is read from the finite pixels alone: one +inf must not turn a 0..1 photo into 0..255.
        unit = bool(ok.any()) and values[ok].min() >= 0.0 and values[ok].max() <= 1.0
        top = 1.0 if unit else 255.0
        values = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
        if unit:
            values = values * 255.0
        return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    raise FerkitError(f"{source}: cannot read an image from a {array.dtype} array")


def pil_to_array(im: Image.Image, source: str = "<PIL image>") -> np.ndarray:
    """An HxWx3 RGB uint8 array of a PIL image, turned upright by its EXIF orientation; 16-bit and float modes scaled."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = to_rgb_array(np.asarray(im).astype(np.uint16), source)
    elif im.mode == "I":
        values = np.asarray(im)
        # 32-bit integer images are mostly 16-bit data (PNG, TIFF) widened by Pillow.
        grey = to_rgb_array(values.clip(0, 65535).astype(np.uint16) if values.max() > 255 else values, source)
    elif im.mode == "F":
        grey = to_rgb_array(np.asarray(im), source)
    else:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "HEIF", "AVIF")
"""The formats ferkit decodes (Pillow's names; MPO is the multi-picture JPEG of many phones, HEIF and AVIF
with the ``heif`` extra). Others Pillow knows are refused unread: EPS would be handed to Ghostscript."""


HEIF_EXTRA = 'pip install "ferkit[heif]"'
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")


def heif_ready() -> bool:
    """Whether HEIF/HEIC (every iPhone photo) and AVIF can be read: pillow-heif (the ``heif`` extra) installed,
    its opener registered with Pillow on first use."""
    global _heif
    if _heif is None:
        try:
            import pillow_heif
        except ImportError:
            _heif = False
        else:
            pillow_heif.register_heif_opener()
            _heif = True
    return _heif


_heif: bool | None = None


def is_heif(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a HEIF/HEIC or AVIF image (an ISO-BMFF ``ftyp`` box of theirs)."""
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def open_image(fp) -> Image.Image:
    """Pillow's open, trying only IMAGE_FORMATS (those of them whose plugin is installed)."""
    Image.init()
    heif = heif_ready()
    return Image.open(fp, formats=[name for name in IMAGE_FORMATS if name in Image.OPEN
                                   and (heif or name not in ("HEIF", "AVIF"))])


def _decode(opener, source: str, head: bytes = b"") -> np.ndarray:
    too_big = (f"{source}: more pixels than the limit of {Image.MAX_IMAGE_PIXELS} "
               "(raise PIL.Image.MAX_IMAGE_PIXELS if the file is trusted)")
    try:
        with opener() as im:
            # Pillow refuses at twice the limit and only warns above it; ferkit refuses at the limit.
            if Image.MAX_IMAGE_PIXELS is not None and im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise FerkitError(too_big)
            if im.width < 1 or im.height < 1:
                raise FerkitError(f"{source}: the image has no pixels")
            return pil_to_array(im, source)
    except Image.DecompressionBombError:
        raise FerkitError(too_big) from None
    except Image.UnidentifiedImageError:
        if is_heif(head) and not heif_ready():
            raise FerkitError(f"{source}: a HEIF/HEIC photo; to read it: {HEIF_EXTRA}") from None
        raise FerkitError(f"{source}: not a readable image (ferkit reads {', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, MemoryError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FerkitError(f"{source}: not a readable image ({reason})") from None


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An HxWx3 RGB uint8 array of the image file at ``path``, turned upright by its EXIF orientation.

    Raises FerkitError for a missing, unreadable or truncated file, and for one with more pixels
    than Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    path = Path(path)
    if not path.is_file():
        raise FerkitError(f"{path}: no such image file")
    with open(path, "rb") as f:
        head = f.read(16)
    return _decode(lambda: open_image(path), str(path), head)


def decode_image(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> np.ndarray:
    """An HxWx3 RGB uint8 array of an encoded image (JPEG, PNG, ... file contents) held in memory."""
    if len(data) == 0:
        raise FerkitError(f"{source}: no image data (0 bytes)")
    return _decode(lambda: open_image(io.BytesIO(bytes(data))), source, bytes(data[:16]))


def sample_image_path() -> Path:
    """The public-domain NASA portrait of astronaut Eileen Collins (512x512 JPEG) shipped with ferkit."""
    return Path(str(resources.files("ferkit.assets") / "astronaut.jpg"))
