"""Merging of detections from several views (tiles, questions, rounds) in full-image coordinates.

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

from typing import Literal

import numpy as np
import supervision as sv

from ..detections import CLASS_NAME, VIEW_BOX
from ..names.parse import normalize_name
from .box_pairs import contained_in_larger
from .greedy_overlap import descending_order, greedy_owner

__all__ = ["merge_detections", "tile_fragments"]


def _class_codes(dets: sv.Detections) -> np.ndarray:
    """(N,) int codes of the class name as :func:`~vlpipe.agents.names.parse.normalize_name` keys it (as the fusion
    pairs names); falls back to class_id, then one class."""
    names = dets.data.get(CLASS_NAME)
    if names is not None:
        distinct, code = np.unique(np.asarray(names), return_inverse=True)
        norm = np.array([normalize_name(str(n)) for n in distinct], dtype=object)
        return np.unique(norm, return_inverse=True)[1].reshape(-1)[code.reshape(-1)]
    if dets.class_id is not None:
        return np.asarray(dets.class_id).reshape(-1)
    return np.zeros(len(dets), dtype=np.int64)


def tile_fragments(dets: sv.Detections, *, containment: float = 0.8) -> np.ndarray:
    """(N,) bool: which detections are parts of objects cut by a tile border.

    A tile sees only the part of an object that crosses its border, and that part comes out as a
    box touching the tile's inner border (a tile edge inside the image). It is a fragment when at
    least ``containment`` of its box lies inside a larger (by over 10% in area) detection of the
    same normalized name: a view that saw more of the object. Needs ``data["view_box"]`` (N, 4),
    each detection's view in full-image pixels (:class:`~vlpipe.agents.sam.nodes.SamNode` sets it);
    without it nothing is a fragment.
    """
    n = len(dets)
    view = dets.data.get(VIEW_BOX)
    if view is None or n == 0:
        return np.zeros(n, dtype=bool)
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
    return contained_in_larger(xyxy, _class_codes(dets), touches, containment, larger=1.1)


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
    The greedy pass is :func:`~vlpipe.agents.merge.greedy_overlap.greedy_owner` (sparse overlap graph,
    no N x N matrix).

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
    owner = greedy_owner(xyxy, scores, classes, metric, threshold)
    keepers = np.flatnonzero(owner == np.arange(n))
    keep = keepers[descending_order(scores[keepers])]  # by score, as greedy_owner visits them
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
    ``group[i] == g``, each union painted on the crop that spans its members' crops only. Runs of
    keepers that absorbed nothing are taken over in one selection each."""
    members: dict[int, list[int]] = {}
    for i in absorbed:
        members.setdefault(int(group[i]), []).append(int(i))
    boxes = masks.bbox_xyxy  # (N, 4) inclusive crop boxes
    out, start = [], 0
    for g in sorted(members):
        if start < g:
            out.append(masks[keep[start:g]])
        start = g + 1
        idx = [int(keep[g]), *members[g]]
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
    if start < len(keep):
        out.append(masks[keep[start:]])
    return sv.CompactMask.merge(out)
