"""The detections every expert returns, empty or gathered from parts.

A result is an ``sv.Detections`` with ``xyxy`` (N, 4) float32 pixel edges, ``confidence`` (N,),
``class_id`` (N,) and ``data["class_name"]`` (N,); an empty one carries the same fields, so code
that reads them needs no special case for "nothing found".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import supervision as sv

from supervision.config import CLASS_NAME_DATA_FIELD

__all__ = ["BRANCH", "CLASS_NAME", "QUESTION", "ROUND", "TEXT_LABEL", "VIEW_BOX", "concat",
           "empty_detections"]

# The keys of ``Detections.data`` the experts fill, each an (N,) or (N, 4) array:
CLASS_NAME = CLASS_NAME_DATA_FIELD  # (N,) str: the name or phrase each detection was found for
TEXT_LABEL = "text_label"  # (N,) str: a grounding model's own label of the phrase
VIEW_BOX = "view_box"  # (N, 4) x0, y0, x1, y1 of its view (full image or tile), full-image pixels
ROUND = "round"  # (N,) int: the SAM refinement round that gave it (0 = the first)
QUESTION = "question"  # (N,) int: the index of the question whose answer named it
BRANCH = "branch"  # (N,) str: the branch that found it (grounding.fusion.fuse)


def empty_detections() -> sv.Detections:
    """No detections, with the fields of a result (``sv.Detections.empty()`` has no class_name)."""
    return sv.Detections(xyxy=np.zeros((0, 4), np.float32), confidence=np.zeros((0,), np.float32),
                         class_id=np.zeros((0,), int),
                         data={CLASS_NAME: np.zeros((0,), dtype=str)})


def concat(parts: Sequence[sv.Detections]) -> sv.Detections:
    """The detections of every part in order (``sv.Detections.merge``, which drops empty parts),
    or :func:`empty_detections` when no part has any."""
    full = [p for p in parts if len(p)]
    return sv.Detections.merge(full) if full else empty_detections()
