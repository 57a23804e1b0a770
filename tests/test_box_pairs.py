"""The strip sweep's candidate pairs and the containment test against plain box-by-box references."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from vlpipe.agents.merge import box_pairs
from vlpipe.agents.merge.box_pairs import contained_in_larger, intersection, near_pairs, strip_windows
from vlpipe.agents.merge.merging import tile_fragments


def _ref_contained(boxes, classes, which, containment, larger=1.1):
    """Plain python: box i is contained if a same-class box over ``larger`` times its area holds
    at least ``containment`` of it."""
    def area(b):
        return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)

    out = []
    for i, a in enumerate(boxes):
        hit = False
        if which[i] and area(a) > 0:
            for j, b in enumerate(boxes):
                if classes[j] != classes[i] or not area(b) > larger * area(a):
                    continue
                inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
                hit |= inter / area(a) >= containment
        out.append(hit)
    return np.array(out)


def _scene(n, seed):
    """Objects, parts of them (integer cuts: exact 0.5 and 1.0 fractions occur), random and
    degenerate boxes."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(1, 80, (n, 2))], 1).astype(np.float64)
    part = boxes[: n // 3].copy()
    cut = rng.integers(0, 2, len(part)).astype(bool)  # keep the left or the top half or a random part
    part[cut, 2] = (part[cut, 0] + part[cut, 2]) // 2
    part[~cut, 1] += rng.integers(0, 40, (~cut).sum())
    boxes[n // 3: n // 3 + len(part)] = part
    boxes[-5:, 2] = boxes[-5:, 0]  # no width
    classes = rng.integers(0, 3, n)
    classes[n // 3: n // 3 + len(part)] = classes[: n // 3]
    return boxes, classes, rng.random(n) < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("containment", [0.0, 0.5, 0.8, 1.0])
def test_contained_in_larger_matches_reference(seed, containment):
    boxes, classes, which = _scene(240, seed)
    want = _ref_contained(boxes.tolist(), classes.tolist(), which.tolist(), containment)
    got = contained_in_larger(boxes, classes, which, containment)
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < which.sum()  # the scenes hold both outcomes


def test_near_pairs_hold_every_overlapping_pair_once(monkeypatch):
    monkeypatch.setattr(box_pairs, "_PAIR_BLOCK", 500)  # several blocks
    boxes, classes, _ = _scene(300, 3)
    pl = strip_windows(boxes, classes, 1.0)
    pairs, inters = [], []
    for p, q in near_pairs(pl):
        pairs += zip(pl.box[p].tolist(), pl.box[q].tolist())
        inters.append(intersection(pl, p, q))
    x0, y0, x1, y1 = boxes.T
    iw = np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0)
    ih = np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0)
    overlap = (iw > 0) & (ih > 0) & (classes[:, None] == classes)
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(overlap, 1)))}
    got = {(min(a, b), max(a, b)) for a, b in pairs}
    assert len(got) == len(pairs)  # no pair twice
    assert want <= got  # near pairs may also touch at an edge only
    a, b = np.array(pairs).T
    np.testing.assert_array_equal(np.concatenate(inters), np.clip(iw[a, b], 0, None) * ih[a, b])


def test_tile_fragments_drop_parts_cut_by_an_inner_border():
    # 200x200 image; tile views: left half [0, 100) and the full image
    full, left = [0, 0, 200, 200], [0, 0, 100, 200]
    xyxy = np.array([
        [60, 20, 140, 60],  # car seen whole by the full view
        [60, 20, 100, 60],  # its left part in the left tile, touching the tile's right border
        [60, 20, 100, 60],  # the same part named "dog": no larger dog
        [20, 100, 50, 130],  # a car inside the left tile, not touching its inner border
        [70, 120, 100, 150],  # touches the border, only 1/3 inside the big car below
        [0, 80, 80, 160],  # a big car of the full view
    ], dtype=np.float64)
    dets = sv.Detections(xyxy=xyxy, confidence=np.ones(6), data={
        "class_name": np.array(["car", "Car ", "dog", "car", "car", "car"]),
        "view_box": np.array([full, left, left, left, left, full], dtype=np.float64)})
    np.testing.assert_array_equal(tile_fragments(dets), [False, True, False, False, False, False])
    np.testing.assert_array_equal(tile_fragments(dets, containment=0.3), [False, True, False, False, True, False])
    np.testing.assert_array_equal(tile_fragments(dets, containment=0.0), [False, True, False, False, True, False])
    del dets.data["view_box"]
    assert not tile_fragments(dets).any()
