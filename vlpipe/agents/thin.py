"""Images thinner than a model's resize can take.

Each expert resizes its input to a fixed long (or short) side; an 8 x 4000 strip then has a short
side of zero pixels, or less than one feature cell. Each expert states its ``max_aspect``: the
longest side it keeps over the fewest pixels its coarsest feature map needs. A thinner image is
widened along its short side up to that limit: :func:`stretch_thin` resizes it (the expert maps
its results back by ``original / stretched`` per axis), :func:`pad_thin` extends it with its
edge pixels at the bottom or right (results stay in the image's pixels; clip them to it).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["is_thin", "pad_thin", "stretch_thin"]


def _widened(h: int, w: int, max_aspect: float) -> tuple[int, int]:
    """(h, w) with the short side raised so that long <= max_aspect * short."""
    if max(h, w) <= max_aspect * min(h, w):
        return h, w
    return (math.ceil(w / max_aspect), w) if h < w else (h, math.ceil(h / max_aspect))


def is_thin(hw: tuple[int, int], max_aspect: float) -> bool:
    """Whether an (h, w) image's long side is more than ``max_aspect`` times its short side."""
    return _widened(*hw, max_aspect) != tuple(hw)


def stretch_thin(image: np.ndarray, max_aspect: float) -> np.ndarray:
    """(H, W, C) -> the image resized (bilinear) along its short side so that its long side is
    at most ``max_aspect`` times its short side; the image itself when it already is."""
    h, w = _widened(*image.shape[:2], max_aspect)
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def pad_thin(image: np.ndarray, max_aspect: float) -> np.ndarray:
    """(H, W, C) -> the image extended with copies of its last row (or column) so that its long
    side is at most ``max_aspect`` times its short side; the image itself when it already is."""
    h, w = _widened(*image.shape[:2], max_aspect)
    if (h, w) == image.shape[:2]:
        return image
    return np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1]), (0, 0)), mode="edge")
