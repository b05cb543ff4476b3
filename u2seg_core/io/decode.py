"""Robust image decoding: any common image file -> (H, W, 3) uint8 RGB, or an `ImageDecodeError` saying why.

Conventions (the same for every stage):

* EXIF orientation is applied (a photo shot in portrait loads in portrait).
* Transparency (RGBA, LA, PA, palette with a transparent colour) is composited on WHITE, the way image
  viewers show it; the colour stored under fully transparent pixels is often arbitrary and is never seen.
* Grayscale (1, L, I, I;16, F) is replicated to three channels. 16-bit data is scaled by 1/257 and rounded
  (65535 -> 255), never clipped; 32-bit integer data is read as 16-bit (clipped to 0..65535 first);
  float data is read as 0..1 intensity when its maximum is <= 1, else as 16-bit.
* CMYK uses PIL's conversion (R = (255 - C)(255 - K) / 255 ...); embedded ICC profiles are ignored.
* Multi-frame files (GIF, TIFF) give their first frame.
* PIL's global decompression-bomb guard is switched off and replaced by an explicit `max_pixels` check on the
  header size, before any pixel is decoded (default `SourceConfig.max_pixels`, 250 MP).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .. import storage
from ..config import SourceConfig

Image.MAX_IMAGE_PIXELS = None  # the explicit `max_pixels` check below replaces it

DEFAULT_MAX_PIXELS: int = SourceConfig.model_fields["max_pixels"].default

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_TRANSPOSING_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)


class ImageDecodeError(ValueError):
    """An image that cannot be loaded; the message names the file and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot decode image {url}: {reason}")

    def __reduce__(self):  # keeps it picklable across worker processes (Dask, DataLoader)
        return type(self), (self.url, self.reason)


def read_image_bytes(url: str) -> bytes:
    """All bytes of `url` (local or fsspec URL); a missing, unreadable or empty file is an `ImageDecodeError`."""
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError as exc:
        if not storage.is_remote(url) and os.path.islink(url):
            target = os.readlink(url)
            raise ImageDecodeError(url, f"dangling symbolic link (its target {target} does not exist)") from exc
        raise ImageDecodeError(url, "file not found (was it moved or deleted after planning?)") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError(url, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageDecodeError(url, f"permission denied ({exc})") from exc
    except OSError as exc:
        raise ImageDecodeError(url, f"cannot read the file: {type(exc).__name__}: {exc}") from exc
    if not data:
        raise ImageDecodeError(url, "empty file (0 bytes)")
    return data


def open_image(data: bytes, url: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into an upright RGB PIL image (conventions in the module docstring)."""
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            url, f"not an image format PIL can read ({len(data)} bytes, starting {data[:12]!r})"
        ) from exc
    except Exception as exc:
        raise ImageDecodeError(url, f"corrupt image header: {type(exc).__name__}: {exc}") from exc
    width, height = im.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            url,
            f"{width}x{height} = {width * height / 1e6:.1f} MP is above the limit of {max_pixels / 1e6:.1f} MP; "
            "raise source.max_pixels to decode it",
        )
    if width == 0 or height == 0:
        raise ImageDecodeError(url, f"image has an empty size {width}x{height}")
    try:
        im.load()
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in _TRANSPOSING_ORIENTATIONS:
            im = ImageOps.exif_transpose(im)
    except Exception as exc:
        reason = f"truncated or corrupt image data ({type(exc).__name__}: {exc}); re-download or re-encode the file"
        raise ImageDecodeError(url, reason) from exc
    try:
        return to_rgb(im)
    except Exception as exc:
        raise ImageDecodeError(url, f"cannot convert pixel mode {im.mode!r} to RGB: {exc}") from exc


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> mode 'RGB' (conventions in the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return Image.fromarray(_gray_to_uint8(np.asarray(im), mode)).convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[..., 3:]
        on_white = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return Image.fromarray(on_white.astype(np.uint8))
    return im.convert("RGB")


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) 16/32-bit integer or float gray -> (H, W) uint8."""
    if mode == "F":
        values = values.astype(np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0 / 257.0
        return np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
    sixteen = np.clip(values.astype(np.int64), 0, 65535)
    return ((sixteen + 128) // 257).astype(np.uint8)


def load_image(url: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode `url` into an upright RGB PIL image; raises `ImageDecodeError`."""
    return open_image(read_image_bytes(url), url, max_pixels)


def load_rgb(url: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode `url` into a (H, W, 3) uint8 RGB array; raises `ImageDecodeError` with the reason."""
    return np.array(load_image(url, max_pixels), dtype=np.uint8)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None when the header is unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
