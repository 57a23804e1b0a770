"""Zoomed-in crops of grounded boxes, shared fairly between phrases (the ask recipe's evidence)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import supervision as sv

from ..detections import CLASS_NAME
from ..tiles.grid import Tile


@dataclass
class Crop:
    """A zoomed-in view of one detection: ``image`` (h, w, 3) the padded crop, ``name`` the
    phrase that found it, ``box`` (4,) its unpadded xyxy in image pixels."""

    image: np.ndarray
    name: str
    box: np.ndarray


def fair_order(dets: sv.Detections, max_crops: int) -> list[int]:
    """Indices of up to ``max_crops`` detections shared fairly between phrases: every phrase's
    best box (phrases in order of their best score), then every phrase's second best, ..."""
    conf = dets.confidence if dets.confidence is not None else np.zeros(len(dets))
    names = dets.data.get(CLASS_NAME, np.array([""] * len(dets)))
    by_phrase: dict[str, list[int]] = {}
    for i in np.argsort(-conf, kind="stable").tolist():
        by_phrase.setdefault(str(names[i]), []).append(i)
    rounds = itertools.zip_longest(*by_phrase.values())
    return [i for r in rounds for i in r if i is not None][:max(max_crops, 0)]


def crop_boxes(image: np.ndarray, dets: sv.Detections, max_crops: int = 4,
               pad: float = 0.1) -> list[Crop]:
    """Crops (RGB uint8) of up to ``max_crops`` boxes of ``dets`` in :func:`fair_order`, each
    padded by ``pad`` × its box size and clipped to the image (:meth:`Tile.covering`)."""
    names = dets.data.get(CLASS_NAME, np.array([""] * len(dets)))
    out = []
    for i in fair_order(dets, max_crops):
        box = dets.xyxy[i].astype(float)
        tile = Tile.covering(box, image.shape[:2], pad)
        if tile is not None:
            out.append(Crop(tile.crop(image).copy(), str(names[i]), box))
    return out


