"""Greedy NMS/NMM assignment on the sparse graph of overlapping boxes, without a Python loop per box.

Greedy suppression visits boxes by score and lets each surviving box take every later box of its
class that overlaps it by more than a threshold. The outcome depends only on which pairs overlap:
a box is a keeper iff no keeper of higher rank overlaps it, and a taken box belongs to the
highest-ranked keeper that overlaps it. So :func:`overlap_edges` first finds all such pairs at once
(a sweep over x inside horizontal strips, vectorized), and :func:`resolve_greedy` then settles
every box whose higher-ranked neighbours are settled, a whole frontier per step.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Literal

import numpy as np

__all__ = ["greedy_owner", "greedy_owner_loop", "overlap_edges", "resolve_greedy"]

# candidate pairs examined per vectorized block (bounds the temporaries, ~100 MB)
_PAIR_BLOCK = 2_000_000


def overlap_edges(
    xyxy: np.ndarray,
    rank: np.ndarray,
    classes: np.ndarray,
    iou: bool,
    threshold: float,
    max_candidates: float | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Pairs of same-class boxes whose overlap exceeds ``threshold``: (N, 4), (N,), (N,) -> (u (E,), v (E,)).

    ``rank[u] < rank[v]`` (``u`` is visited first). Overlap is IoU (``iou``) or intersection over
    the smaller area, tested as ``inter > threshold * denom`` in float64, the keeper's area added
    last, so results equal the box-by-box loop bit for bit. Boxes are sorted into horizontal
    strips (per class) and by x0 inside a strip; a box can only match boxes of its own or a
    neighbouring strip whose x0 lies within a window. Strips are as tall as the tallest box and the window is a
    box width; for IoU both shrink by ``1 - threshold`` (IoU > t needs an x overlap > t * width,
    so x0 and y0 each differ by < (1 - t) * side). Returns None, before any pair is examined, when
    the windows hold more than ``max_candidates`` pairs per box (crowded boxes), so callers can
    pick the keeper-by-keeper loop instead. Temporaries are bounded by blocks of pairs.
    """
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    reach = 1.0 - min(threshold, 1.0) if iou else 1.0  # fraction of a side two matches can be apart
    strip_h = max(float(h.max()) * reach, 1.0)
    strip = np.floor((xyxy[:, 1] - xyxy[:, 1].min()) / strip_h).astype(np.int64)
    cls = classes.reshape(-1) - classes.min()
    if cls.max() > len(cls):
        cls = np.unique(cls, return_inverse=True)[1].reshape(-1)
    strip += cls * (int(strip.max()) + 2)  # an empty strip between classes
    x_from = xyxy[:, 0].min()
    span = float(xyxy[:, 0].max() - x_from) + 2 * max(float(w.max()), 0.0) + 4  # a strip's key extent
    key = strip * span + (xyxy[:, 0] - x_from)
    order = np.argsort(key, kind="stable")
    key = key[order]
    reach_w = np.clip(w[order], 0, None) * reach + 1.0  # +1 px: windows err wide
    x0, y0, x1, y1 = (np.ascontiguousarray(xyxy[order, i]) for i in range(4))
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    r = rank[order]
    # of two x-overlapping boxes one's x0 lies in the other's [x0, x0 + reach * width); look right
    # from each box: later in its own strip, from x0 - 1 px in the next strip and from x0 + 1 px in
    # the previous one (a pair 1 px apart found twice, in rounding, changes nothing downstream)
    lo = [np.arange(1, len(key) + 1), *(np.searchsorted(key, key + d) for d in (span - 1.0, 1.0 - span))]
    count = [np.clip(np.searchsorted(key, key + d + reach_w) - l, 0, None) for d, l in zip((0.0, span, -span), lo)]
    lo, count = np.concatenate(lo), np.concatenate(count)  # (3M,): own, next, previous strip
    if max_candidates is not None and count.sum() > max_candidates * len(key):
        return None
    us, vs = [], []
    total = np.cumsum(count)
    bounds = np.searchsorted(total, np.arange(0, int(total[-1]), _PAIR_BLOCK), side="right")
    for a, b in zip(bounds, [*bounds[1:], len(count)]):
        base = total[a - 1] if a else 0  # pairs before this block
        p = np.repeat((np.arange(a, b) % len(key)).astype(np.int32), count[a:b])
        q = np.repeat((lo[a:b] - (total[a:b] - count[a:b] - base)).astype(np.int32), count[a:b])
        q += np.arange(total[b - 1] - base, dtype=np.int32)
        ih = np.minimum(y1[p], y1[q])
        ih -= np.maximum(y0[p], y0[q])
        keep = ih > 0
        p, q, ih = p[keep], q[keep], ih[keep]
        iw = np.minimum(x1[p], x1[q])
        iw -= np.maximum(x0[p], x0[q])
        np.maximum(iw, 0.0, out=iw)
        inter = iw * ih
        swap = r[q] < r[p]  # orient: p first
        p, q = np.where(swap, q, p), np.where(swap, p, q)
        denom = area[q] + (area[p] - inter) if iou else np.minimum(area[q], area[p])
        hit = inter > threshold * denom  # False where denom == 0
        us.append(order[p[hit]])
        vs.append(order[q[hit]])
    if not us:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(us), np.concatenate(vs)


def resolve_greedy(n: int, u: np.ndarray, v: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Greedy outcome of an overlap graph: edges (E,) with ``rank[u] < rank[v]`` -> owner (N,).

    Each step settles every open box whose higher-ranked neighbours are all settled (at least the
    best open box): taken if one of them is a keeper, else a keeper. A taken box's owner is its
    best-ranked keeper neighbour, the one that took it in the box-by-box loop.
    """
    state = np.zeros(n, dtype=np.int8)  # 0 open, 1 keeper, 2 taken
    eu, ev = u, v
    while True:
        open_ = state == 0
        if not open_.any():
            break
        blocked = np.zeros(n, dtype=bool)
        blocked[ev[open_[eu]]] = True
        taken = np.zeros(n, dtype=bool)
        taken[ev[state[eu] == 1]] = True
        state[open_ & taken] = 2
        state[open_ & ~taken & ~blocked] = 1
        live = (state[ev] == 0) & (state[eu] != 2)
        eu, ev = eu[live], ev[live]
    owner = np.arange(n, dtype=np.int64)
    by_keeper = state[u] == 1
    ku, kv = u[by_keeper], v[by_keeper]
    order = np.lexsort((rank[ku], kv))
    kv, ku = kv[order], ku[order]
    first = np.ones(len(kv), dtype=bool)
    first[1:] = kv[1:] != kv[:-1]
    owner[kv[first]] = ku[first]
    return owner


def greedy_owner(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray | None = None,
    metric: Literal["iou", "ios"] = "iou",
    threshold: float = 0.5,
    max_candidates: float | None = 32.0,
) -> np.ndarray:
    """Greedy NMS/NMM assignment: (N, 4), (N,), (N,) -> owner (N,) int.

    Boxes are visited by score descending (stable); an unassigned box becomes a keeper
    (``owner[i] == i``) and takes every unassigned box of its class (``classes=None``:
    any class) whose overlap with the keeper's box is ``> threshold``. The NMS kept set
    is ``owner == arange(N)``; NMM merges each group ``owner == k`` into ``k``.

    The overlap graph (:func:`overlap_edges`, :func:`resolve_greedy`) costs in proportion to the
    candidate pairs its windows hold; past ``max_candidates`` per box (crowded boxes, where each
    keeper takes many) the keeper-by-keeper loop of :func:`greedy_owner_loop` is faster and takes
    over (``bench/merge.py``: 10k boxes hold ~13 IoS candidates per box, 50k ~60).
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    if n == 0:
        return np.full(0, -1, dtype=np.int64)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")] = np.arange(n)
    cls = np.zeros(n, dtype=np.int64) if classes is None else np.asarray(classes).reshape(-1)
    edges = overlap_edges(xyxy, rank, cls, metric == "iou", threshold, max_candidates)
    if edges is None:
        return greedy_owner_loop(xyxy, rank, cls, metric == "iou", threshold)
    return resolve_greedy(n, *edges, rank)


def greedy_owner_loop(xyxy: np.ndarray, rank: np.ndarray, cls: np.ndarray, iou: bool, thr: float) -> np.ndarray:
    """Keeper-by-keeper greedy pass, O(N) memory: (N, 4), rank (N,), classes (N,) -> owner (N,).

    Per class, boxes are sorted by x0 once and each keeper tests only the window of boxes with
    x0 in ``[x0_k - max_width, x1_k)``.
    """
    owner = np.full(len(xyxy), -1, dtype=np.int64)
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        owner[idx] = idx[_greedy_one_class(xyxy[idx], rank[idx], iou, thr)]
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
