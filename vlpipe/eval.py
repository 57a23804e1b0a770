"""COCO / LVIS / CODA-style evaluation of detection and instance-segmentation results.

A thin wrapper over ``faster_coco_eval.COCOeval_faster`` (C++ matching and accumulation;
its COCO mode matches pycocotools, ``lvis_style=True`` follows LVIS's federated rules:
detections of categories neither annotated nor listed negative for an image are dropped, and
unmatched detections of an image's ``not_exhaustive_category_ids`` are not false positives).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faster_coco_eval import COCO, COCOeval_faster

from .eval_results import ResultsError, result_annotations

__all__ = ["evaluate", "load_gt", "is_lvis", "top_per_category", "ResultsError"]

_AREAS = ("small", "medium", "large")
FIXED_AP_PER_CATEGORY = 10_000


def load_gt(gt_json: str | Path | dict) -> dict:
    """The ground truth as a dict (a deep copy when given a dict); ValueError if it is not
    a readable COCO/LVIS dataset."""
    where = "ground-truth dict" if isinstance(gt_json, dict) else f"ground-truth file {str(gt_json)!r}"
    if isinstance(gt_json, dict):
        data: Any = copy.deepcopy(gt_json)
    else:
        try:
            with open(gt_json, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {where}: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{where} is not in COCO/LVIS format: missing {', '.join(missing)}")
    problem = _format_problem(data)
    if problem:
        raise ValueError(f"{where} is not in COCO/LVIS format: {problem}")
    return data


def _format_problem(data: dict) -> str | None:
    """What keeps ``data``'s lists from being COCO's (lists of objects; images and categories
    with ids), or None."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            return f"'{key}' is not a list"
        for k, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                return f"{key}[{k}] is not an object"
            if key != "annotations" and "id" not in entry:
                return f"{key}[{k}] has no id"
    return None


def is_lvis(gt: dict) -> bool:
    """Whether a ground truth carries LVIS fields (category frequencies, federated labels)."""
    return any("frequency" in c for c in gt["categories"]) or any(
        "not_exhaustive_category_ids" in im or "neg_category_ids" in im for im in gt["images"]
    )


def _has_segmentation(anns: Sequence[dict]) -> bool:
    return any(a.get("segmentation") for a in anns)


def _run(gt: dict, annotations: list[dict], iou_type: str, lvis: bool, max_dets: int
         ) -> dict[str, float]:
    # The evaluator modifies the datasets it is given (masks turned into RLE), so every run
    # works on its own copies. The results dataset is what loadRes would build from the
    # results (see vlpipe.eval_results).
    coco_gt = COCO(copy.deepcopy(gt))
    coco_dt = COCO(copy.deepcopy({"images": gt["images"], "categories": gt["categories"],
                                  "annotations": annotations}))
    ev = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=lvis, print_function=logging.getLogger(__name__).debug)
    # LVIS reports AP at 300 detections per image; COCO keeps its 1/10/100 ladder for AR.
    ev.params.maxDets = [max_dets] if lvis else sorted({1, 10, max_dets})
    ev.evaluate()
    ev.accumulate()
    ev.summarize()

    # all_stats layout (see COCOeval.summarize): AP, AP50, AP75, AP per area range, AR per
    # maxDets entry (LVIS pads to three entries), AR per area, AR50, AR75, then APr/APc/APf.
    s = ev.all_stats
    n_max = max(len(ev.params.maxDets), 3) if lvis else len(ev.params.maxDets)
    out = {"AP": s[0], "AP50": s[1], "AP75": s[2]}
    out |= {f"AP{a[0]}": s[3 + i] for i, a in enumerate(_AREAS)}
    if lvis:
        out |= dict(zip(("APr", "APc", "APf"), s[-3:]))
    out["AR"] = s[3 + len(_AREAS) + len(ev.params.maxDets) - 1]
    assert len(s) == 3 + 2 * len(_AREAS) + n_max + 2 + (3 if lvis else 0)
    # -1 marks an undefined metric (e.g. no small objects, no rare categories): left out.
    return {k: float(v) for k, v in out.items() if v > -1}


def top_per_category(results: list[dict], k: int) -> list[dict]:
    """The ``k`` best-scoring results of each category (ties: first in the list)."""
    by_category: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_category[r["category_id"]].append(r)
    return [r for rs in by_category.values()
            for r in sorted(rs, key=lambda r: -r["score"])[:k]]


def evaluate(
    gt_json: str | Path | dict,
    results: list[dict],
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    lvis: bool | None = None,
    max_dets: int | None = None,
    fixed_ap: bool = False,
    per_category: int = FIXED_AP_PER_CATEGORY,
) -> dict[str, dict[str, float]]:
    """AP / AR of COCO-format ``results`` against a COCO or LVIS ground truth.

    Args:
        gt_json: path to a COCO/LVIS json file, or the loaded dict (not modified).
        results: COCO results, ``{"image_id", "category_id", "score"}`` with a
            ``"bbox": [x, y, w, h]``, a ``"segmentation"`` (RLE or polygons) or both, as
            ``COCO.loadRes`` takes them (see :mod:`vlpipe.eval_results`).
        iou_types: any of ``"bbox"``, ``"segm"``; ``"segm"`` is skipped when the results
            (or the ground truth) carry no segmentation.
        lvis: LVIS federated evaluation with APr/APc/APf; by default, when the ground truth
            has LVIS fields (category ``frequency``, image ``not_exhaustive_category_ids``).
        max_dets: detections per image; 300 for LVIS, 100 for COCO by default.
        fixed_ap: LVIS "fixed AP" (Dave et al., 2021; what VL-SAM and GenerateU report): no
            per-image cap, instead the ``per_category`` best-scoring detections of each category
            over the whole dataset (10,000 by default). ``max_dets`` is then ignored.

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", ["APr", "APc", "APf"], "AR"}}``
        as floats in [0, 1]; metrics undefined on this data (e.g. APs with no small objects)
        are left out. Empty results give zeros. :class:`ResultsError` (a ValueError) names
        the first result the evaluators cannot read.
    """
    gt = load_gt(gt_json)
    annotations, masks = result_annotations(results, {im["id"]: im for im in gt["images"]})
    lvis = is_lvis(gt) if lvis is None else lvis
    max_dets = max_dets or (300 if lvis else 100)
    if fixed_ap:
        annotations = top_per_category(annotations, per_category)
        max_dets = max(Counter(a["image_id"] for a in annotations).values(), default=1)
    if lvis and not all("frequency" in c for c in gt["categories"]):
        raise ValueError("LVIS evaluation needs a 'frequency' (r/c/f) for every category")

    metrics = {}
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"unsupported iou type {iou_type!r}; use 'bbox' or 'segm'")
        if iou_type == "segm" and (
            not _has_segmentation(gt["annotations"]) or (results and not masks)
        ):
            continue
        metrics[iou_type] = _run(gt, annotations, iou_type, lvis, max_dets)
    return metrics
