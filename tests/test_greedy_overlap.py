"""The sparse-graph greedy pass against a plain box-by-box reference and the O(N)-memory loop."""

from __future__ import annotations

import numpy as np
import pytest

from vlpipe.agents.merge import box_pairs
from vlpipe.agents.merge.greedy_overlap import (
    descending_order,
    greedy_owner,
    greedy_owner_loop,
    overlap_edges,
    resolve_greedy,
)


def _ref_owner(boxes, scores, classes, iou, thr):
    """Plain-python greedy: owner[i] = the keeper that took i (itself for keepers)."""
    n = len(boxes)
    order = sorted(range(n), key=lambda i: -scores[i])
    owner = [-1] * n
    for pos, k in enumerate(order):
        if owner[k] != -1:
            continue
        owner[k] = k
        a = boxes[k]
        area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
        for j in order[pos + 1:]:
            b = boxes[j]
            if owner[j] != -1 or classes[j] != classes[k]:
                continue
            inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
            area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
            denom = area_b + (area_a - inter) if iou else min(area_a, area_b)
            if inter > thr * denom:
                owner[j] = k
    return np.array(owner)


def _boxes(n, seed, canvas=400.0):
    """Mixed shapes: thin, wide, tiny, big, some duplicated and nested, some degenerate."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, canvas, (n, 2))
    wh = rng.uniform(1, 90, (n, 2)) * rng.choice([0.2, 1.0, 3.0], (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    boxes[: n // 10] = boxes[n // 10: 2 * (n // 10)]  # exact duplicates
    inner = boxes[n // 5: n // 4]
    boxes[n // 4: n // 4 + len(inner)] = inner + [[2, 2, -2, -2]]  # nested, may turn degenerate
    scores = rng.random(n).round(2)  # ties
    return boxes, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou", [True, False])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
def test_greedy_owner_matches_reference(seed, iou, thr):
    boxes, scores = _boxes(300, seed)
    classes = np.random.default_rng(seed).choice([-3, 7, 1000], len(boxes))
    want = _ref_owner(boxes.tolist(), scores.tolist(), classes.tolist(), iou, thr)
    for max_overlaps in (None, 16):  # the overlap graph, the default choice
        got = greedy_owner(boxes, scores, classes, "iou" if iou else "ios", thr, max_overlaps)
        np.testing.assert_array_equal(got, want)
    rank = np.argsort(np.argsort(-scores, kind="stable"))
    np.testing.assert_array_equal(greedy_owner_loop(boxes, rank, classes, iou, thr), want)


@pytest.mark.parametrize("metric", ["iou", "ios"])
def test_piled_up_boxes_fall_back_to_the_loop(metric):
    boxes, scores = _boxes(500, 3, canvas=40.0)  # everything overlaps everything
    graph = greedy_owner(boxes, scores, None, metric, 0.3, max_overlaps=None)
    assert overlap_edges(boxes, np.argsort(np.argsort(-scores, kind="stable")), np.zeros(500, int),
                         metric == "iou", 0.3, max_overlaps=10) is None
    np.testing.assert_array_equal(greedy_owner(boxes, scores, None, metric, 0.3, max_overlaps=10), graph)
    np.testing.assert_array_equal(graph, _ref_owner(boxes.tolist(), scores.tolist(), [0] * 500, metric == "iou", 0.3))


def test_edges_are_the_overlapping_pairs_oriented_by_rank():
    boxes, scores = _boxes(200, 4)
    rank = np.argsort(np.argsort(-scores, kind="stable"))
    u, v = overlap_edges(boxes, rank, np.zeros(200, int), False, 0.5)
    assert (rank[u] < rank[v]).all()
    x0, y0, x1, y1 = boxes.T
    inter = (np.clip(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), 0, None)
             * np.clip(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), 0, None))
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    dense = inter > 0.5 * np.minimum(area[:, None], area)
    np.fill_diagonal(dense, False)
    want = {(int(a), int(b)) for a, b in zip(*np.nonzero(dense)) if rank[a] < rank[b]}
    assert set(zip(u.tolist(), v.tolist())) == want
    assert len(u) == len(want)  # each pair once


@pytest.mark.parametrize("iou", [True, False])
def test_blocks_of_pairs_give_the_same_owner(monkeypatch, iou):
    boxes, scores = _boxes(400, 6)
    classes = np.random.default_rng(6).integers(0, 2, 400)
    want = _ref_owner(boxes.tolist(), scores.tolist(), classes.tolist(), iou, 0.4)
    monkeypatch.setattr(box_pairs, "_PAIR_BLOCK", 300)
    np.testing.assert_array_equal(greedy_owner(boxes, scores, classes, "iou" if iou else "ios", 0.4, None), want)


def test_descending_order_is_the_stable_sort():
    rng = np.random.default_rng(7)
    for scores in (rng.random(500), rng.random(500).round(1), np.array([0.5, np.nan, 0.5, np.nan, 1.0]),
                   np.array([0.0, -0.0, 0.0]), np.zeros(0)):
        want = sorted(range(len(scores)), key=lambda i: (np.isnan(scores[i]), -scores[i] if scores[i] == scores[i] else 0))
        np.testing.assert_array_equal(descending_order(scores), np.array(want, dtype=np.int64))


def test_resolve_greedy_on_a_chain():
    # 0 - 1 - 2 - 3 - 4 in rank order: 0 keeps, takes 1; 2 keeps, takes 3; 4 keeps
    u, v = np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4])
    np.testing.assert_array_equal(resolve_greedy(5, u, v, np.arange(5)), [0, 0, 2, 2, 4])
    # a taken box belongs to its best-ranked keeper neighbour: 3 overlaps keepers 0 and 2
    u, v = np.array([2, 0, 1]), np.array([3, 3, 2])
    np.testing.assert_array_equal(resolve_greedy(4, u, v, np.arange(4)), [0, 1, 1, 0])


def test_loop_equals_graph_on_crowded_scene():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 1500, (3000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 150, (3000, 2))], 1)
    scores, classes = rng.random(3000), rng.integers(0, 4, 3000)
    rank = np.argsort(np.argsort(-scores, kind="stable"))
    for metric in ("iou", "ios"):
        np.testing.assert_array_equal(greedy_owner(boxes, scores, classes, metric, 0.5, max_overlaps=None),
                                      greedy_owner_loop(boxes, rank, classes, metric == "iou", 0.5))
