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
    ev = PyCOCOeval(coco_gt, coco_dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    s = ev.stats
    return {"AP": s[0], "AP50": s[1], "AP75": s[2], "APs": s[3], "APm": s[4], "APl": s[5], "AR": s[8]}


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_mode_matches_pycocotools(seed):
    gt, res = random_case(seed)
    ours = evaluate(gt, res, lvis=False)
    for iou_type in ("bbox", "segm"):
        ref = pycocotools_stats(gt, res, iou_type)
        assert 0 < ref["AP"] < 1  # a non-trivial case
        for key, value in ref.items():
            if value > -1:
                assert ours[iou_type][key] == pytest.approx(value, abs=1e-6), (iou_type, key)
            else:
                assert key not in ours[iou_type]


def test_segm_skipped_without_masks_and_empty_results_give_zeros():
    gt = make_gt(SIMPLE, CATS)
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in perfect(gt)]
    m = evaluate(gt, boxes_only)
    assert set(m) == {"bbox"} and m["bbox"]["AP"] == pytest.approx(1.0)
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
