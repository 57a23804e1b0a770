"""Detect's second localization branch: the MLLM's names as text prompts to a grounding expert,
fused with the attention branch (the ``detect-fused`` recipe).

``object_names`` turns the MLLM's object lists into grounding phrases; grounding gives boxes,
SAM segments them (:class:`~vlpipe.agents.sam.nodes.SamBoxNode`); ``fuse`` joins both branches: an
object both branches found (same name, box IoU above ``agreement``) is more likely real, so
both detections get the noisy-OR of their scores, 1 - (1 - a)(1 - g); each keeps its branch in
``data["branch"]`` and the merge that follows keeps the better one.
"""

from __future__ import annotations

import numpy as np
import supervision as sv

from ...pipeline import Node
from ..detections import BRANCH, CLASS_NAME, VIEW_BOX, empty_detections
from ..names.parse import normalize_name
from ..ports import DETECTIONS, OBJECT_LISTS, PHRASES

BRANCH_FIELDS = (CLASS_NAME, VIEW_BOX)


class ObjectNamesNode(Node):
    """objects (every view and question) -> phrases: the distinct names, most often named first
    (ties: first named), at most ``max_names``."""

    inputs = {"objects": OBJECT_LISTS}
    outputs = {"phrases": PHRASES}

    def __init__(self, name: str, *, max_names: int = 32, **kw) -> None:
        super().__init__(name, **kw)
        if int(max_names) < 1:
            raise ValueError("max_names must be at least 1")
        self.max_names = int(max_names)

    def run(self, batch):
        out = []
        for item in batch:
            counts: dict[str, int] = {}
            for obj in item["objects"]:
                for name, _ in obj.names:
                    counts[name] = counts.get(name, 0) + 1
            ranked = sorted(counts, key=lambda n: -counts[n])  # stable: first named first
            out.append({"phrases": ranked[: self.max_names]})
        return out


class FuseNode(Node):
    """attention + grounded detections -> one set, agreeing pairs boosted (noisy-OR)."""

    inputs = {"attention": DETECTIONS, "grounded": DETECTIONS}
    outputs = {"detections": DETECTIONS}

    def __init__(self, name: str, *, agreement: float = 0.5, **kw) -> None:
        super().__init__(name, **kw)
        if not 0.0 < float(agreement) <= 1.0:
            raise ValueError("agreement must be in (0, 1]")
        self.agreement = float(agreement)

    def run(self, batch):
        return [{"detections": fuse(item["attention"], item["grounded"], self.agreement)}
                for item in batch]


def fuse(attention: sv.Detections, grounded: sv.Detections, agreement: float = 0.5
         ) -> sv.Detections:
    """Both branches' detections in one ``sv.Detections`` (``data``: class_name, view_box,
    branch). A pair of the same normalized name with box IoU >= ``agreement`` scores
    1 - (1 - a)(1 - g) on both sides (a detection pairs with its best partner)."""
    parts = [_tagged(d, b) for d, b in ((attention, "attention"), (grounded, "grounding"))
             if len(d)]
    if not parts:
        return empty_detections()
    a, g = (_scores(d) for d in (attention, grounded))
    if len(attention) and len(grounded):
        iou = sv.box_iou_batch(attention.xyxy, grounded.xyxy)  # (A, G)
        same = (np.array([normalize_name(n) for n in attention.data[CLASS_NAME]])[:, None]
                == np.array([normalize_name(n) for n in grounded.data[CLASS_NAME]])[None])
        iou = np.where(same, iou, 0.0)
        best_g, best_a = iou.argmax(1), iou.argmax(0)
        both_a = iou.max(1) >= agreement
        both_g = iou.max(0) >= agreement
        a_new, g_new = a.copy(), g.copy()
        a_new[both_a] = 1 - (1 - a[both_a]) * (1 - g[best_g[both_a]])
        g_new[both_g] = 1 - (1 - g[both_g]) * (1 - a[best_a[both_g]])
        parts[0].confidence, parts[1].confidence = a_new, g_new
    return sv.Detections.merge(parts)


def _scores(dets: sv.Detections) -> np.ndarray:
    return (np.ones(len(dets)) if dets.confidence is None
            else np.asarray(dets.confidence, np.float64)).astype(np.float32)


def _tagged(dets: sv.Detections, branch: str) -> sv.Detections:
    """``dets`` with only the shared data fields, plus ``branch``."""
    out = sv.Detections(xyxy=dets.xyxy, mask=dets.mask, confidence=_scores(dets),
                        data={k: dets.data[k] for k in BRANCH_FIELDS})
    out.data[BRANCH] = np.full(len(dets), branch)
    return out
