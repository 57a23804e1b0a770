"""Grounding DINO as a node: image + phrases -> boxes and crops."""

from __future__ import annotations

import re

from ..pipeline import Node
from .grounding import GroundingDinoBackend, load_grounding_dino
from .hub import resolve_device


def split_phrases(phrases: str | list[str]) -> list[str]:
    """``"a dog. a cat."`` or ``["a dog", "a cat"]`` -> ``["a dog", "a cat"]``."""
    if isinstance(phrases, str):
        phrases = re.split(r"[.,;\n]", phrases)
    return [p.strip() for p in phrases if p.strip()]


class GroundingNode(Node):
    """image + phrases -> detections (named by phrase) and crops (top-scoring first).

    Phrases of every image in the batch go through the model in one batched forward pass."""

    inputs = {"image": "image", "phrases": "phrases"}
    outputs = {"detections": "detections", "crops": "crops"}

    def __init__(self, name: str, *, model: str, box_threshold: float = 0.35,
                 text_threshold: float = 0.25, max_crops: int = 4, device: str = "auto",
                 dtype: str = "auto", **kw) -> None:
        super().__init__(name, device=resolve_device(device), **kw)
        self.model_id, self.dtype = model, dtype
        self.thresholds = {"box_threshold": float(box_threshold),
                           "text_threshold": float(text_threshold)}
        self.max_crops = int(max_crops)
        self._backend = None

    @property
    def backend(self) -> GroundingDinoBackend:
        if self._backend is None:
            pair = self.pool.get("grounding", self.model_id, self.device, self.dtype,
                                 lambda: load_grounding_dino(self.model_id, self.device, self.dtype))
            self._backend = GroundingDinoBackend.from_loaded(*pair, **self.thresholds)
        return self._backend

    def run(self, batch):
        phrases = [split_phrases(item["phrases"]) for item in batch]
        dets = self.backend.detect([item["image"] for item in batch], phrases)
        return [{"detections": d, "crops": GroundingDinoBackend.crops(item["image"], d,
                                                                      self.max_crops)}
                for item, d in zip(batch, dets)]
