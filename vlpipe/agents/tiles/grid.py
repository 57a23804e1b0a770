"""Image tiling (VL-SAM style multi-crop inference).

VL-SAM runs the detector/segmenter on the full image and on its four corner crops
(H/2 x W/2) to recover small objects, then merges everything in full-image
coordinates. :func:`split_tiles` produces those crops (or any ``rows x cols`` grid,
optionally overlapping), :func:`to_full_image` maps tile results back, and
:func:`vlpipe.agents.merge.merging.merge_detections` deduplicates the union.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import supervision as sv

__all__ = ["Tile", "parse_grid", "split_tiles", "to_full_image"]


@dataclass(frozen=True)
class Tile:
    """Pixel box ``[x0, x1) x [y0, y1)`` of a crop in the full image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self, image: np.ndarray) -> np.ndarray:
        """(H, W, ...) image or mask -> (height, width, ...) view of this tile."""
        return image[self.y0 : self.y1, self.x0 : self.x1]

    @classmethod
    def covering(cls, xyxy, image_hw: tuple[int, int], pad: float = 0.0) -> Tile | None:
        """The whole pixels covering box ``xyxy`` (4,) (pixel edges, floats) grown by ``pad`` x
        its size on each side, clipped to an image of ``image_hw`` = (H, W); None when nothing
        of it is left."""
        x0, y0, x1, y1 = (float(v) for v in xyxy)
        px, py = pad * (x1 - x0), pad * (y1 - y0)
        h, w = image_hw[:2]
        tile = cls(max(0, math.floor(x0 - px)), max(0, math.floor(y0 - py)),
                   min(w, math.ceil(x1 + px)), min(h, math.ceil(y1 + py)))
        return tile if tile.width > 0 and tile.height > 0 else None


def _axis_tiles(length: int, n: int, overlap: float) -> tuple[int, list[int]]:
    """Tile size and start offsets of ``n`` equal tiles covering ``[0, length)``.

    Neighbours share ``overlap * size`` pixels (rounded); the last tile ends at ``length``.
    """
    size = min(length, math.ceil(length / (n - (n - 1) * overlap)))
    if n == 1:
        return size, [0]
    return size, [round(i * (length - size) / (n - 1)) for i in range(n)]


def split_tiles(
    height: int,
    width: int,
    grid: tuple[int, int] = (2, 2),
    overlap: float = 0.0,
    min_size: int = 64,
    include_full: bool = True,
) -> list[Tile]:
    """Full image (if ``include_full``) followed by a ``rows x cols`` grid of equal tiles.

    ``overlap`` is the fraction of a tile shared with its neighbour (``0 <= overlap < 1``).
    The default ``(2, 2)`` grid with no overlap gives VL-SAM's four H/2 x W/2 corner
    crops. Grid tiles with a side below ``min_size`` are dropped; a grid tile that
    equals the full image is not repeated.
    """
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    full = Tile(0, 0, width, height)
    th, ys = _axis_tiles(height, rows, overlap)
    tw, xs = _axis_tiles(width, cols, overlap)
    tiles = [full] if include_full else []
    if th >= min_size and tw >= min_size:
        for y in ys:
            for x in xs:
                t = Tile(x, y, x + tw, y + th)
                if not (include_full and t == full):
                    tiles.append(t)
    if not tiles:  # include_full=False and every grid tile too small
        tiles = [full]
    return tiles


def parse_grid(spec: str) -> tuple[int, int]:
    """``"2x2"`` / ``"3X4"`` / ``"2*3"`` -> ``(rows, cols)``."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", str(spec))
    if m is None:
        raise ValueError(f"bad tile grid {spec!r}: expected 'ROWSxCOLS', e.g. '2x2'")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows < 1 or cols < 1:
        raise ValueError(f"bad tile grid {spec!r}: rows and cols must be >= 1")
    return rows, cols


def to_full_image(dets: sv.Detections, tile: Tile, full_hw: tuple[int, int]) -> sv.Detections:
    """Map detections made on ``tile.crop(image)`` to full-image coordinates.

    xyxy (N, 4) is shifted by ``(x0, y0)``; masks (N, tile.height, tile.width) become
    (N, H, W): a ``sv.CompactMask`` is re-anchored (its crops stay as they are), a dense array
    is pasted into zeros; confidence, class_id, data etc. are kept.
    """
    H, W = full_hw
    xyxy = dets.xyxy.astype(np.float64, copy=True).reshape(-1, 4)
    xyxy[:, [0, 2]] += tile.x0
    xyxy[:, [1, 3]] += tile.y0
    mask = None
    if dets.mask is not None:
        if dets.mask.shape[1:] != (tile.height, tile.width):
            raise ValueError(f"mask shape {dets.mask.shape[1:]} != tile shape {(tile.height, tile.width)}")
        if isinstance(dets.mask, sv.CompactMask):
            mask = dets.mask.with_offset(tile.x0, tile.y0, new_image_shape=(H, W))
        else:
            mask = np.zeros((len(dets), H, W), dtype=bool)
            mask[:, tile.y0 : tile.y1, tile.x0 : tile.x1] = dets.mask
    return replace(dets, xyxy=xyxy, mask=mask, data=dict(dets.data), metadata=dict(dets.metadata))
