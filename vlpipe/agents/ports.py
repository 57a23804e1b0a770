"""What flows between the nodes: every port type the built-in nodes declare, and the Python type
of its values, in one place.

A node declares its ports with these names (``inputs = {"image": IMAGE}``; a node of your own
may add types of its own, as examples/custom_dag.py's ``"number"``); the engine matches them as
plain strings (:func:`vlpipe.pipeline.node.types_match`) and never imports this module.
The keys of a ``Detections``' ``data`` are in :mod:`.detections`.
"""

from __future__ import annotations

import numpy as np
import supervision as sv

from .grounding.crops import Crop
from .ocr.backends import TextLine
from .views import ObjectList, ObjectMap, View

IMAGE = "image"
TEXT = "text"
BOOL = "bool"
VIEWS = "views"
OBJECT_LISTS = "object_lists"
OBJECT_MAPS = "object_maps"
PHRASES = "phrases"
DETECTIONS = "detections"
POINTS = "points"
CROPS = "crops"
TEXT_LINES = "text_lines"
DECISION = "decision"
EVIDENCE = "evidence"

#: Port type -> the Python type of one item's value.
PORT_TYPES: dict[str, object] = {
    IMAGE: np.ndarray,  # (H, W, 3) uint8 RGB (vlpipe.io.load_image)
    TEXT: str,
    BOOL: bool,
    VIEWS: list[View],  # the full image, then its tiles
    OBJECT_LISTS: list[ObjectList],  # one per view and question
    OBJECT_MAPS: list[ObjectMap],  # one per object name and answer
    PHRASES: list[str],  # also "a dog. a cat." on a grounding node's input
    DETECTIONS: sv.Detections,  # xyxy in image pixels; data keys: vlpipe.agents.detections
    POINTS: sv.KeyPoints,  # xy (N, 1, 2) image pixels, one point per object; data: CLASS_NAME
    CROPS: list[Crop],
    TEXT_LINES: list[TextLine],
    DECISION: dict,  # {"choice": none|objects|text|both, "probs": {option: p} or None, "policy"}
    EVIDENCE: dict,  # {"crops": int, "lines": [TextLine.to_json()], "boxes": [detection JSON]}
}
