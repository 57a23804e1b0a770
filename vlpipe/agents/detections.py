"""The detections every expert returns, empty or gathered from parts.

A result is an ``sv.Detections`` with ``xyxy`` (N, 4) float32 pixel edges, ``confidence`` (N,),
``class_id`` (N,) and ``data["class_name"]`` (N,); an empty one carries the same fields, so code
that reads them needs no special case for "nothing found".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import supervision as sv

__all__ = ["concat", "empty_detections"]


def empty_detections() -> sv.Detections:
    """No detections, with the fields of a result (``sv.Detections.empty()`` has no class_name)."""
    return sv.Detections(xyxy=np.zeros((0, 4), np.float32), confidence=np.zeros((0,), np.float32),
                         class_id=np.zeros((0,), int),
                         data={"class_name": np.zeros((0,), dtype=str)})


def concat(parts: Sequence[sv.Detections]) -> sv.Detections:
    """The detections of every part in order (``sv.Detections.merge``, which drops empty parts),
    or :func:`empty_detections` when no part has any."""
    full = [p for p in parts if len(p)]
    return sv.Detections.merge(full) if full else empty_detections()
