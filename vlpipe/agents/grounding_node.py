"""Open-vocabulary grounding as a node: image + phrases -> boxes and crops."""

from __future__ import annotations

import re

from ..pipeline import Node
from .grounding import GroundingDinoBackend, crop_boxes, load_grounding_dino
from .hub import resolve_device
from .owlv2 import Owlv2Backend, load_owlv2
from .sam3 import Sam3ConceptBackend, load_sam3

# backend name -> (load(model, device, dtype) -> (processor, model), wrap(processor, model, **thresholds))
GROUNDING_BACKENDS = {
    "grounding_dino": (load_grounding_dino, GroundingDinoBackend.from_loaded),
    "owlv2": (load_owlv2, Owlv2Backend.from_loaded),
    "sam3": (load_sam3, Sam3ConceptBackend.from_loaded),
}


def split_phrases(phrases: str | list[str]) -> list[str]:
    """``"a dog. a cat."`` or ``["a dog", "a cat"]`` -> ``["a dog", "a cat"]``."""
    if isinstance(phrases, str):
        phrases = re.split(r"[.,;\n]", phrases)
    return [p.strip() for p in phrases if p.strip()]


class GroundingNode(Node):
    """image + phrases -> detections (named by phrase) and labelled crops, shared fairly between
    phrases (:func:`~.grounding.fair_order`).

    ``backend``: ``grounding_dino`` (default), ``owlv2`` or ``sam3`` (every instance of each
    phrase, with masks). Phrases of every image in the batch go through the model in batched
    forward passes, never one per phrase. ``text_threshold`` is Grounding DINO's only."""

    inputs = {"image": "image", "phrases": "phrases"}
    outputs = {"detections": "detections", "crops": "crops"}

    def __init__(self, name: str, *, model: str, backend: str = "grounding_dino",
                 box_threshold: float = 0.35, text_threshold: float = 0.25, max_crops: int = 4,
                 device: str = "auto", dtype: str = "auto", **kw) -> None:
        super().__init__(name, device=resolve_device(device), **kw)
        if backend not in GROUNDING_BACKENDS:
            raise ValueError(f"unknown grounding backend {backend!r} "
                             f"(known: {', '.join(GROUNDING_BACKENDS)})")
        self.model_id, self.backend_name, self.dtype = model, backend, dtype
        self.thresholds = {"box_threshold": float(box_threshold),
                           "text_threshold": float(text_threshold)}
        self.max_crops = int(max_crops)
        self._backend = None

    @property
    def backend(self) -> GroundingDinoBackend | Owlv2Backend | Sam3ConceptBackend:
        if self._backend is None:
            load, wrap = GROUNDING_BACKENDS[self.backend_name]
            pair = self.pool.get(f"grounding-{self.backend_name}", self.model_id, self.device,
                                 self.dtype, lambda: load(self.model_id, self.device, self.dtype))
            self._backend = wrap(*pair, **self.thresholds)
        return self._backend

    def run(self, batch):
        phrases = [split_phrases(item["phrases"]) for item in batch]
        dets = self.backend.detect([item["image"] for item in batch], phrases)
        return [{"detections": d, "crops": crop_boxes(item["image"], d, self.max_crops)}
                for item, d in zip(batch, dets)]
