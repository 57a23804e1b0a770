"""Results out: one JSON line per image, COCO results, annotated images.

A JSON line (see the README)::

    {"file": str, "image_id": int | null, "width": int, "height": int, "error": str | null,
     "detections": [{"name": str, "bbox": [x, y, w, h], "score": float,
                     "segmentation": {"size": [h, w], "counts": str}}]}

bbox is COCO xywh in pixels of the original image; segmentation is COCO compressed RLE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import supervision as sv
from pycocotools import mask as mask_utils

from .agents.detections import CLASS_NAME


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO compressed RLE with ``counts`` as str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (counts str or bytes) -> (H, W) bool."""
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii")
                              if isinstance(counts, str) else counts}).astype(bool)


def detections_to_json(dets: sv.Detections) -> list[dict[str, Any]]:
    names = dets.data.get(CLASS_NAME, np.array([""] * len(dets)))
    scores = dets.confidence if dets.confidence is not None else np.ones(len(dets))
    out = []
    for k in range(len(dets)):
        x0, y0, x1, y1 = (float(v) for v in dets.xyxy[k])
        det = {"name": str(names[k]), "bbox": [x0, y0, x1 - x0, y1 - y0],
               "score": float(scores[k])}
        if dets.mask is not None:
            det["segmentation"] = encode_mask(dets.mask[k])
        out.append(det)
    return out


def image_record(file: str, image_id: int | None, hw: tuple[int, int] | None,
                 dets: sv.Detections | None, error: str | None = None) -> dict[str, Any]:
    """The JSON line of one image."""
    h, w = hw if hw is not None else (None, None)
    return {"file": file, "image_id": image_id, "width": w, "height": h, "error": error,
            "detections": [] if dets is None else detections_to_json(dets)}


def coco_results(records: list[dict[str, Any]], category_ids: dict[str, list[tuple[int, float]]]
                 ) -> list[dict[str, Any]]:
    """COCO/LVIS results from JSON lines. ``category_ids`` maps a detection name to
    (category id, similarity) pairs; the similarity multiplies the score."""
    out = []
    for rec in records:
        if rec.get("image_id") is None:
            continue
        for det in rec["detections"]:
            for cat, sim in category_ids.get(det["name"], []):
                res = {"image_id": rec["image_id"], "category_id": cat, "bbox": det["bbox"],
                       "score": det["score"] * sim}
                if "segmentation" in det:
                    res["segmentation"] = det["segmentation"]
                out.append(res)
    return out


def annotate(image: np.ndarray, dets: sv.Detections) -> np.ndarray:
    """(H, W, 3) RGB image with masks, boxes and names drawn (supervision annotators)."""
    scene = image.copy()
    labels = [f"{n} {s:.2f}" for n, s in zip(dets.data.get(CLASS_NAME, []),
                                              dets.confidence if dets.confidence is not None
                                              else np.ones(len(dets)))]
    colored = sv.Detections(xyxy=dets.xyxy, mask=dets.mask, confidence=dets.confidence,
                            class_id=np.arange(len(dets)))
    if dets.mask is not None:
        scene = sv.MaskAnnotator(color_lookup=sv.ColorLookup.INDEX).annotate(scene, colored)
    scene = sv.BoxAnnotator(color_lookup=sv.ColorLookup.INDEX).annotate(scene, colored)
    return sv.LabelAnnotator(color_lookup=sv.ColorLookup.INDEX).annotate(scene, colored, labels)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) RGB image blended with an (H, W) map in [0, 1] as a JET colour map."""
    import cv2

    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return (image * (1 - alpha) + colored * alpha).astype(np.uint8)


def jsonable(value: Any) -> Any:
    """A node output as plain JSON data (detections, numpy, objects with ``to_json``)."""
    if isinstance(value, sv.Detections):
        return detections_to_json(value)
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
