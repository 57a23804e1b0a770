"""Tests for vlpipe.agents.tiles.grid (tiling, tile -> full-image mapping) and vlpipe.agents.merge.merging
(NMS / greedy NMM)."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from vlpipe.agents.merge.merging import merge_detections
from vlpipe.agents.tiles.grid import Tile, parse_grid, split_tiles, to_full_image


def dets(boxes, scores, names, masks=None) -> sv.Detections:
    return sv.Detections(
        xyxy=np.asarray(boxes, dtype=float).reshape(-1, 4),
        confidence=np.asarray(scores, dtype=float),
        mask=None if masks is None else np.asarray(masks, dtype=bool),
        data={"class_name": np.asarray(names, dtype=str)},
    )


def box_mask(box, hw) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- tiles


def test_split_default_is_full_plus_four_corners():
    tiles = split_tiles(480, 640)
    assert tiles == [
        Tile(0, 0, 640, 480),
        Tile(0, 0, 320, 240),
        Tile(320, 0, 640, 240),
        Tile(0, 240, 320, 480),
        Tile(320, 240, 640, 480),
    ]
    assert all((t.height, t.width) == (240, 320) for t in tiles[1:])
    assert split_tiles(480, 640, include_full=False) == tiles[1:]


def test_split_overlap_equal_sizes_and_borders():
    tiles = split_tiles(480, 640, grid=(3, 3), overlap=0.25)[1:]
    assert len(tiles) == 9
    assert len({(t.width, t.height) for t in tiles}) == 1
    w, h = tiles[0].width, tiles[0].height
    assert min(t.x0 for t in tiles) == 0 and max(t.x1 for t in tiles) == 640
    assert min(t.y0 for t in tiles) == 0 and max(t.y1 for t in tiles) == 480
    xs = sorted({t.x0 for t in tiles})
    # neighbours share ~25% of the tile width (rounding: +-1 px)
    for a, b in zip(xs, xs[1:]):
        assert abs((a + w - b) - 0.25 * w) <= 1
    assert all(0 <= t.x0 < t.x1 <= 640 and 0 <= t.y0 < t.y1 <= 480 for t in tiles)
    assert h > 480 / 3 and w > 640 / 3


def test_split_min_size_and_trivial_grid():
    assert split_tiles(100, 100) == [Tile(0, 0, 100, 100)]  # 50x50 tiles < 64
    assert len(split_tiles(100, 100, min_size=50)) == 5
    assert split_tiles(480, 640, grid=(1, 1)) == [Tile(0, 0, 640, 480)]
    assert split_tiles(480, 640, grid=(1, 1), include_full=False) == [Tile(0, 0, 640, 480)]
    assert split_tiles(480, 640, grid=(1, 2))[1:] == [Tile(0, 0, 320, 480), Tile(320, 0, 640, 480)]
    with pytest.raises(ValueError):
        split_tiles(480, 640, overlap=1.0)
    with pytest.raises(ValueError):
        split_tiles(480, 640, grid=(0, 2))


def test_parse_grid():
    assert parse_grid("2x2") == (2, 2)
    assert parse_grid(" 3X4 ") == (3, 4)
    for bad in ["2", "2x", "axb", "0x2", "2x2x2", "", "-1x2"]:
        with pytest.raises(ValueError, match="grid"):
            parse_grid(bad)


def test_tile_round_trip_box_mask():
    H, W = 480, 640
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    tile = split_tiles(H, W)[4]  # bottom-right, offset (320, 240)
    crop = tile.crop(image)
    assert crop.shape == (240, 320, 3)
    np.testing.assert_array_equal(crop, image[240:, 320:])

    full_box = (400, 300, 450, 350)
    tile_box = (80, 60, 130, 110)  # full_box - (320, 240)
    d_tile = dets([tile_box], [0.9], ["cat"], [box_mask(tile_box, (tile.height, tile.width))])
    d_tile.data["extra"] = np.array([7])
    d_full = to_full_image(d_tile, tile, (H, W))
    np.testing.assert_array_equal(d_full.xyxy, [full_box])
    np.testing.assert_array_equal(d_full.mask[0], box_mask(full_box, (H, W)))
    np.testing.assert_array_equal(tile.crop(d_full.mask[0][..., None])[..., 0], d_tile.mask[0])
    assert d_full.confidence[0] == 0.9 and d_full.data["class_name"][0] == "cat" and d_full.data["extra"][0] == 7
    np.testing.assert_array_equal(d_tile.xyxy, [tile_box])  # input untouched

    no_mask = to_full_image(dets([tile_box], [0.9], ["cat"]), tile, (H, W))
    assert no_mask.mask is None
    with pytest.raises(ValueError):
        to_full_image(dets([tile_box], [0.9], ["cat"], np.zeros((1, 10, 10))), tile, (H, W))


def test_tile_covering_a_float_box_padded_and_clipped():
    # box 9.9 x 3.3 px, pad 0.1: x 10.2 - 0.99 = 9.21 -> 9, 20.1 + 0.99 = 21.09 -> 22;
    # y 5.7 - 0.33 = 5.37 -> 5, 9.0 + 0.33 = 9.33 -> 10, clipped to the image's 8 rows
    assert Tile.covering((10.2, 5.7, 20.1, 9.0), (8, 30), pad=0.1) == Tile(9, 5, 22, 8)
    assert Tile.covering((10.2, 5.7, 20.1, 9.0), (8, 30)) == Tile(10, 5, 21, 8)
    assert Tile.covering((-5, -5, 3.5, 2), (8, 30)) == Tile(0, 0, 4, 2)
    assert Tile.covering((40, 0, 50, 5), (8, 30)) is None  # right of the image
    assert Tile.covering((3, 4, 3, 6), (8, 30)) is None  # no width


# --------------------------------------------------------------------------- merge, hand-made

A = [0, 0, 10, 10]  # area 100, score .9
B = [1, 0, 11, 10]  # area 100, score .8; A∩B = 9*10 = 90 -> IoU 90/110 = .818, IoS 90/100 = .9
C = [0, 0, 4, 10]  # area 40, score .7; A∩C = 40 -> IoU 40/100 = .4, IoS 40/40 = 1.0; B∩C = 30
D = [20, 20, 30, 30]  # score .6, disjoint from all
ABCD = dets([A, B, C, D], [0.9, 0.8, 0.7, 0.6], ["cat"] * 4)


def test_nms_iou():
    # A keeps; B suppressed (.818 > .5); C kept (.4); D kept (0)
    out = merge_detections(ABCD, method="nms", metric="iou")
    np.testing.assert_array_equal(out.xyxy, [A, C, D])
    np.testing.assert_allclose(out.confidence, [0.9, 0.7, 0.6])


def test_nms_ios():
    # A keeps; B (.9) and C (1.0) suppressed; D kept
    out = merge_detections(ABCD, method="nms", metric="ios")
    np.testing.assert_array_equal(out.xyxy, [A, D])


def test_nmm_iou():
    # A absorbs B (.818) -> union [0,0,11,10]; C (.4) stays; D stays
    out = merge_detections(ABCD, method="nmm", metric="iou")
    np.testing.assert_array_equal(out.xyxy, [[0, 0, 11, 10], C, D])
    np.testing.assert_allclose(out.confidence, [0.9, 0.7, 0.6])


def test_nmm_ios_default():
    # A absorbs B (.9) and C (1.0) -> union [0,0,11,10]; D stays
    out = merge_detections(ABCD)
    np.testing.assert_array_equal(out.xyxy, [[0, 0, 11, 10], D])
    assert list(out.data["class_name"]) == ["cat", "cat"]


def test_nmm_matches_against_original_keeper_box():
    # K=[0,0,10,10] .9, M=[2,0,12,10] .8: IoU 80/120 = .667 -> merged, box grows to [0,0,12,10]
    # G=[4,0,14,10] .7: IoU with K = 60/140 = .43 -> NOT merged (with the grown box it would be
    # 80/140 = .571); SAHI greedy_nmm semantics: G is its own keeper
    d = dets([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], [0.9, 0.8, 0.7], ["a"] * 3)
    out = merge_detections(d, method="nmm", metric="iou")
    np.testing.assert_array_equal(out.xyxy, [[0, 0, 12, 10], [4, 0, 14, 10]])


def test_class_aware_vs_agnostic():
    # A "cat" .9; E = B-box "Dog" .8 (IoU .818 with A); H = A-box " CAT " .7 (IoU 1.0, same class after
    # normalisation); unsorted input order to check the score sort
    d = dets([B, A, A], [0.8, 0.9, 0.7], ["Dog", "cat", " CAT "])
    aware = merge_detections(d, method="nms", metric="iou")
    np.testing.assert_array_equal(aware.xyxy, [A, B])
    assert list(aware.data["class_name"]) == ["cat", "Dog"]
    agnostic = merge_detections(d, method="nms", metric="iou", class_agnostic=True)
    np.testing.assert_array_equal(agnostic.xyxy, [A])
    # same through the greedy (IoS) path: IoS(A, B) = .9, IoS(A, A) = 1
    assert len(merge_detections(d, method="nms", metric="ios")) == 2
    merged = merge_detections(d, class_agnostic=True)
    np.testing.assert_array_equal(merged.xyxy, [[0, 0, 11, 10]])
    assert list(merged.data["class_name"]) == ["cat"]
    merged_aware = merge_detections(d)
    np.testing.assert_array_equal(merged_aware.xyxy, [A, B])


def test_names_are_matched_by_their_normalized_form():
    # "Dogs" and "dog" are one class (normalize_name: lowercase, head noun singular), "cat" another
    d = dets([A, B, B], [0.9, 0.8, 0.7], ["Dogs", "dog", "cat"])
    out = merge_detections(d, method="nms", metric="iou")  # IoU(A, B) = .818 > .5
    assert list(out.data["class_name"]) == ["Dogs", "cat"]


def test_nmm_masks_are_unions():
    hw = (20, 20)
    P, Q, R = (0, 0, 10, 10), (4, 0, 14, 10), (15, 15, 20, 20)  # IoS(P,Q) = 60/100 = .6; R disjoint
    d = dets([P, Q, R], [0.9, 0.8, 0.5], ["x"] * 3, [box_mask(b, hw) for b in (P, Q, R)])
    out = merge_detections(d)
    np.testing.assert_array_equal(out.xyxy, [[0, 0, 14, 10], R])
    np.testing.assert_array_equal(out.mask[0], box_mask((0, 0, 14, 10), hw))
    np.testing.assert_array_equal(out.mask[1], box_mask(R, hw))
    assert d.mask[0].sum() == 100  # input untouched
    nms = merge_detections(d, method="nms")
    np.testing.assert_array_equal(nms.mask[0], box_mask(P, hw))


def test_empty_and_single():
    empty = sv.Detections.empty()
    assert len(merge_detections(empty)) == 0
    assert len(merge_detections(empty, method="nms", metric="iou")) == 0
    one = dets([A], [0.5], ["a"])
    for method in ("nms", "nmm"):
        for metric in ("iou", "ios"):
            np.testing.assert_array_equal(merge_detections(one, method=method, metric=metric).xyxy, [A])
    with pytest.raises(ValueError):
        merge_detections(one, method="wbf")


def _split_object(full_score, left_score, right_score):
    H, W = 200, 400
    full, left, right = split_tiles(H, W, grid=(1, 2))
    assert (left, right) == (Tile(0, 0, 200, 200), Tile(200, 0, 400, 200))
    obj = (150, 50, 250, 100)  # straddles x = 200
    d_full = dets([obj], [full_score], ["car"], [box_mask(obj, (H, W))])
    lb, rb = (150, 50, 200, 100), (0, 50, 50, 100)  # tile coordinates of the two halves
    d_left = dets([lb], [left_score], ["car"], [box_mask(lb, (left.height, left.width))])
    d_right = dets([rb], [right_score], ["Car"], [box_mask(rb, (right.height, right.width))])
    parts = [to_full_image(d, t, (H, W)) for d, t in ((d_full, full), (d_left, left), (d_right, right))]
    return sv.Detections.merge(parts), obj, (H, W)


def test_object_split_across_tiles_merges_to_full_extent():
    # halves are contained in the full box: IoS = 2500/2500 = 1 (IoU = .5, which would not match)
    all_dets, obj, hw = _split_object(0.9, 0.8, 0.7)
    out = merge_detections(all_dets)
    assert len(out) == 1
    np.testing.assert_array_equal(out.xyxy, [obj])
    np.testing.assert_array_equal(out.mask[0], box_mask(obj, hw))
    assert out.confidence[0] == pytest.approx(0.9)
    assert len(merge_detections(all_dets, metric="iou")) == 3  # IoU(half, full) = .5, not > .5


def test_object_split_fragment_wins_needs_second_pass():
    # left half .9 absorbs the full box (IoS 1) but not the right half (IoS 0 with the left half's box);
    # a second pass merges the right half into the grown box (IoS 1)
    all_dets, obj, hw = _split_object(0.6, 0.9, 0.8)
    once = merge_detections(all_dets)
    assert len(once) == 2
    np.testing.assert_array_equal(once.xyxy[0], obj)
    twice = merge_detections(once)
    assert len(twice) == 1
    np.testing.assert_array_equal(twice.xyxy, [obj])
    np.testing.assert_array_equal(twice.mask[0], box_mask(obj, hw))
    assert twice.confidence[0] == pytest.approx(0.9)


# --------------------------------------------------------------------------- merge vs references


def _ref_metric(a, b, metric):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    denom = area_a + area_b - inter if metric == "iou" else min(area_a, area_b)
    return inter / denom if denom > 0 else 0.0


def _ref_greedy(boxes, scores, classes, metric, thr):
    """Plain-python greedy NMM: {keeper: [absorbed...]} in score order."""
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    taken, groups = set(), {}
    for pos, k in enumerate(order):
        if k in taken:
            continue
        taken.add(k)
        groups[k] = []
        for j in order[pos + 1 :]:
            if j not in taken and classes[j] == classes[k] and _ref_metric(boxes[k], boxes[j], metric) > thr:
                taken.add(j)
                groups[k].append(j)
    return groups


def _random_dets(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    return dets(boxes, rng.random(n), rng.choice(["a", "b", "c"], n))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["iou", "ios"])
@pytest.mark.parametrize("agnostic", [False, True])
def test_nms_matches_python_reference(seed, metric, agnostic):
    d = _random_dets(200, seed)
    classes = ["_"] * len(d) if agnostic else list(d.data["class_name"])
    for thr in (0.3, 0.5):
        groups = _ref_greedy(d.xyxy.tolist(), d.confidence.tolist(), classes, metric, thr)
        out = merge_detections(d, method="nms", metric=metric, threshold=thr, class_agnostic=agnostic)
        np.testing.assert_array_equal(out.xyxy, d.xyxy[list(groups)])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("metric", ["iou", "ios"])
def test_nmm_matches_python_reference(seed, metric):
    d = _random_dets(200, seed)
    groups = _ref_greedy(d.xyxy.tolist(), d.confidence.tolist(), list(d.data["class_name"]), metric, 0.5)
    out = merge_detections(d, method="nmm", metric=metric, threshold=0.5)
    assert len(out) == len(groups) < len(d)
    for row, (k, members) in zip(out.xyxy, groups.items()):
        g = d.xyxy[[k, *members]]
        np.testing.assert_array_equal(row, [*g[:, :2].min(0), *g[:, 2:].max(0)])
    assert list(out.data["class_name"]) == [d.data["class_name"][k] for k in groups]
    np.testing.assert_array_equal(out.confidence, d.confidence[list(groups)])


@pytest.mark.parametrize("agnostic", [False, True])
def test_large_nms_iou_matches_torchvision(agnostic):
    # torchvision's NMS as an independent reference at a size where the overlap graph runs
    import torch
    import torchvision

    rng = np.random.default_rng(3)
    n = 6000
    xy = rng.uniform(0, 2000, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], axis=1)
    d = dets(boxes, rng.random(n), rng.choice(["a", "b"], n))
    out = merge_detections(d, method="nms", metric="iou", class_agnostic=agnostic)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(d.confidence)
    if agnostic:
        ref = torchvision.ops.nms(tb, ts, 0.5)
    else:
        ref = torchvision.ops.batched_nms(tb, ts, torch.from_numpy((d.data["class_name"] == "b").astype(np.int64)), 0.5)
    np.testing.assert_array_equal(out.xyxy, boxes[ref.numpy()])


# --------------------------------------------------------------------------- crop-RLE masks


def _blob_masks(boxes, hw, seed):
    """(N, H, W) random blobs, each inside its (integer) box."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(boxes), *hw), dtype=bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6
        m[y0, x0] = m[y1 - 1, x1 - 1] = True  # the blob spans its whole box
    return masks


def _compact(d: sv.Detections, hw) -> sv.Detections:
    out = dets(d.xyxy, d.confidence, d.data["class_name"])
    out.mask = sv.CompactMask.from_dense(d.mask, sv.mask_to_xyxy(d.mask), hw)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_nmm_on_compact_masks_ors_each_group(seed):
    hw = (120, 160)
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 120, (60, 2))
    wh = rng.integers(4, 40, (60, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [160, 120])], 1)
    dense = dets(boxes, rng.random(60), rng.choice(["a", "b"], 60), _blob_masks(boxes, hw, seed))
    groups = _ref_greedy(dense.xyxy.tolist(), dense.confidence.tolist(),
                         list(dense.data["class_name"]), "ios", 0.5)
    assert any(groups.values()), "no group to merge: pick another seed"
    out = merge_detections(_compact(dense, hw))
    assert isinstance(out.mask, sv.CompactMask) and out.mask.shape == (len(groups), *hw)
    for got, (k, members) in zip(np.asarray(out.mask), groups.items()):
        np.testing.assert_array_equal(got, dense.mask[[k, *members]].any(0))
    np.testing.assert_array_equal(out.xyxy, merge_detections(dense).xyxy)


def test_compact_masks_map_from_a_tile_without_a_full_image_array():
    H, W = 480, 640
    tile = split_tiles(H, W)[4]  # offset (320, 240)
    boxes = [(80, 60, 130, 110), (0, 0, 5, 7)]
    masks = _blob_masks(boxes, (tile.height, tile.width), 3)
    d_tile = _compact(dets(boxes, [0.9, 0.8], ["cat", "dog"], masks), (tile.height, tile.width))
    d_full = to_full_image(d_tile, tile, (H, W))
    assert isinstance(d_full.mask, sv.CompactMask) and d_full.mask.shape == (2, H, W)
    expected = np.zeros((2, H, W), dtype=bool)
    expected[:, 240:, 320:] = masks
    np.testing.assert_array_equal(np.asarray(d_full.mask), expected)
