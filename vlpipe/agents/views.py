"""What flows between the detect nodes: views of an image, object lists, per-object attention
maps (their port types: :mod:`.ports`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .mllm.model import Generation
from .tiles.grid import Tile


@dataclass
class View:
    """One view of an image the detect branch runs on: the full image or a tile of it.

    ``image`` (h, w, 3) uint8 RGB is the tile's pixels; ``tile`` is where it lies in the full
    image, so results map back with :func:`vlpipe.agents.tiles.grid.to_full_image`.
    """

    image: np.ndarray
    tile: Tile
    full_hw: tuple[int, int]


@dataclass
class ObjectMap:
    """One object named by the MLLM, with its attention map over the view.

    ``map`` (gh, gw) float32 covers ``region`` = (x0, y0, x1, y1) in view pixel coordinates (the
    part of the view the vision encoder saw, after its resize/crop/padding).
    """

    name: str
    view: int  # index into the item's views
    question: int  # index of the question whose answer named it
    map: torch.Tensor
    region: tuple[float, float, float, float]

    def to_json(self) -> dict:
        return {"name": self.name, "view": self.view, "question": self.question,
                "grid": list(self.map.shape), "region": [float(v) for v in self.region]}


@dataclass
class ObjectList:
    """Objects named in one answer: the view and question it answers, the generation, and per
    name its answer-token indices."""

    view: int
    question: int
    generation: Generation
    prompt: str
    names: list[tuple[str, list[int]]]
