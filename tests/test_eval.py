"""vlpipe.eval against hand-worked values and against pycocotools' official COCOeval."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO as PyCOCO
from pycocotools.cocoeval import COCOeval as PyCOCOeval

from vlpipe.eval import evaluate

H, W = 240, 320


def rle(box, h=H, w=W):
    """JSON-ready RLE of a filled axis-aligned rectangle [x, y, w, h] (integers)."""
    x, y, bw, bh = box
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[y : y + bh, x : x + bw] = 1
    r = mask_utils.encode(m)
    r["counts"] = r["counts"].decode("ascii")
    return r


def make_gt(boxes_per_image, categories, image_fields=None):
    """COCO gt from {image_id: [(category_id, [x, y, w, h]), ...]}, masks included."""
    images, anns = [], []
    for img_id, boxes in boxes_per_image.items():
        images.append({"id": img_id, "height": H, "width": W, "file_name": f"{img_id}.jpg", **(image_fields or {}).get(img_id, {})})
        for cat, box in boxes:
            anns.append({
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": cat,
                "bbox": list(box),
                "area": box[2] * box[3],
                "iscrowd": 0,
                "segmentation": rle(box),
            })
    return {"images": images, "annotations": anns, "categories": categories}


def det(img_id, cat, box, score, with_mask=True):
    d = {"image_id": img_id, "category_id": cat, "bbox": list(box), "score": score}
    if with_mask:
        d["segmentation"] = rle(box)
    return d


def perfect(gt):
    return [
        det(a["image_id"], a["category_id"], a["bbox"], 0.9 - 0.01 * i) for i, a in enumerate(gt["annotations"])
    ]


CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
SIMPLE = {
    1: [(1, (10, 10, 100, 100)), (2, (150, 20, 40, 40))],
    2: [(1, (50, 60, 100, 100))],
    3: [(2, (5, 5, 20, 20)), (2, (200, 100, 100, 100))],
}


def test_perfect_predictions_give_ap_one():
    gt = make_gt(SIMPLE, CATS)
    m = evaluate(gt, perfect(gt))
    assert set(m) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(m[iou_type]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR"}  # no APr/APc/APf
        for value in m[iou_type].values():
            assert value == pytest.approx(1.0)
            assert isinstance(value, float)


def test_gt_dict_and_results_are_not_modified():
    gt = make_gt(SIMPLE, CATS)
    res = [{k: v for k, v in d.items() if k != "segmentation"} for d in perfect(gt)]
    gt0, res0 = copy.deepcopy(gt), copy.deepcopy(res)
    evaluate(gt, res)
    assert gt == gt0 and res == res0


def test_shifted_boxes_worked_out_ap():
    # Three images, one category, one 100x100 box each; every prediction is its box moved
    # 20 px right. Overlap 80x100 = 8000, union 2*10000 - 8000 = 12000, IoU = 2/3 = 0.667.
    # It matches at IoU thresholds 0.50, 0.55, 0.60, 0.65 (4 of the 10) with precision and
    # recall 1 (one prediction per gt, no false positives, so the ranking is perfect), and
    # at 0.70 ... 0.95 (6 of 10) every prediction is a false positive and recall is 0.
    # AP = mean over thresholds = 4/10 = 0.4; AP50 = 1; AP75 = 0. The masks are the same
    # rectangles, so the pixel IoU is the same 2/3 and segm gives the same numbers.
    boxes = {1: [(1, (10, 10, 100, 100))], 2: [(1, (100, 50, 100, 100))], 3: [(1, (0, 0, 100, 100))]}
    gt = make_gt(boxes, [{"id": 1, "name": "box"}])
    res = [det(i, 1, (x + 20, y, w, h), 0.5 + 0.1 * i) for i, [(_, (x, y, w, h))] in boxes.items()]
    m = evaluate(gt, res)
    for iou_type in ("bbox", "segm"):
        assert m[iou_type]["AP"] == pytest.approx(0.4, abs=1e-9)
        assert m[iou_type]["AP50"] == pytest.approx(1.0)
        assert m[iou_type]["AP75"] == pytest.approx(0.0)
        assert m[iou_type]["AR"] == pytest.approx(0.4, abs=1e-9)  # recall 1 at 4 of 10 thresholds


def random_case(seed=0, n_images=6):
    """Boxes of all sizes, misses, duplicates, false positives and jittered predictions."""
    rng = np.random.default_rng(seed)
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    boxes = {}
    for img in range(1, n_images + 1):
        boxes[img] = []
        for _ in range(rng.integers(1, 6)):
            w, h = (int(v) for v in rng.integers(8, 140, size=2))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            boxes[img].append((int(rng.integers(1, 4)), (x, y, w, h)))
    gt = make_gt(boxes, cats)
    res = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed
        x, y, w, h = a["bbox"]
        dx, dy = (int(v) for v in rng.integers(-8, 9, size=2))
        box = (max(0, x + dx), max(0, y + dy), w, h)
        box = (box[0], box[1], min(w, W - box[0]), min(h, H - box[1]))
        res.append(det(a["image_id"], a["category_id"], box, float(rng.random())))
    for img in boxes:  # false positives
        for _ in range(2):
            w, h = (int(v) for v in rng.integers(8, 100, size=2))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            res.append(det(img, int(rng.integers(1, 4)), (x, y, w, h), float(rng.random())))
    return gt, res


def pycocotools_stats(gt, res, iou_type):
    coco_gt = PyCOCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(res))
    return summary_stats(PyCOCOeval(coco_gt, coco_dt, iou_type))


def summary_stats(ev) -> dict[str, float]:
    """Run a COCOeval-like ``ev`` and name the figures of its summary that ``evaluate`` gives."""
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats
    return {"AP": s[0], "AP50": s[1], "AP75": s[2], "APs": s[3], "APm": s[4], "APl": s[5], "AR": s[8]}


def assert_same_stats(ours: dict, ref: dict, iou_type: str) -> None:
    """``evaluate``'s figures equal the reference's; the ones it cannot give (-1) are absent."""
    for key, value in ref.items():
        if value > -1:
            assert ours[iou_type][key] == pytest.approx(value, abs=1e-6), (iou_type, key)
        else:
            assert key not in ours[iou_type]


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_mode_matches_pycocotools(seed):
    gt, res = random_case(seed)
    ours = evaluate(gt, res, lvis=False)
    for iou_type in ("bbox", "segm"):
        ref = pycocotools_stats(gt, res, iou_type)
        assert 0 < ref["AP"] < 1  # a non-trivial case
        assert_same_stats(ours, ref, iou_type)


def test_segm_skipped_without_masks_and_empty_results_give_zeros():
    gt = make_gt(SIMPLE, CATS)
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in perfect(gt)]
    m = evaluate(gt, boxes_only)
    assert set(m) == {"bbox"} and m["bbox"]["AP"] == pytest.approx(1.0)
    null_masks = [d | {"segmentation": None} for d in boxes_only]  # a null mask is no mask
    assert evaluate(gt, null_masks) == m
    empty = evaluate(gt, [])
    assert set(empty) == {"bbox", "segm"}
    for metrics in empty.values():
        assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0


# --------------------------------------------------------------------------------------------
# LVIS
# --------------------------------------------------------------------------------------------

LVIS_CATS = [
    {"id": 1, "name": "apple", "frequency": "f", "synonyms": ["apple"]},
    {"id": 2, "name": "bow_(weapon)", "frequency": "c", "synonyms": ["bow_(weapon)"]},
    {"id": 3, "name": "yak", "frequency": "r", "synonyms": ["yak"]},
]


def lvis_gt():
    # Image 1: apple and bow annotated, yak verified absent, apples not exhaustively annotated.
    # Image 2: yak annotated, apple verified absent; nothing said about bows.
    gt = make_gt(
        {1: [(1, (10, 10, 60, 60)), (2, (120, 30, 100, 100))], 2: [(3, (40, 40, 120, 90))]},
        LVIS_CATS,
        {
            1: {"neg_category_ids": [3], "not_exhaustive_category_ids": [1]},
            2: {"neg_category_ids": [1], "not_exhaustive_category_ids": []},
        },
    )
    for a in gt["annotations"]:  # LVIS annotations carry no iscrowd
        del a["iscrowd"]
    return gt


def test_lvis_perfect_predictions():
    gt = lvis_gt()
    m = evaluate(gt, perfect(gt))  # LVIS detected from the fields
    for iou_type in ("bbox", "segm"):
        assert {"APr", "APc", "APf"} <= set(m[iou_type])
        for key in ("AP", "AP50", "AP75", "APr", "APc", "APf", "AR"):
            assert m[iou_type][key] == pytest.approx(1.0), (iou_type, key)


def test_lvis_federated_rules_hand_checked():
    gt = lvis_gt()
    res = perfect(gt)
    # A confident false positive apple on image 1, far from the real apple. Apples are not
    # exhaustively annotated there, so LVIS ignores it: AP stays 1. COCO mode counts it:
    # apple detections ranked [FP, TP] give precision 1/2 at recall 1, so apple AP = 0.5 at
    # every IoU threshold and AP = (0.5 + 1 + 1) / 3 = 5/6.
    fp_not_exhaustive = det(1, 1, (250, 150, 50, 50), 0.99)
    # A bow on image 2, where bows are neither annotated nor verified absent: LVIS drops it.
    fp_unknown = det(2, 2, (10, 150, 50, 50), 0.98)
    m = evaluate(gt, [*res, fp_not_exhaustive, fp_unknown], iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(1.0)
    coco = evaluate(gt, [*res, fp_not_exhaustive], iou_types=("bbox",), lvis=False)
    assert coco["bbox"]["AP"] == pytest.approx(5 / 6)
    assert "APr" not in coco["bbox"]
    # An apple on image 2, where apples are verified absent, is a false positive for LVIS too.
    # Apple detections [FP (0.99, image 2), TP] -> apple AP 0.5 -> AP 5/6, APf (apple) 0.5.
    fp_negative = det(2, 1, (250, 150, 50, 50), 0.99)
    m = evaluate(gt, [*res, fp_negative], iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(5 / 6)
    assert m["bbox"]["APf"] == pytest.approx(0.5)
    assert m["bbox"]["APr"] == pytest.approx(1.0) and m["bbox"]["APc"] == pytest.approx(1.0)


def test_lvis_uses_300_detections_per_image():
    # 150 ignored (not-exhaustive) apples outrank the true one, which is detection 151:
    # counted with LVIS's 300 per image, cut off with COCO's 100.
    gt = lvis_gt()
    res = perfect(gt)
    res += [det(1, 1, (250, 150, 20, 20), 0.999, with_mask=False) for _ in range(150)]
    assert evaluate(gt, res, iou_types=("bbox",))["bbox"]["APf"] == pytest.approx(1.0)
    assert evaluate(gt, res, iou_types=("bbox",), max_dets=100)["bbox"]["APf"] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_or_bad_gt_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="nope.json"):
        evaluate(missing, [])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        evaluate(bad, [])
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="wrong.json.*not in COCO/LVIS format"):
        evaluate(wrong, [])


def test_gt_file_path_works(tmp_path):
    gt = make_gt(SIMPLE, CATS)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert evaluate(str(path), perfect(gt))["bbox"]["AP"] == pytest.approx(1.0)


def test_fixed_ap_worked_out_by_hand():
    """One LVIS category, GT g1, g2 in image 1 and g3 in image 2; detections, best first:
    d1 0.9 on g1, d2 0.8 a false positive (image 1), d3 0.7 on g3, d4 0.6 on g2.

    COCO/LVIS AP interpolates precision at 101 recall points r = 0, 0.01, ..., 1.
    - 2 detections per image: d4 is cut (third in image 1): d1 d2 d3 -> recall 1/3, 1/3, 2/3,
      precision 1, 1/2, 2/3; interpolated 1 for r <= 0.33 (34 points), 2/3 for 0.34..0.66
      (33 points), 0 after: AP = (34 + 33 * 2/3) / 101 = 56 / 101.
    - fixed AP, no per-image cap: d4 counts, precision 3/4 at recall 1; interpolated 1 for
      r <= 0.33, 3/4 for the other 67 points: AP = (34 + 67 * 3/4) / 101.
    - fixed AP with 3 detections per category over the dataset: d1 d2 d3 again: 56 / 101.
    """
    cats = [{"id": 1, "name": "cat", "frequency": "f"}]
    gt = make_gt({1: [(1, (0, 0, 10, 10)), (1, (20, 20, 10, 10))], 2: [(1, (0, 0, 10, 10))]},
                 cats, {1: {"neg_category_ids": [], "not_exhaustive_category_ids": []},
                        2: {"neg_category_ids": [], "not_exhaustive_category_ids": []}})
    res = [det(1, 1, (0, 0, 10, 10), 0.9), det(1, 1, (100, 100, 10, 10), 0.8),
           det(2, 1, (0, 0, 10, 10), 0.7), det(1, 1, (20, 20, 10, 10), 0.6)]
    capped = evaluate(gt, res, iou_types=["bbox"], max_dets=2)["bbox"]["AP"]
    fixed = evaluate(gt, res, iou_types=["bbox"], max_dets=2, fixed_ap=True)["bbox"]["AP"]
    top3 = evaluate(gt, res, iou_types=["bbox"], fixed_ap=True, per_category=3)["bbox"]["AP"]
    assert capped == pytest.approx(56 / 101, abs=1e-6)
    assert fixed == pytest.approx((34 + 67 * 3 / 4) / 101, abs=1e-6)
    assert top3 == pytest.approx(56 / 101, abs=1e-6)


def test_eval_command_takes_fixed_ap(tmp_path):
    from typer.testing import CliRunner

    from vlpipe.cli import app

    gt = make_gt(SIMPLE, [dict(c, frequency="f") for c in CATS])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(perfect(gt)))
    out = CliRunner().invoke(app, ["eval", str(tmp_path / "results.json"), "--gt",
                                   str(tmp_path / "gt.json"), "--fixed-ap", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["bbox"]["AP"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# Results files of other shapes (issue 23): what COCO.loadRes and LVISResults accept
# --------------------------------------------------------------------------------------------


def ellipse_rle(cx, cy, rx, ry):
    """JSON-ready RLE of a filled ellipse (its box and area differ from any rectangle's)."""
    yy, xx = np.mgrid[:H, :W]
    m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


def segm_only_case(seed):
    """GT ellipses of all sizes and results with a mask only (no bbox, as the COCO API's
    ``fakesegm`` example): jittered, missed, duplicated and false-positive ellipses."""
    rng = np.random.default_rng(seed)
    images, anns, res = [], [], []
    for img in range(1, 6):
        images.append({"id": img, "height": H, "width": W, "file_name": f"{img}.jpg"})
        for _ in range(rng.integers(1, 5)):
            rx, ry = (int(v) for v in rng.integers(3, 70, size=2))
            cx, cy = int(rng.integers(rx, W - rx)), int(rng.integers(ry, H - ry))
            cat = int(rng.integers(1, 3))
            m = ellipse_rle(cx, cy, rx, ry)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat,
                         "segmentation": m, "area": float(mask_utils.area(m)),
                         "bbox": [float(v) for v in mask_utils.toBbox(m)], "iscrowd": 0})
            for _ in range(int(rng.integers(0, 3))):  # none (a miss), one, or a duplicate
                dx, dy = (int(v) for v in rng.integers(-6, 7, size=2))
                res.append({"image_id": img, "category_id": cat, "score": float(rng.random()),
                            "segmentation": ellipse_rle(cx + dx, cy + dy, rx, ry)})
        res.append({"image_id": img, "category_id": int(rng.integers(1, 3)),
                    "score": float(rng.random()), "segmentation": ellipse_rle(60, 60, 20, 9)})
    return {"images": images, "annotations": anns, "categories": CATS}, res


def faster_coco_eval_stats(gt, res, iou_type):
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    coco_gt = FCOCO(copy.deepcopy(gt))
    return summary_stats(COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(res)), iou_type,
                                         print_function=lambda *a: None))


@pytest.mark.parametrize("seed", [0, 1])
def test_segmentation_only_results_match_the_official_evaluators(seed):
    gt, res = segm_only_case(seed)
    assert all("bbox" not in r for r in res)
    ours = evaluate(gt, res, lvis=False)
    for iou_type in ("bbox", "segm"):  # bbox: the boxes loadRes derives from the masks
        for reference in (pycocotools_stats, faster_coco_eval_stats):
            ref = reference(gt, res, iou_type)
            assert 0 < ref["AP"] < 1
            assert_same_stats(ours, ref, iou_type)


def test_mask_area_decides_the_size_range_of_a_mask_only_result():
    """A false-positive ring of about 1,160 pixels (medium, 32^2..96^2) whose box is 126 x 126
    (large), scored above the true positive of a medium GT ellipse. loadRes gives a mask-only
    result the mask's area: the ring is a medium false positive, ranked first, so the medium
    precision at recall 1 is 1/2 and APm = 0.5 (a box-area rule would ignore it: APm 1)."""
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(xx - 160, yy - 120)
    ring = mask_utils.encode(np.asfortranarray(((r >= 60) & (r < 63)).astype(np.uint8)))
    ring["counts"] = ring["counts"].decode("ascii")
    assert 32 ** 2 < mask_utils.area(ring) < 96 ** 2 < 126 * 126
    blob = ellipse_rle(40, 40, 25, 18)  # about 1,400 pixels: medium
    gt = {"images": [{"id": 1, "height": H, "width": W}], "categories": CATS,
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": blob,
                           "area": float(mask_utils.area(blob)),
                           "bbox": [float(v) for v in mask_utils.toBbox(blob)], "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 1, "score": 0.9, "segmentation": ring},
           {"image_id": 1, "category_id": 1, "score": 0.4, "segmentation": blob}]
    got = evaluate(gt, res, lvis=False)["segm"]
    assert got["APm"] == pytest.approx(0.5)
    ref = pycocotools_stats(gt, res, "segm")
    assert got == pytest.approx({k: v for k, v in ref.items() if v > -1})


def test_results_from_other_tools_are_read_as_the_coco_api_reads_them():
    gt = make_gt(SIMPLE, CATS)
    ref = evaluate(gt, perfect(gt))
    others = []
    for k, d in enumerate(perfect(gt)):
        d = dict(d, score=int(k < 2) + 1, extra={"tool": "x"}, area=-5, id=99, iscrowd=1)
        d["category_id"] = float(d["category_id"])  # 1.0: what some exporters write
        if k % 2:
            d["bbox"] = []  # loadRes takes the box from the mask then
        others.append(d)
    got = evaluate(gt, others)
    assert got.keys() == ref.keys() and all(got[t] == pytest.approx(ref[t]) for t in ref)
    # mixed: some with a box only, some with a mask only (the official API fails on these)
    mixed = [{k: v for k, v in d.items() if k != ("bbox" if i % 2 else "segmentation")}
             for i, d in enumerate(perfect(gt))]
    assert evaluate(gt, mixed)["bbox"] == pytest.approx(ref["bbox"])
    # polygons without a box: read at the image's size from the ground truth
    polygons = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.5,
                 "segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]]}
                for a in gt["annotations"] for x, y, w, h in [a["bbox"]]]
    assert evaluate(gt, polygons, lvis=False)["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("result, message", [
    ("a string", "result 0 is not a JSON object but str"),
    ({"image_id": 1, "category_id": 1, "score": 1}, "result 0 has neither bbox nor segmentation"),
    ({"image_id": 1, "category_id": 1, "score": 1, "keypoints": [1, 2, 2]},
     "result 0 has neither bbox nor segmentation but keypoints: vlpipe eval scores boxes and masks"),
    ({"image_id": 1, "bbox": [0, 0, 1, 1]}, "result 0 has no category_id, score"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "0.9"},
     "result 0: score must be a finite number, got '0.9'"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")},
     "result 0: score must be a finite number, got nan"),
    ({"image_id": 1, "category_id": "cat", "bbox": [0, 0, 1, 1], "score": 1},
     "result 0: category_id must be an integer, got 'cat'"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1},
     "result 0: bbox must be [x, y, width, height], got [0, 0, 1]"),
    ({"image_id": 1, "category_id": 1, "segmentation": {"counts": "abc"}, "score": 1},
     "result 0: unreadable segmentation (missing 'size')"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1, "segmentation": "abc"},
     "result 0: unreadable segmentation (expected an RLE object or a list of polygons, got str)"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1,
      "segmentation": {"size": [20, 20]}}, "result 0: unreadable segmentation (missing 'counts')"),
    ({"image_id": "1", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1},
     "image ids not in the ground truth: ['1'] (the results give ids as text"),
])
def test_unreadable_results_name_the_result_and_the_problem(result, message):
    from vlpipe.eval import ResultsError

    gt = make_gt(SIMPLE, CATS)
    with pytest.raises(ResultsError) as caught:
        evaluate(gt, [result])
    assert message in str(caught.value)


def test_eval_command_names_the_results_file(tmp_path):
    from typer.testing import CliRunner

    from vlpipe.cli import app

    gt = make_gt(SIMPLE, CATS)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = tmp_path / "other-tool.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    out = CliRunner().invoke(app, ["eval", str(results), "--gt", str(tmp_path / "gt.json")])
    assert out.exit_code == 2
    assert f"error: results file '{results}': result 0 has neither bbox nor segmentation" \
        in out.stderr
    assert "Traceback" not in out.output
