"""Image I/O: one robust loader for every input, plus file-system helpers."""

from __future__ import annotations

import os
import re
import struct
import threading
import unicodedata
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageLoadError", "iter_image_files", "load_image", "safe_filename"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

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
        raise ImageLoadError(p, "file not found")
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


def iter_image_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield image files under ``folder`` recursively, sorted, skipping hidden files/dirs."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {str(root)!r}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    yield from sorted(found, key=lambda f: f.relative_to(root).parts)


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
