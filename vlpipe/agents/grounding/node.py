"""Open-vocabulary grounding as a node: image + phrases -> boxes and crops."""

from __future__ import annotations

import re

from ...pipeline import Node
from ..backends import GROUNDING_BACKENDS
from ..hub import check_dtype, resolve_device
from ..ports import CROPS, DETECTIONS, IMAGE, PHRASES
from .crops import crop_boxes
from .protocols import GroundingBackend


def split_phrases(phrases: str | list[str]) -> list[str]:
    """``"a dog. a cat."`` or ``["a dog", "a cat"]`` -> ``["a dog", "a cat"]``."""
    if isinstance(phrases, str):
        phrases = re.split(r"[.,;\n]", phrases)
    return [p.strip() for p in phrases if p.strip()]


class GroundingNode(Node):
    """image + phrases -> detections (named by phrase) and labelled crops, shared fairly between
    phrases (:func:`~.crops.fair_order`).

    ``backend``: ``grounding_dino`` (default), ``owlv2`` or ``sam3`` (every instance of each
    phrase, with masks). An image's phrases go through the model in batched forward passes,
    never one per phrase; each image alone (``max_batch = 1``): batched with others it would be
    padded to the largest and its sums rounded otherwise, so its boxes would depend on the
    batch. ``text_threshold`` is Grounding DINO's only."""

    inputs = {"image": IMAGE, "phrases": PHRASES}
    outputs = {"detections": DETECTIONS, "crops": CROPS}
    max_batch = 1

    def __init__(self, name: str, *, model: str, backend: str = "grounding_dino",
                 box_threshold: float = 0.35, text_threshold: float = 0.25, max_crops: int = 4,
                 device: str = "auto", dtype: str = "auto", **kw) -> None:
        super().__init__(name, device=resolve_device(device), **kw)
        GROUNDING_BACKENDS.check(backend)
        self.model_id, self.backend_name, self.dtype = model, backend, check_dtype(dtype)
        self.thresholds = {"box_threshold": float(box_threshold),
                           "text_threshold": float(text_threshold)}
        self.max_crops = int(max_crops)

    @property
    def backend(self) -> GroundingBackend:
        """The backend from the pool (one per weights, device, dtype and the thresholds it
        takes)."""
        return GROUNDING_BACKENDS.load(self.pool, self.backend_name, self.model_id, self.device,
                                       self.dtype, **self.thresholds)

    def run(self, batch):
        phrases = [split_phrases(item["phrases"]) for item in batch]
        dets = self.backend.detect([item["image"] for item in batch], phrases)
        return [{"detections": d, "crops": crop_boxes(item["image"], d, self.max_crops)}
                for item, d in zip(batch, dets)]
