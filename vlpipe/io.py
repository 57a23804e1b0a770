"""Image I/O: one robust loader for every input, plus file-system helpers."""

from __future__ import annotations

import os
import re
import struct
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "FolderScan", "ImageLoadError", "as_rgb_image", "iter_image_files",
           "load_image", "printable_name", "safe_filename", "scan_folder"]

# Raster formats a folder scan takes as images (those this Pillow build can open); any other
# file in a folder is reported as "not an image".
_RASTER_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp",
                    ".dib", ".tif", ".tiff", ".ico", ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
                    ".jp2", ".j2k", ".jpx", ".avif", ".qoi"}
Image.init()
IMAGE_SUFFIXES = frozenset(ext for ext in _RASTER_SUFFIXES
                           if Image.registered_extensions().get(ext) in Image.OPEN)
NOT_FOUND = "file not found"

# Exceptions Pillow may raise while decoding a damaged file.
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, IndexError)
_PIL_LIMIT_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An image could not be loaded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"cannot read image {self.path!r}: {problem}")


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    """Image.open without PIL's own bomb check leaking (it runs before our header check)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and (max_pixels is None or max_pixels > 2 * pil_limit):
        # The caller allows more than PIL would: lift PIL's limit for this call only.
        with _PIL_LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = None
            try:
                return Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
    return Image.open(path)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB; alpha / transparency composited on white."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        if a.ndim == 3:  # unusual multi-band high bit depth: take the first band
            a = a[..., 0]
        a = np.nan_to_num(a)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif lo >= 0.0 and hi <= 65535.0:  # 16-bit data (also 16-bit PNGs opened as "I")
            a = a / 257.0
        elif hi > lo:  # genuinely 32-bit range: stretch min..max to 0..255
            a = (a - lo) * (255.0 / (hi - lo))
        else:
            a = np.zeros_like(a)
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike, max_pixels: int | None = 178_956_970) -> np.ndarray:
    """Load any supported image file as an RGB array.

    Returns a writable ``(H, W, 3)`` ``uint8`` array, EXIF orientation applied.
    Alpha/transparency is composited on white; grayscale, palette, CMYK, 1-bit,
    16-bit (rounded ``/257``) and 32-bit images are converted to 8-bit RGB.
    Raises :class:`ImageLoadError` (naming the file) for a missing, empty, non-image,
    corrupt/truncated file, or one with more than ``max_pixels`` pixels (``None``: no limit).
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, NOT_FOUND)
    if not p.is_file():
        raise ImageLoadError(p, "not a regular file")
    if p.stat().st_size == 0:
        raise ImageLoadError(p, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(p, max_pixels) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageLoadError(
                        p, f"image is too large ({w}x{h} = {w * h} pixels > max_pixels={max_pixels}); "
                        "possible decompression bomb")
                im.load()  # force a full decode so truncated/corrupt data fails here
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(p, f"image is too large (possible decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(p, "not a recognised image format") from exc
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(p, f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from exc


def as_rgb_image(value) -> np.ndarray:
    """An image given in memory as the pipelines' ``(H, W, 3)`` uint8 RGB array.

    The image contract, stated here once: every image a node or an expert backend works on is a
    writable ``(H, W, 3)`` uint8 RGB array, as :func:`load_image` returns it. The executor
    passes every ``image`` input of a graph through this function, and the backends (grounding,
    OCR) pass the images they are handed directly through it too, so one rule holds everywhere.

    Accepts a PIL image or an array: ``(H, W)`` gray, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA
    (composited on white); uint8, bool (True = 255), uint16 (``/257``), other integers in
    0..255, floats in [0, 1] (scaled by 255) or in [0, 255]. Anything else is a ValueError
    saying what was given. A writable uint8 RGB array is returned as it is (a read-only one is
    copied)."""
    if isinstance(value, Image.Image):
        return _to_rgb(value)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"expected an image array (H, W, 3) or a PIL image, got "
                         f"{type(value).__name__}")
    if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)) \
            or value.size == 0:
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got "
                         f"{value.shape}")
    pixels = _to_uint8(value)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels if pixels.flags.writeable else pixels.copy()
    return _to_rgb(Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1
                                   else pixels))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values of any supported dtype as uint8 (see :func:`as_rgb_image`)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return np.rint(a / 257.0).astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"unsupported image dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError("image has NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(a.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return np.rint(a * 255.0).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ValueError(f"{a.dtype} image values span [{lo:g}, {hi:g}]; expected 0..255"
                         + (" or [0, 1]" if np.issubdtype(a.dtype, np.floating) else ""))
    return np.rint(a).astype(np.uint8)


@dataclass
class FolderScan:
    """What a folder holds: ``images`` (sorted), ``others`` (files that are not images) and
    ``excluded`` (folders left out, e.g. earlier runs' outputs)."""

    images: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)
    excluded: list[Path] = field(default_factory=list)


def scan_folder(folder: str | os.PathLike,
                exclude: Callable[[Path], bool] = lambda _: False) -> FolderScan:
    """The files under ``folder``, recursively, hidden files and folders skipped, folders for
    which ``exclude(path)`` is true left out (and listed)."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {str(root)!r}")
    scan = FolderScan()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        kept = [d for d in dirnames if not d.startswith(".")]
        scan.excluded += [here / d for d in kept if exclude(here / d)]
        dirnames[:] = sorted(d for d in kept if here / d not in scan.excluded)
        for name in filenames:
            if not name.startswith("."):
                is_image = os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
                (scan.images if is_image else scan.others).append(here / name)
    scan.images.sort(key=lambda f: f.relative_to(root).parts)
    scan.others.sort()
    return scan


def iter_image_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield image files under ``folder`` recursively, sorted, skipping hidden files/dirs."""
    yield from scan_folder(folder).images


def printable_name(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes of a file name that are not UTF-8 (another locale's
    encoding) become ``\\xNN`` escapes, so the name can be written to JSON and printed."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def _clean(s: str) -> str:
    s = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in s)
    return re.sub(r"\.{2,}", ".", s).strip(".")


def safe_filename(name: str, max_len: int = 200) -> str:
    """Make a dataset-supplied name a safe single path component (<= ``max_len`` chars).

    Path separators and ``.``/``..`` parts are dropped (remaining parts joined by ``_``);
    characters other than letters, digits, ``-``, ``_``, ``.`` become ``_``; runs of dots
    collapse, leading/trailing dots are stripped. Never empty (falls back to ``"unnamed"``).
    """
    name = unicodedata.normalize("NFC", str(name))
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".", "..")]
    s = _clean("_".join(parts))
    if len(s) > max_len:
        stem, ext = os.path.splitext(s)
        s = _clean(stem[: max_len - len(ext)] + ext if len(ext) <= 16 else s[:max_len])
    if not s:
        s = "unnamed"
    if s.split(".")[0].upper() in _WINDOWS_RESERVED:
        s = "_" + s[: max_len - 1]
    return s
