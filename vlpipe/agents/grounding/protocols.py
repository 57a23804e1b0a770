"""What the grounding node asks of a grounding backend (Grounding DINO, OWLv2, SAM 3, the
oracle), as a Protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import supervision as sv


@runtime_checkable
class GroundingBackend(Protocol):
    """Text phrases -> boxes (and, for some, masks) in images."""

    def detect(self, images: Sequence[np.ndarray], phrases: Sequence[Sequence[str]]
               ) -> list[sv.Detections]:
        """``phrases[i]`` found in ``images[i]`` (H, W, 3) uint8 RGB: one ``sv.Detections`` per
        image, ``xyxy`` in its pixels, ``confidence``, ``class_id`` (the index into its phrases)
        and ``data[CLASS_NAME]`` (the phrase; :mod:`vlpipe.agents.detections`)."""
