"""The MLLM's own points and boxes as localization branches (``detect-branches``).

* :class:`LocateBoxesNode` asks the MLLM, per object name, for its boxes (Qwen2.5-VL / Qwen3-VL
  JSON, Qwen2-VL box tokens, Florence-2's phrase grounding) and parses them in the family's
  convention (:mod:`.vlm_coords`); ``sam_boxes`` segments them as it does grounding's boxes.
* :class:`LocatePointsNode` asks for points instead; :class:`PointMapsNode` turns each name's
  points into a map over every view that holds them, so the ``sam`` node prompts, explains
  away and refines them exactly as it does attention maps (detect's refinement path).
* :class:`BranchSwitchNode` turns the recipe's ``branches`` param into one flag per branch,
  the ``when`` of each branch's first node.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import supervision as sv
import torch

from ...pipeline import Node
from ...prompts import load_prompt
from ..backends import MLLM_BACKENDS
from ..detections import CLASS_NAME, VIEW_BOX, concat
from ..hub import from_pretrained
from ..ports import BOOL, DETECTIONS, IMAGE, OBJECT_MAPS, PHRASES, POINTS, VIEWS
from ..views import ObjectMap
from .families import locator_backend
from .nodes import MllmNode
from .vlm_coords import parse_answer

BRANCHES = ("attention", "points", "boxes", "grounding")


class BranchSwitchNode(Node):
    """image -> one bool per branch: whether ``branches`` (comma-separated) names it."""

    inputs = {"image": IMAGE}
    outputs = {b: BOOL for b in BRANCHES}

    def __init__(self, name: str, *, branches: str = ",".join(BRANCHES), **kw) -> None:
        super().__init__(name, **kw)
        picked = [b.strip() for b in str(branches).split(",") if b.strip()]
        unknown = sorted(set(picked) - set(BRANCHES))
        if unknown or not picked:
            raise ValueError(f"branches: {', '.join(unknown) or 'none given'}; pick from "
                             f"{', '.join(BRANCHES)} (comma-separated)")
        self.picked = frozenset(picked)

    def run(self, batch):
        return [{b: b in self.picked for b in BRANCHES} for _ in batch]


@lru_cache(maxsize=64)
def model_type(model: str, trust_remote_code: bool = False) -> str:
    """The transformers ``model_type`` in ``model``'s config (a folder or a hub id)."""
    from transformers import AutoConfig

    kw = {"trust_remote_code": True} if trust_remote_code else {}
    return from_pretrained(AutoConfig, model, "locator", **kw).model_type


class _LocateNode(MllmNode):
    """image + phrases -> one generated answer per phrase (one batched call: the prompts share
    the image's prefix), parsed as ``kind`` in the family's convention."""

    max_batch = 1
    inputs = {"image": IMAGE, "phrases": PHRASES}
    kind = ""

    def __init__(self, name: str, *, prompt: str = "", max_new_tokens: int = 256, **kw) -> None:
        super().__init__(name, **kw)
        try:
            self.template = load_prompt(prompt or f"locate_{self.kind}")
        except FileNotFoundError as exc:  # a bad param: named when the pipeline is built
            raise ValueError(str(exc)) from None
        self.max_new_tokens = int(max_new_tokens)

    @property
    def mllm(self):
        """The locator: a registered family's :class:`~.model.Mllm`, or the backend of a
        locator-only family (:mod:`.locators`: Florence-2, Molmo 2), by the model's
        ``model_type``."""
        backend = locator_backend(model_type(self.model_id, self.trust_remote_code))
        return MLLM_BACKENDS.load(self.pool, backend, self.model_id, self.device, self.dtype,
                                  trust_remote_code=self.trust_remote_code)

    def answers(self, image: np.ndarray, phrases: list[str]) -> list:
        """Per phrase, the parsed answer (``sv.Detections`` or ``sv.KeyPoints``) named by it."""
        if not phrases:
            return []
        mllm = self.mllm
        prompts = [mllm.locate_prompt(self.kind, p, self.template) for p in phrases]
        gens = mllm.generate([image] * len(prompts), prompts, self.max_new_tokens,
                             self.image_fit)
        h, w = image.shape[:2]
        input_hw = mllm.input_hw(image, self.image_fit)
        input_wh = None if input_hw is None else input_hw[::-1]
        out = []
        for phrase, gen in zip(phrases, gens):
            parsed = parse_answer(gen.text, mllm.family, self.kind, (w, h), input_wh)
            parsed.data[CLASS_NAME] = np.full(len(parsed), phrase)  # the name asked for
            out.append(parsed)
        return out


class LocateBoxesNode(_LocateNode):
    """image + phrases -> detections: every box the MLLM gives for each phrase, named by the
    phrase, confidence 1, ``view_box`` the whole image."""

    outputs = {"detections": DETECTIONS}
    kind = "boxes"

    def run(self, batch):
        out = []
        for item in batch:
            dets = concat(self.answers(item["image"], item["phrases"]))
            h, w = item["image"].shape[:2]
            dets.data[VIEW_BOX] = np.tile(np.array([0, 0, w, h]), (len(dets), 1))
            out.append({"detections": dets})
        return out


class LocatePointsNode(_LocateNode):
    """image + phrases -> points: ``sv.KeyPoints`` (N, 1, 2) full-image pixels, named."""

    outputs = {"points": POINTS}
    kind = "points"

    def run(self, batch):
        return [{"points": merge_points(self.answers(item["image"], item["phrases"]))}
                for item in batch]


def merge_points(parts: list[sv.KeyPoints]) -> sv.KeyPoints:
    """The points of every part, in order (an empty set when there are none)."""
    xy = [p.xy.reshape(-1, 1, 2) for p in parts]
    names = [np.asarray(p.data[CLASS_NAME]).reshape(-1) for p in parts]
    return sv.KeyPoints(xy=np.concatenate(xy or [np.zeros((0, 1, 2))]).astype(np.float32),
                        data={CLASS_NAME: np.concatenate(names or [np.zeros(0, str)])})


class PointMapsNode(Node):
    """views + points -> maps: per view and name, the name's points inside the view drawn on a
    grid of ``cell``-pixel cells over the view, each a Gaussian of ``sigma`` cells (peak 1,
    the larger value where two overlap). The ``sam`` node reads them as it reads attention maps:
    each peak prompts SAM, its mask is explained away, the rounds refine it."""

    inputs = {"views": VIEWS, "points": POINTS}
    outputs = {"maps": OBJECT_MAPS}

    def __init__(self, name: str, *, cell: int = 8, sigma: float = 1.0, **kw) -> None:
        super().__init__(name, **kw)
        if int(cell) < 1 or float(sigma) <= 0:
            raise ValueError("cell must be >= 1 pixel and sigma > 0 cells")
        self.cell, self.sigma = int(cell), float(sigma)

    def run(self, batch):
        out = []
        for item in batch:
            points = item["points"]
            names = np.asarray(points.data.get(CLASS_NAME, np.zeros(0, str))).reshape(-1)
            xy = points.xy.reshape(-1, 2)
            maps = []
            for v, view in enumerate(item["views"]):
                t = view.tile
                local = xy - [t.x0, t.y0]
                inside = ((local >= 0) & (local < [t.width, t.height])).all(1)
                for name in dict.fromkeys(names[inside]):  # first named first
                    m, region = self.point_map(local[inside & (names == name)],
                                               (t.height, t.width))
                    maps.append(ObjectMap(str(name), v, 0, torch.from_numpy(m), region))
            out.append({"maps": maps})
        return out

    def point_map(self, xy: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, tuple]:
        """(P, 2) view pixels -> ((gh, gw) float32 map, its region (0, 0, gw·cell, gh·cell))."""
        gh, gw = -(-hw[0] // self.cell), -(-hw[1] // self.cell)
        cy, cx = (np.arange(gh) + 0.5), (np.arange(gw) + 0.5)
        m = np.zeros((gh, gw), np.float32)
        for x, y in xy / self.cell:
            blob = np.exp(-((cy[:, None] - y) ** 2 + (cx[None] - x) ** 2) / (2 * self.sigma ** 2))
            m = np.maximum(m, blob.astype(np.float32))
        return m, (0.0, 0.0, float(gw * self.cell), float(gh * self.cell))
