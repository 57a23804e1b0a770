"""The one min-max normaliser of score maps, shared by SAM's attention scores and the saved
attention pictures."""

from __future__ import annotations

import numpy as np


def min_max(heat: np.ndarray) -> np.ndarray:
    """``heat`` (any shape) scaled to [0, 1]: (heat - min) / (max - min). A flat map, which
    ranks no cell above another, is all ones: every cell is as high as the peak."""
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi > lo else np.ones_like(heat)
