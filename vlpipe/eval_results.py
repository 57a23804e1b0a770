"""Detection results as the official COCO and LVIS APIs read them (``COCO.loadRes``,
``LVISResults``), checked one by one so that a file from another tool gets a clear error.

Each result needs ``image_id``, ``category_id``, ``score`` and a ``bbox`` ``[x, y, w, h]`` or a
``segmentation`` (compressed or uncompressed RLE, or polygons); other fields are ignored. As
the official APIs do: a result with a box has area ``w * h`` (and its box as polygon when it
has no mask); a result with only a mask gets the mask's tight box (``maskUtils.toBbox``) and
the mask's pixel count as area. The official APIs pick the rule by the first result and fail
on a file that mixes the two; here each result follows its own.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from pycocotools import mask as mask_utils

__all__ = ["ResultsError", "result_annotations"]

_NEEDED = ("image_id", "category_id", "score")
_OTHER_TASKS = ("keypoints", "caption")  # results the COCO API takes for other evaluations


class ResultsError(ValueError):
    """Results the evaluators cannot read; the message names the first bad result."""


def result_annotations(results: list, images: dict[Any, dict]) -> tuple[list[dict], bool]:
    """``results`` as the annotations of a results dataset (with ``id``, ``area``,
    ``iscrowd``, ``bbox`` and ``segmentation``), and whether any result had a mask.

    ``images`` maps the ground truth's image ids to their records (``height``/``width`` are
    needed only to read polygon masks without a box). Raises :class:`ResultsError`."""
    annotations, masks = [], False
    for k, result in enumerate(results):
        annotations.append(_annotation(k, result, images))
        masks = masks or result.get("segmentation") is not None
    unknown = {a["image_id"] for a in annotations} - images.keys()
    if unknown:
        hint = (" (the results give ids as text, the ground truth as numbers)"
                if any(isinstance(i, str) for i in unknown) else "")
        raise ResultsError(f"results refer to image ids not in the ground truth: "
                           f"{sorted(unknown, key=str)[:10]}{hint}")
    return annotations, masks


def _annotation(k: int, result: Any, images: dict[Any, dict]) -> dict:
    if not isinstance(result, dict):
        raise ResultsError(f"result {k} is not a JSON object but {type(result).__name__}")
    box = result.get("bbox")
    box = None if box == [] else box  # what loadRes does with an empty box: use the mask
    segm = result.get("segmentation")
    if box is None and segm is None:
        other = next((t for t in _OTHER_TASKS if t in result), None)
        raise ResultsError(f"result {k} has neither bbox nor segmentation" + (
            f" but {other}: vlpipe eval scores boxes and masks" if other else ""))
    missing = [key for key in _NEEDED if key not in result]
    if missing:
        raise ResultsError(f"result {k} has no {', '.join(missing)} (COCO results need "
                           "image_id, category_id, score and a bbox or a segmentation)")
    ann = {"image_id": result["image_id"], "category_id": _category(k, result["category_id"]),
           "score": _number(k, "score", result["score"]), "id": k + 1, "iscrowd": 0}
    if box is not None:
        box = _box(k, box)
        if segm is not None:
            _rle(k, segm, images.get(result["image_id"], {}))  # readable, as the evaluators need
        x, y, w, h = box
        ann |= {"bbox": box, "area": w * h,
                "segmentation": segm if segm is not None else [[x, y, x, y + h, x + w, y + h,
                                                               x + w, y]]}
    else:
        rle = _rle(k, segm, images.get(result["image_id"], {}))
        ann |= {"bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(mask_utils.area(rle)), "segmentation": segm}
    return ann


def _number(k: int, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ResultsError(f"result {k}: {key} must be a finite number, got {value!r}")
    return float(value)


def _category(k: int, value: Any) -> int:
    if isinstance(value, Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    raise ResultsError(f"result {k}: category_id must be an integer, got {value!r}")


def _box(k: int, box: Any) -> list[float]:
    if not isinstance(box, list) or len(box) != 4:
        raise ResultsError(f"result {k}: bbox must be [x, y, width, height], got {box!r}")
    return [_number(k, "bbox", v) for v in box]


def _rle(k: int, segm: Any, image: dict) -> dict:
    """A result's mask as compressed RLE (what ``maskUtils.area`` / ``toBbox`` read)."""
    try:
        if isinstance(segm, dict):
            h, w = (int(v) for v in segm["size"])
            counts = segm["counts"]
            if isinstance(counts, list):  # uncompressed RLE
                return mask_utils.frPyObjects(segm, h, w)
            rle = {"size": [h, w], "counts": counts.encode("ascii")
                   if isinstance(counts, str) else counts}
            if mask_utils.area(rle) > h * w:
                raise ValueError("its runs cover more than the mask")
            return rle
        if isinstance(segm, list):  # polygons: the image size comes from the ground truth
            if "height" not in image or "width" not in image:
                raise ValueError("polygons without a bbox need the image's height and width "
                                 "in the ground truth")
            return mask_utils.merge(mask_utils.frPyObjects(segm, image["height"], image["width"]))
        raise ValueError(f"expected an RLE object or a list of polygons, got {type(segm).__name__}")
    except (KeyError, TypeError, ValueError, UnicodeError) as exc:
        problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ResultsError(f"result {k}: unreadable segmentation ({problem})") from exc
