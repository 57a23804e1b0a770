"""Image tiling and merging of per-tile detections (VL-SAM style multi-crop inference).

VL-SAM runs the detector/segmenter on the full image and on its four corner crops
(H/2 x W/2) to recover small objects, then merges everything in full-image
coordinates. :func:`split_tiles` produces those crops (or any ``rows x cols`` grid,
optionally overlapping), :func:`to_full_image` / :func:`shift_points` map tile
results back, and :func:`merge_detections` deduplicates the union.

``merge_detections`` offers NMS and NMM with IoU or IoS (intersection over the smaller box).
The detect recipe merges with NMS + IoU 0.5, as VL-SAM does, after dropping
:func:`tile_fragments`: an object cut by a tile border shows up in that tile as a *part*, a box
contained in the full-image detection, whose IoU with it is roughly ``part_area / full_area``,
so IoU alone would keep it as a duplicate. NMM + IoS catches such parts whatever their size but
also merges distinct neighbours under one spanning box and ORs the refinement rounds of an
object together; the oracle harness (``bench/oracle.py``) measures both.
Greedy NMM follows SAHI's ``greedy_nmm``: a candidate is matched against the
keeper's *original* box (not the growing merged box), so the kept set equals the
NMS kept set and NMM only changes the geometry of what is kept.
"""

from __future__ import annotations

import math
from bisect import bisect_left
import re
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import supervision as sv
import torch
import torchvision

__all__ = [
    "Tile",
    "split_tiles",
    "parse_grid",
    "to_full_image",
    "shift_points",
    "merge_detections",
    "tile_fragments",
    "greedy_owner",
]


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
        """(H, W, C) image -> (height, width, C) view of this tile."""
        return image[self.y0 : self.y1, self.x0 : self.x1]


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


def shift_points(points: np.ndarray, tile: Tile) -> np.ndarray:
    """(P, 2) xy points in tile coordinates -> (P, 2) in full-image coordinates."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2) + np.array([tile.x0, tile.y0], dtype=np.float64)


def _class_codes(dets: sv.Detections) -> np.ndarray:
    """(N,) int codes of the normalized class name (falls back to class_id, then one class)."""
    names = dets.data.get("class_name")
    if names is not None:
        norm = np.array([str(n).strip().lower() for n in names], dtype=object)
        return np.unique(norm, return_inverse=True)[1].reshape(-1)
    if dets.class_id is not None:
        return np.asarray(dets.class_id).reshape(-1)
    return np.zeros(len(dets), dtype=np.int64)


def greedy_owner(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray | None = None,
    metric: Literal["iou", "ios"] = "iou",
    threshold: float = 0.5,
) -> np.ndarray:
    """Greedy NMS/NMM assignment: (N, 4), (N,), (N,) -> owner (N,) int.

    Boxes are visited by score descending (stable); an unassigned box becomes a keeper
    (``owner[i] == i``) and takes every unassigned box of its class (``classes=None``:
    any class) whose overlap with the keeper's box is ``> threshold``. The NMS kept set
    is ``owner == arange(N)``; NMM merges each group ``owner == k`` into ``k``.

    No N x N matrix: per class, boxes are sorted by x0 once and each keeper only tests
    the contiguous window of boxes with x0 in ``[x0_k - max_width, x1_k)``, so memory is
    O(N) and time about O(keepers * window) (O(keepers * N) in the worst case).
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    owner = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return owner
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")] = np.arange(n)
    cls = np.zeros(n, dtype=np.int64) if classes is None else np.asarray(classes).reshape(-1)
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        owner[idx] = idx[_greedy_one_class(xyxy[idx], rank[idx], metric == "iou", threshold)]
    return owner


def _greedy_one_class(xyxy: np.ndarray, rank: np.ndarray, iou: bool, thr: float) -> np.ndarray:
    """Greedy assignment within one class: (M, 4), rank (M,) -> owner (M,) local indices."""
    m = len(xyxy)
    by_x = np.argsort(xyxy[:, 0], kind="stable")
    x0, y0, x1, y1 = (np.ascontiguousarray(xyxy[by_x, i]) for i in range(4))
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    pos = np.empty(m, dtype=np.int64)  # local index -> position in x order
    pos[by_x] = np.arange(m)
    free = np.ones(m, dtype=bool)  # by x order
    owner = np.full(m, -1, dtype=np.int64)
    max_w = max(float((x1 - x0).max()), 0.0)
    x0_list = x0.tolist()
    for k in np.argsort(rank, kind="stable").tolist():
        p = pos[k]
        if not free[p]:
            continue
        free[p] = False
        owner[k] = k
        bx0, by0, bx1, by1, a = x0_list[p], y0[p], x1[p], y1[p], area[p]
        lo, hi = bisect_left(x0_list, bx0 - max_w), bisect_left(x0_list, bx1)
        iw = np.minimum(x1[lo:hi], bx1) - np.maximum(x0[lo:hi], bx0)
        ih = np.minimum(y1[lo:hi], by1) - np.maximum(y0[lo:hi], by0)
        inter = np.maximum(iw, 0.0, out=iw) * np.maximum(ih, 0.0, out=ih)
        denom = area[lo:hi] + (a - inter) if iou else np.minimum(area[lo:hi], a)
        hit = inter > thr * denom  # == inter / denom > thr, and False where denom == 0
        hit &= free[lo:hi]
        j = np.flatnonzero(hit) + lo
        if len(j):
            free[j] = False
            owner[by_x[j]] = k
    return owner


def tile_fragments(dets: sv.Detections, *, containment: float = 0.8) -> np.ndarray:
    """(N,) bool: which detections are parts of objects cut by a tile border.

    A tile sees only the part of an object that crosses its border, and that part comes out as a
    box touching the tile's inner border (a tile edge inside the image). It is a fragment when at
    least ``containment`` of its box lies inside a larger (by over 10% in area) detection of the
    same normalized name: a view that saw more of the object. Needs ``data["view_box"]`` (N, 4),
    each detection's view in full-image pixels (:class:`~vlpipe.agents.sam.SamNode` sets it);
    without it nothing is a fragment.
    """
    n = len(dets)
    view = dets.data.get("view_box")
    out = np.zeros(n, dtype=bool)
    if view is None or n == 0:
        return out
    view = np.asarray(view, dtype=np.float64).reshape(n, 4)
    xyxy = np.asarray(dets.xyxy, dtype=np.float64).reshape(n, 4)
    if dets.mask is not None:
        height, width = dets.mask.shape[1:]
    else:
        height, width = view[:, 3].max(), view[:, 2].max()
    tol = 1.0
    touches = (((view[:, 0] > 0) & (xyxy[:, 0] <= view[:, 0] + tol))
               | ((view[:, 1] > 0) & (xyxy[:, 1] <= view[:, 1] + tol))
               | ((view[:, 2] < width) & (xyxy[:, 2] >= view[:, 2] - tol))
               | ((view[:, 3] < height) & (xyxy[:, 3] >= view[:, 3] - tol)))
    area = np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)
    classes = _class_codes(dets)
    for i in np.flatnonzero(touches):
        same = np.flatnonzero((classes == classes[i]) & (area > 1.1 * area[i]))
        if len(same) == 0 or area[i] == 0:
            continue
        iw = np.minimum(xyxy[same, 2], xyxy[i, 2]) - np.maximum(xyxy[same, 0], xyxy[i, 0])
        ih = np.minimum(xyxy[same, 3], xyxy[i, 3]) - np.maximum(xyxy[same, 1], xyxy[i, 1])
        inside = np.clip(iw, 0, None) * np.clip(ih, 0, None) / area[i]
        out[i] = bool((inside >= containment).any())
    return out


# torchvision's CPU nms is O(N * kept) scalar C++; below this size it beats the windowed
# greedy pass, above it loses (bench/merge.py: 10k crowded boxes ~0.24 s vs ~0.16 s).
_TORCHVISION_MAX = 4096


def merge_detections(
    dets: sv.Detections,
    *,
    method: Literal["nms", "nmm"] = "nmm",
    metric: Literal["iou", "ios"] = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
) -> sv.Detections:
    """Deduplicate detections (e.g. from several tiles, already in full-image coordinates).

    Greedy by confidence descending (stable). ``nms`` drops every detection whose box
    overlap (``iou`` or ``ios`` = intersection / smaller area) with a higher-scoring
    kept one is ``> threshold``; ``nmm`` merges them into it instead: union box, OR of
    masks, max score (the keeper's), keeper's class name and other fields. Matching is
    per normalized ``class_name`` unless ``class_agnostic``. Returns the kept
    detections (K,) in descending score order; masks (K, H, W) or None.
    NMS + IoU on up to ``_TORCHVISION_MAX`` boxes uses ``torchvision.ops.(batched_)nms``;
    everything else uses the windowed greedy pass of :func:`greedy_owner` (O(N) memory).

    Like SAHI's ``greedy_nmm`` a single pass matches against each keeper's original
    box, so if a *fragment* outscores the full-image detection, a second fragment that
    only overlaps the merged box survives; calling ``merge_detections`` again on the
    result merges it.
    """
    if method not in ("nms", "nmm"):
        raise ValueError(f"method must be 'nms' or 'nmm', got {method!r}")
    if metric not in ("iou", "ios"):
        raise ValueError(f"metric must be 'iou' or 'ios', got {metric!r}")
    n = len(dets)
    if n == 0:
        return dets
    xyxy = np.asarray(dets.xyxy, dtype=np.float64)
    scores = np.zeros(n) if dets.confidence is None else np.asarray(dets.confidence, dtype=np.float64)
    classes = None if class_agnostic else _class_codes(dets)
    order = np.argsort(-scores, kind="stable")

    if method == "nms" and metric == "iou" and n <= _TORCHVISION_MAX:
        # torchvision fast path; rank scores make ties follow the stable order exactly
        boxes = torch.from_numpy(xyxy[order])
        rank = torch.arange(n, 0, -1, dtype=torch.float64)
        if classes is None:
            keep_sorted = torchvision.ops.nms(boxes, rank, threshold)
        else:
            keep_sorted = torchvision.ops.batched_nms(boxes, rank, torch.from_numpy(classes[order]), threshold)
        keep = order[np.sort(keep_sorted.numpy())]
        return dets[keep]

    owner = greedy_owner(xyxy, scores, classes, metric, threshold)
    keep = order[owner[order] == order]
    out = dets[keep]
    if method == "nms":
        return out
    pos = np.full(n, -1, dtype=np.int64)
    pos[keep] = np.arange(len(keep))
    group = pos[owner]  # (N,) index into keep
    merged = out.xyxy.astype(np.float64, copy=True)
    np.minimum.at(merged[:, 0], group, xyxy[:, 0])
    np.minimum.at(merged[:, 1], group, xyxy[:, 1])
    np.maximum.at(merged[:, 2], group, xyxy[:, 2])
    np.maximum.at(merged[:, 3], group, xyxy[:, 3])
    out.xyxy = merged
    if out.mask is not None:
        absorbed = np.flatnonzero(owner != np.arange(n))
        if isinstance(out.mask, sv.CompactMask):
            out.mask = _compact_union(dets.mask, keep, group, absorbed)
        else:
            mask = out.mask.copy()
            for i in absorbed:
                mask[group[i]] |= dets.mask[i]
            out.mask = mask
    if out.confidence is not None:
        conf = out.confidence.astype(np.float64, copy=True)
        np.maximum.at(conf, group, scores)
        out.confidence = conf.astype(out.confidence.dtype)
    return out


def _compact_union(masks: sv.CompactMask, keep: np.ndarray, group: np.ndarray,
                   absorbed: np.ndarray) -> sv.CompactMask:
    """NMM's mask OR on crop-RLE masks: keeper ``keep[g]`` ORed with every ``absorbed`` ``i`` of
    ``group[i] == g``, each union painted on the crop that spans its members' crops only."""
    members: dict[int, list[int]] = {}
    for i in absorbed:
        members.setdefault(int(group[i]), []).append(int(i))
    boxes = masks.bbox_xyxy  # (N, 4) inclusive crop boxes
    out = []
    for g, k in enumerate(keep):
        if g not in members:
            out.append(masks[[k]])
            continue
        idx = [int(k), *members[g]]
        x0, y0 = boxes[idx, :2].min(0)
        x1, y1 = boxes[idx, 2:].max(0)
        canvas = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
        for i in idx:
            bx, by = boxes[i, 0] - x0, boxes[i, 1] - y0
            crop = masks.crop(i)
            canvas[by:by + crop.shape[0], bx:bx + crop.shape[1]] |= crop
        whole = np.array([[0, 0, canvas.shape[1] - 1, canvas.shape[0] - 1]])
        out.append(sv.CompactMask.from_dense(canvas[None], whole, canvas.shape)
                   .with_offset(int(x0), int(y0), new_image_shape=masks.image_shape))
    return sv.CompactMask.merge(out)
