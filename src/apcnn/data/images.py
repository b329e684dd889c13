"""Image decoding: any file Pillow reads becomes an RGB ``PIL.Image``, or a named error.

:func:`open_rgb` is the one entry point every dataset uses. Mode conversion rules:

- ``RGB``: unchanged. ``L``, ``1``, ``YCbCr``, ``HSV``, ``CMYK``: ``Image.convert("RGB")``
  (Pillow undoes Adobe's inverted CMYK JPEGs while decoding).
- With alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with a transparency entry): alpha
  composited on white, ``out = a * rgb + (1 - a) * 255`` with ``a = alpha / 255``.
- 16-bit (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) and 32-bit integer ``I``: values clipped to
  ``[0, 65535]`` and scaled by ``255 / 65535`` (Pillow opens 16-bit PNG/TIFF as one of these;
  ``I`` is therefore read as 16-bit data), then replicated to three channels.
- ``F`` (32-bit float): read as ``[0, 1]`` when its maximum is <= 1, else as ``[0, 255]``.
- EXIF orientation is applied (``ImageOps.exif_transpose``), as a camera viewer would.

A missing file raises :class:`MissingFileError`; a file that exists but does not decode
(corrupt, truncated, not an image) raises :class:`CorruptImageError` naming the file. Decoding is
complete (``Image.load``) before returning, so truncated files fail here, not later in a transform.

:class:`ResizedImageCache` optionally stores decoded, resized ``uint8`` arrays on disk so that
repeated epochs skip JPEG decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from apcnn.data.errors import CorruptImageError, MissingFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def is_image_file(name: str | os.PathLike[str]) -> bool:
    """True when ``name`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return str(name).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any Pillow mode to ``RGB`` (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        if "transparency" in img.info:
            img, mode = img.convert("RGBA"), "RGBA"
        else:
            return img.convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        a = rgba[..., 3:4] / 255.0
        out = rgba[..., :3] * a + 255.0 * (1.0 - a)
        return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    if mode in _INT_MODES:
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(arr, 0, 65535) * (255.0 / 65535.0)
        return _gray_to_rgb(arr)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        return _gray_to_rgb(np.nan_to_num(arr) * scale)
    return img.convert("RGB")


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    g = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[..., None], 3, axis=2), "RGB")


def open_rgb(path: str | os.PathLike[str], data: bytes | None = None) -> Image.Image:
    """Decode ``path`` completely and return it as an ``RGB`` image (``data``: its bytes,
    already read; errors still name ``path``).

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptImageError: it exists but cannot be decoded.
    """
    p = Path(path)
    try:
        with Image.open(p if data is None else io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
            if rgb is im:
                rgb = im.copy()
    except FileNotFoundError:
        raise MissingFileError(
            f"{p}: image file not found; restore it or pass --set data.skip_bad_images=true"
        ) from None
    except IsADirectoryError:
        raise MissingFileError(f"{p}: is a folder, expected an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(
            f"{p}: cannot decode image ({type(e).__name__}: {e}); replace the file or pass "
            "--set data.skip_bad_images=true"
        ) from None
    return rgb


def check_image(path: str | os.PathLike[str], data: bytes | None = None) -> str | None:
    """Decode ``path`` (or its bytes ``data``); ``None`` when it is a good image, else the error
    message."""
    try:
        open_rgb(path, data)
    except (MissingFileError, CorruptImageError) as e:
        return str(e)
    return None


class ResizedImageCache:
    """On-disk cache of decoded images resized to ``size x size``, stored as ``uint8`` ``.npy``.

    The key of a file is ``sha1(resolved path, size in bytes, mtime_ns, size)``, so an edited
    image is decoded again. Writes go to a temporary file renamed into place, so several
    DataLoader workers may fill the cache at once.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], size: int) -> None:
        if int(size) <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.cache_dir = Path(cache_dir)
        self.size = int(size)

    def _entry(self, path: Path) -> Path:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.size}"
        h = hashlib.sha1(key.encode()).hexdigest()
        return self.cache_dir / h[:2] / f"{h}.npy"

    def load(self, path: str | os.PathLike[str]) -> Image.Image:
        """The cached ``RGB`` image of ``path`` resized to ``size x size`` (bilinear)."""
        p = Path(path)
        try:
            entry = self._entry(p)
        except FileNotFoundError:
            raise MissingFileError(
                f"{p}: image file not found; restore it or pass --set data.skip_bad_images=true"
            ) from None
        if entry.exists():
            try:
                return Image.fromarray(np.load(entry), "RGB")
            except (OSError, ValueError):
                pass  # damaged cache entry: rebuild it below
        img = open_rgb(p).resize((self.size, self.size), Image.Resampling.BILINEAR)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(img, dtype=np.uint8))
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return img
