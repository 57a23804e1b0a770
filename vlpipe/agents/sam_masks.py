"""SAM's low-res mask logits -> image masks, computed only inside each mask's box.

SAM's post-processing is bilinear resizing (``align_corners=False``), possibly twice (to the
padded input square, crop, to the image): a linear, separable map, so the image logits are
``Ay @ low @ Axᵀ`` with (H, m) and (W, m) matrices made by resizing the identity through the
same ``F.interpolate`` calls. Resizing never turns a point positive whose sources are all
non-positive, so a mask lies inside the rows and columns that the positive low-res cells reach:
only that window is computed, on the model's device, and only its bool crop goes to the host
(the same holds for any threshold: each resized value is a convex combination of its sources).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import supervision as sv
import torch
import torch.nn.functional as F
from torch import Tensor


def resize_matrix(n_in: int, n_out: int, device) -> Tensor:
    """(n_out, n_in) float32: ``F.interpolate(x, n_out, mode="linear", align_corners=False)``
    along one axis, as a matrix."""
    eye = torch.eye(n_in, dtype=torch.float32, device=device)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def chain_matrix(n_in: int, steps: list[tuple[int, int]], device) -> Tensor:
    """(n_out, n_in) matrix of resizing ``n_in`` along ``steps`` = [(size, keep), ...]: resize
    to ``size`` then keep the first ``keep`` entries (SAM 1: [(1024, input side), (image side,
    image side)]; SAM 2: [(image side, image side)])."""
    m = torch.eye(n_in, dtype=torch.float32, device=device)
    for size, keep in steps:
        m = resize_matrix(m.shape[0], size, device)[:keep] @ m
    return m


@dataclass
class BoxMasks:
    """K binary masks of an (H, W) image as tight crops. ``boxes`` (K, 4) int inclusive
    x0, y0, x1, y1 of the mask's pixels (-1 for an empty mask, whose crop is (0, 0))."""

    boxes: np.ndarray
    crops: list[np.ndarray]
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> BoxMasks:
        """(K, H, W) bool -> tight crops."""
        boxes = np.full((len(masks), 4), -1, np.int64)
        crops = [np.zeros((0, 0), bool)] * len(masks)
        for k, mask in enumerate(masks):
            ys, xs = mask.any(1).nonzero()[0], mask.any(0).nonzero()[0]
            if len(ys):
                boxes[k] = [xs[0], ys[0], xs[-1], ys[-1]]
                crops[k] = mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
        return cls(boxes, crops, masks.shape[1:])

    def __len__(self) -> int:
        return len(self.crops)

    def nonempty(self) -> np.ndarray:
        """(K,) bool."""
        return self.boxes[:, 0] >= 0

    def to_dense(self) -> np.ndarray:
        """(K, H, W) bool (for tests and small images)."""
        out = np.zeros((len(self), *self.shape), bool)
        for k, ((x0, y0, x1, y1), crop) in enumerate(zip(self.boxes, self.crops)):
            if x0 >= 0:
                out[k, y0:y1 + 1, x0:x1 + 1] = crop
        return out

    def to_compact(self) -> sv.CompactMask:
        """The non-empty masks as one ``sv.CompactMask`` (in order)."""
        parts = [sv.CompactMask.from_dense(crop[None], np.array([[0, 0, x1 - x0, y1 - y0]]),
                                           crop.shape).with_offset(int(x0), int(y0), self.shape)
                 for (x0, y0, x1, y1), crop in zip(self.boxes, self.crops) if x0 >= 0]
        if not parts:
            return sv.CompactMask.from_dense(np.zeros((0, *self.shape), bool),
                                             np.zeros((0, 4)), self.shape)
        return sv.CompactMask.merge(parts)


def _reach(matrix: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each input index of an (n_out, n_in) resize matrix: the first and last output index
    it contributes to."""
    nz = (matrix != 0).cpu().numpy()
    n_out = nz.shape[0]
    first = np.where(nz.any(0), nz.argmax(0), n_out)
    last = np.where(nz.any(0), n_out - 1 - nz[::-1].argmax(0), -1)
    return first, last


def upscale_in_boxes(low: Tensor, rows: Tensor, cols: Tensor, threshold: float = 0.0) -> BoxMasks:
    """(K, 1, m, m) low-res logits -> masks ``rows @ low @ colsᵀ > threshold`` of the
    (rows.shape[0], cols.shape[0]) image, each computed in its positive cells' reach only."""
    K = low.shape[0]
    logits = low[:, 0].float()
    positive = (logits > threshold).cpu().numpy()
    (row_first, row_last), (col_first, col_last) = _reach(rows), _reach(cols)
    boxes = np.full((K, 4), -1, np.int64)
    crops = [np.zeros((0, 0), bool)] * K
    for k in range(K):
        ys, xs = positive[k].any(1).nonzero()[0], positive[k].any(0).nonzero()[0]
        if not len(ys):
            continue
        y0, y1 = row_first[ys].min(), row_last[ys].max()  # cropped-off cells reach nothing
        x0, x1 = col_first[xs].min(), col_last[xs].max()
        if y1 < y0 or x1 < x0:
            continue
        window = (rows[y0:y1 + 1] @ logits[k] @ cols[x0:x1 + 1].T > threshold).cpu().numpy()
        wy, wx = window.any(1).nonzero()[0], window.any(0).nonzero()[0]
        if not len(wy):
            continue
        crops[k] = window[wy[0]:wy[-1] + 1, wx[0]:wx[-1] + 1]
        boxes[k] = [x0 + wx[0], y0 + wy[0], x0 + wx[-1], y0 + wy[-1]]
    return BoxMasks(boxes, crops, (rows.shape[0], cols.shape[0]))
