"""SAM's low-res mask logits -> image masks, computed only inside each mask's box.

SAM's post-processing is bilinear resizing (``align_corners=False``), possibly twice (to the
padded input square, crop, to the image): a linear, separable map, so the image logits are
``Ay @ low @ Axᵀ`` with (H, m) and (W, m) matrices made by resizing the identity through the
same ``F.interpolate`` calls. Resizing never turns a point positive whose sources are all
non-positive, so a mask lies inside the rows and columns that the positive low-res cells reach:
only that window is computed, on the model's device, from the low-res cells it reads, and only
the windows' bools go to the host (the same holds for any threshold: each resized value is a
convex combination of its sources). A view's masks are then run-length encoded together.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
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


@dataclass(frozen=True)
class MaskResize:
    """SAM's post-processing of (m, m) low-res logits to an (H, W) image: ``rows`` (H, m) and
    ``cols`` (W, m) float32 resize matrices (the image logits are ``rows @ low @ colsᵀ``), and
    for each axis the index ranges they connect (numpy int arrays):
    ``reach`` (first, last) output index each low-res index contributes to (cropped-off ones
    reach nothing: first = n_out, last = -1); ``reads`` (first, last) low-res index each
    output index reads."""

    rows: Tensor
    cols: Tensor
    row_reach: tuple[np.ndarray, np.ndarray]
    row_reads: tuple[np.ndarray, np.ndarray]
    col_reach: tuple[np.ndarray, np.ndarray]
    col_reads: tuple[np.ndarray, np.ndarray]

    @classmethod
    def chain(cls, m: int, row_steps: list[tuple[int, int]], col_steps: list[tuple[int, int]],
              device) -> MaskResize:
        """From the resize steps of :func:`chain_matrix` along rows and columns."""
        rows, cols = chain_matrix(m, row_steps, device), chain_matrix(m, col_steps, device)
        return cls(rows, cols, *_spans(rows), *_spans(cols))

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[0], self.cols.shape[0]


def _spans(matrix: Tensor) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(n_out, n_in) matrix -> ((first, last) output index of each input index, (first, last)
    input index of each output index), by its nonzero entries."""
    nz = (matrix != 0).cpu().numpy()

    def first_last(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # along axis 0
        n = a.shape[0]
        hit = a.any(0)
        return np.where(hit, a.argmax(0), n), np.where(hit, n - 1 - a[::-1].argmax(0), -1)

    return first_last(nz), first_last(nz.T)


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
            if (extent := _extent(mask)) is not None:
                y0, y1, x0, x1 = extent
                boxes[k] = [x0, y0, x1, y1]
                crops[k] = mask[y0:y1 + 1, x0:x1 + 1]
        return cls(boxes, crops, masks.shape[1:])

    @classmethod
    def concat(cls, parts: list[BoxMasks]) -> BoxMasks:
        """The masks of several BoxMasks of one image, in order."""
        return cls(np.concatenate([p.boxes for p in parts]).reshape(-1, 4),
                   [c for p in parts for c in p.crops], parts[0].shape)

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

    def largest_regions(self) -> BoxMasks:
        """Each mask cut to its :func:`largest_region`, its box tightened to that region."""
        boxes, crops = self.boxes.copy(), list(self.crops)
        for k, crop in enumerate(self.crops):
            if crop.size == 0:
                continue
            region = largest_region(crop)
            y0, y1, x0, x1 = _extent(region)
            crops[k] = region[y0:y1 + 1, x0:x1 + 1]
            left, top = self.boxes[k][:2]
            boxes[k] = [left + x0, top + y0, left + x1, top + y1]
        return BoxMasks(boxes, crops, self.shape)

    def to_compact(self) -> sv.CompactMask:
        """The non-empty masks as one ``sv.CompactMask`` (in order), run-length encoded all at
        once (:func:`rle_counts`)."""
        keep = np.flatnonzero(self.nonempty())
        crops = [self.crops[k] for k in keep]
        shapes = np.array([c.shape for c in crops], np.int32).reshape(-1, 2)
        offsets = self.boxes[keep, :2].astype(np.int32).reshape(-1, 2)
        return sv.CompactMask(rle_counts(crops), shapes, offsets, tuple(self.shape))


def largest_region(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> its largest 8-connected region (of equal ones, the first OpenCV labels:
    the one whose first pixel comes first in row-major order); the mask itself when it has at
    most one region."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                               connectivity=8)
    if count <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def rle_counts(crops: list[np.ndarray]) -> list[np.ndarray]:
    """Each non-empty 2-D bool crop -> its COCO run lengths (column-major scan, int32, the first
    count is of leading False pixels), as ``sv.CompactMask`` stores them; one pass over all
    crops' pixels."""
    if not crops:
        return []
    starts = np.cumsum([0] + [c.size for c in crops])
    flat = np.empty(starts[-1], bool)  # the crops one after another, each column-major
    for crop, start in zip(crops, starts):
        flat[start:start + crop.size].reshape(crop.shape[::-1])[...] = crop.T
    cut = np.empty(len(flat), bool)  # a run starts here: a crop's first pixel or a change
    np.not_equal(flat[1:], flat[:-1], out=cut[1:])
    cut[starts[:-1]] = True
    cuts = np.append(np.flatnonzero(cut), len(flat))
    runs = np.diff(cuts).astype(np.int32)
    first = np.searchsorted(cuts, starts)
    leading_true = flat[starts[:-1]]
    return [np.concatenate(([0], runs[a:b])).astype(np.int32) if lead else runs[a:b]
            for a, b, lead in zip(first[:-1], first[1:], leading_true)]


HOST_COPY_PIXELS = 1 << 22  # windows are copied to the host in batches of about this many


def upscale_in_boxes(low: Tensor, resize: MaskResize, threshold: float = 0.0) -> BoxMasks:
    """(K, 1, m, m) low-res logits -> masks ``rows @ low @ colsᵀ > threshold`` of the image,
    each computed only in the window its positive cells reach, from the low-res cells that
    window reads. The windows' bools reach the host in a few copies (one for object-sized
    masks), never as full-image masks."""
    K = low.shape[0]
    logits = low[:, 0].float()
    positive = logits > threshold
    pos_rows, pos_cols = positive.any(2).cpu().numpy(), positive.any(1).cpu().numpy()  # (K, m)
    y0, y1 = _window(pos_rows, resize.row_reach)
    x0, x1 = _window(pos_cols, resize.col_reach)
    masks = BoxMasks(np.full((K, 4), -1, np.int64), [np.zeros((0, 0), bool)] * K, resize.shape)
    todo = np.flatnonzero((y1 >= y0) & (x1 >= x0))
    # k -> its window on the model's device, transposed to (columns, rows): its C order is the
    # crop's column-major (RLE) order
    pending, pixels = {}, 0
    for k in todo:
        ry, rx = slice(y0[k], y1[k] + 1), slice(x0[k], x1[k] + 1)
        a, b = resize.row_reads[0][ry].min(), resize.row_reads[1][ry].max() + 1
        c, d = resize.col_reads[0][rx].min(), resize.col_reads[1][rx].max() + 1
        pending[k] = (resize.cols[rx, c:d] @ logits[k, a:b, c:d].T @ resize.rows[ry, a:b].T
                      > threshold)
        pixels += pending[k].numel()
        if k == todo[-1] or pixels >= HOST_COPY_PIXELS:
            _tighten_on_host(pending, x0, y0, masks)
            pending, pixels = {}, 0
    return masks


def _tighten_on_host(windows: dict[int, Tensor], x0: np.ndarray, y0: np.ndarray,
                     masks: BoxMasks) -> None:
    """Copy the transposed bool windows (one copy) and set each mask k's tight box and crop in
    ``masks``; (x0[k], y0[k]) is window k's corner in the image."""
    flat = torch.cat([w.flatten() for w in windows.values()]).cpu().numpy()
    ends = np.cumsum([w.numel() for w in windows.values()])
    for (k, window), part in zip(windows.items(), np.split(flat, ends[:-1])):
        window_t = part.reshape(window.shape)
        if (extent := _extent(window_t)) is not None:
            a, b, c, d = extent  # columns a..b, rows c..d of the window
            masks.crops[k] = window_t[a:b + 1, c:d + 1].T
            masks.boxes[k] = [x0[k] + a, y0[k] + c, x0[k] + b, y0[k] + d]


def _extent(a: np.ndarray) -> tuple[int, int, int, int] | None:
    """2-D bool -> (first, last) row and (first, last) column of its True cells; None if none."""
    rows, cols = a.any(1).nonzero()[0], a.any(0).nonzero()[0]
    return (rows[0], rows[-1], cols[0], cols[-1]) if len(rows) else None


def _window(positive: np.ndarray, reach: tuple[np.ndarray, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(K, m) bool positive low-res indices along one axis -> (K,) first and last output
    index they reach (first > last: none)."""
    first, last = reach
    return (np.where(positive, first, np.iinfo(np.int64).max).min(1),
            np.where(positive, last, -1).max(1))
