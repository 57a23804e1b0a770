"""Candidate pairs of overlapping same-class boxes, found by a vectorized sweep (no N x N matrix).

:func:`strip_windows` places the boxes in horizontal strips, sorted by x0, so that every pair
that can match lies in one window of consecutive placements; :func:`near_pairs` yields those
pairs whose y ranges overlap, in blocks that bound the temporaries. The greedy NMS/NMM pass
(:mod:`vlpipe.agents.merge.greedy_overlap`) and :func:`contained_in_larger` (tile fragments) test them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["Placements", "strip_windows", "near_pairs", "intersection", "contained_in_larger"]

# candidate pairs examined per vectorized block (bounds the temporaries, ~100 MB)
_PAIR_BLOCK = 2_000_000


class Placements(NamedTuple):
    """Boxes placed in strips, sorted by strip then x0; all arrays (P,).

    ``box`` is the placed box's index, ``real`` False for a ghost (a box placed again in the
    strip below its own), ``count`` how many following placements share its window."""

    box: np.ndarray
    real: np.ndarray
    count: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray


def strip_windows(xyxy: np.ndarray, classes: np.ndarray, reach: float) -> Placements:
    """Place the boxes with area so that every matching pair shares a window: (N, 4), (N,) -> Placements.

    Two boxes can match only if the lower one's y0 lies within ``reach * height`` of the upper
    one's y0, and likewise in x (IoU > t needs an overlap > t * side in each axis, so
    ``reach = 1 - t``; any overlap: ``reach = 1``). Strips (per class) are as tall as the tallest
    such reach (+1 px: windows err wide), and a box that reaches into the strip below is placed
    there too, as a ghost. So a matching pair shares the strip of the lower box's real placement,
    where the upper one precedes it by strip and x0 or follows it within ``reach * width`` of
    its x0 (+1 px); placement ``i`` pairs with its next ``count[i]`` placements. Two ghosts of a
    strip are both real in the strip above, so :func:`near_pairs` skips such pairs.
    """
    x0, y0, x1, y1 = np.ascontiguousarray(xyxy.T)
    box = np.flatnonzero((x1 > x0) & (y1 > y0))  # boxes without area (or NaN) overlap nothing
    if len(box) == 0:
        empty = np.zeros(0, np.int64)
        return Placements(empty, np.zeros(0, bool), empty, *np.zeros((4, 0)))
    x0, y0, x1, y1 = x0[box], y0[box], x1[box], y1[box]
    w, extent = x1 - x0, (y1 - y0) * reach + 1.0
    strip_h, y_from = float(extent.max()), float(y0.min())
    first = np.floor((y0 - y_from) / strip_h)
    ghost = np.flatnonzero(np.floor((y0 + extent - y_from) / strip_h) > first)
    cls = classes.reshape(-1)[box]
    cls = cls - cls.min()
    if cls.max() >= len(cls):  # sparse codes: number them densely
        cls = np.unique(cls, return_inverse=True)[1].reshape(-1)
    strip = first + cls * (first.max() + 2)  # an empty strip between classes
    at = np.concatenate([np.arange(len(box)), ghost])
    x_from = float(x0.min())
    span = float(x0.max() - x_from) + 2 * float(w.max()) + 4  # a strip's extent in the key
    key = np.concatenate([strip, strip[ghost] + 1]) * span + (x0[at] - x_from)
    order = np.argsort(key)  # ties in any order: either box of a pair may look right
    key, at = key[order], at[order]
    count = np.searchsorted(key, key + (w[at] * reach + 1.0))
    count -= np.arange(1, len(key) + 1)
    np.maximum(count, 0, out=count)
    return Placements(box[at], order < len(box), count, x0[at], y0[at], x1[at], y1[at])


def near_pairs(pl: Placements, sample: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The windows' pairs whose y ranges overlap, not both ghosts: -> blocks of (p (S,), q (S,)).

    ``p < q`` index placements; each pair of boxes comes once. ``sample``: only those among
    that many pairs drawn at random (with replacement, fixed seed) from the windows, one block."""
    total = np.cumsum(pl.count)
    if len(total) == 0 or total[-1] == 0:
        return
    if sample is not None:
        flat = np.sort(np.random.default_rng(0).integers(0, total[-1], sample))
        p = np.searchsorted(total, flat, side="right")
        blocks = [(p, flat - (total[p] - pl.count[p]) + p + 1)]
    else:
        blocks = _window_blocks(pl.count, total)
    for p, q in blocks:
        near = pl.y0[q] < pl.y1[p]
        near &= pl.y0[p] < pl.y1[q]
        near &= pl.real[p] | pl.real[q]
        s = np.flatnonzero(near)
        yield p[s], q[s]


def _window_blocks(count: np.ndarray, total: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every window pair, in blocks of about ``_PAIR_BLOCK``: count, cumsum (P,) -> (p, q) blocks."""
    bounds = np.searchsorted(total, np.arange(0, int(total[-1]), _PAIR_BLOCK), side="right")
    for a, b in zip(bounds, [*bounds[1:], len(total)]):
        base = total[a - 1] if a else 0  # pairs before this block
        p = np.repeat(np.arange(a, b), count[a:b])
        q = np.repeat(np.arange(a + 1, b + 1) - (total[a:b] - count[a:b] - base), count[a:b])
        q += np.arange(total[b - 1] - base)
        yield p, q


def intersection(pl: Placements, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Intersection areas of near pairs (y ranges overlap): (S,), (S,) -> (S,) float64, >= 0.

    ``max(iw, 0) * ih``, as the box-by-box tests compute it (their ``max(ih, 0)`` is ``ih``)."""
    ih = np.minimum(pl.y1[p], pl.y1[q])
    ih -= np.maximum(pl.y0[p], pl.y0[q])
    iw = np.minimum(pl.x1[p], pl.x1[q])
    iw -= np.maximum(pl.x0[p], pl.x0[q])
    np.maximum(iw, 0.0, out=iw)
    iw *= ih
    return iw


def contained_in_larger(
    xyxy: np.ndarray, classes: np.ndarray, which: np.ndarray, containment: float, larger: float = 1.1
) -> np.ndarray:
    """Which boxes lie mostly inside a larger box of their class: (N, 4), (N,), (N,) bool -> (N,) bool.

    Box ``i`` (with ``which[i]`` and an area) is contained when some box ``j`` of its class has
    ``area[j] > larger * area[i]`` and ``max(iw, 0) * max(ih, 0) / area[i] >= containment``, the
    same float64 arithmetic as testing ``i`` against every box.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    area = np.clip(xyxy[:, 2] - xyxy[:, 0], 0, None) * np.clip(xyxy[:, 3] - xyxy[:, 1], 0, None)
    which = np.asarray(which, dtype=bool) & (area > 0)
    out = np.zeros(len(xyxy), dtype=bool)
    if len(xyxy) == 0:
        return out
    if containment <= 0:  # any larger box of the class will do, overlapping or not
        codes = np.unique(classes, return_inverse=True)[1].reshape(-1)
        largest = np.zeros(codes.max() + 1)
        np.maximum.at(largest, codes, area)
        return which & (largest[codes] > larger * area)
    pl = strip_windows(xyxy, classes, 1.0)
    a, cand = area[pl.box], which[pl.box]
    for p, q in near_pairs(pl):
        inter = intersection(pl, p, q)
        for i, j in ((p, q), (q, p)):
            k = np.flatnonzero(cand[i] & (a[j] > larger * a[i]))
            hit = inter[k] / a[i[k]] >= containment
            out[pl.box[i[k[hit]]]] = True
    return out
