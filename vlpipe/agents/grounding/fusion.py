"""Detect's localization branches fused: attention (VL-SAM), the MLLM's own points and boxes
(:mod:`.locate`), and the MLLM's names as text prompts to a grounding expert (the
``detect-fused`` and ``detect-branches`` recipes).

``object_names`` turns the MLLM's object lists into grounding phrases; grounding gives boxes,
SAM segments them (:class:`~vlpipe.agents.sam.nodes.SamBoxNode`); ``fuse`` joins any number of
branches: an object several branches found (same name, box IoU above ``agreement``) is more
likely real and ranks first (:func:`fuse`); each detection keeps its branch in
``data[BRANCH]`` and the merge that follows keeps the best one.
"""

from __future__ import annotations

from collections.abc import Mapping

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
    """Any of the localization branches' detections -> one set, agreeing detections first
    (:func:`fuse`). Each input is optional: a branch that is not bound, or skipped (its
    ``when`` is off), takes no part."""

    inputs = {"attention": DETECTIONS, "points": DETECTIONS, "boxes": DETECTIONS,
              "grounded": DETECTIONS}
    optional = frozenset(inputs)
    outputs = {"detections": DETECTIONS}
    #: input port -> the branch name its detections carry in ``data[BRANCH]``.
    BRANCHES = {"attention": "attention", "points": "points", "boxes": "boxes",
                "grounded": "grounding"}

    def __init__(self, name: str, *, agreement: float = 0.5, **kw) -> None:
        super().__init__(name, **kw)
        if not 0.0 < float(agreement) <= 1.0:
            raise ValueError("agreement must be in (0, 1]")
        self.agreement = float(agreement)

    def run(self, batch):
        return [{"detections": fuse({b: item[port] for port, b in self.BRANCHES.items()
                                     if item.get(port) is not None}, self.agreement)}
                for item in batch]


def fuse(branches: Mapping[str, sv.Detections], agreement: float = 0.5) -> sv.Detections:
    """Every branch's detections in one ``sv.Detections`` (``data``: :data:`CLASS_NAME`,
    :data:`VIEW_BOX`, :data:`BRANCH`), scored so that detections on which more branches agree rank first.

    With N branches, detection i of branch b with score s_i:

    * calibrated score  c_i = s_i / max_{j in b} s_j  (each branch's best in the image is 1:
      the branches' raw scores are on unrelated scales);
    * agreeing branches A_i: the other branches with a detection j of the same normalized name
      and box IoU(i, j) >= ``agreement``; p_a = the largest c_j of such j in branch a;
    * q_i = 1 - (1 - c_i) * prod_{a in A_i} (1 - p_a)  (noisy-OR of the agreeing evidence);
    * score_i = (|A_i| + q_i) / N.

    Since q_i <= 1, a detection found by k + 1 branches never ranks below one found by k.
    """
    parts = [_tagged(d, b) for b, d in branches.items() if len(d)]
    if not parts:
        return empty_detections()
    out = sv.Detections.merge(parts)
    names = np.array([normalize_name(str(n)) for n in out.data[CLASS_NAME]])
    branch = out.data[BRANCH]
    calibrated = np.zeros(len(out), np.float64)
    for b in np.unique(branch):
        s = out.confidence[branch == b].astype(np.float64)
        calibrated[branch == b] = s / s.max() if s.max() > 0 else 0.0
    iou = sv.box_iou_batch(out.xyxy, out.xyxy)
    linked = (iou >= agreement) & (names[:, None] == names[None]) & (branch[:, None] != branch[None])
    score = np.empty(len(out), np.float64)
    for i in range(len(out)):
        partners = [calibrated[linked[i] & (branch == a)].max()
                    for a in np.unique(branch[linked[i]])]
        q = 1 - (1 - calibrated[i]) * np.prod([1 - p for p in partners])
        score[i] = (len(partners) + q) / len(branches)
    out.confidence = score.astype(np.float32)
    return out


def _scores(dets: sv.Detections) -> np.ndarray:
    return (np.ones(len(dets)) if dets.confidence is None
            else np.asarray(dets.confidence, np.float64)).astype(np.float32)


def _tagged(dets: sv.Detections, branch: str) -> sv.Detections:
    """``dets`` with only the shared data fields, plus ``branch``."""
    out = sv.Detections(xyxy=dets.xyxy, mask=dets.mask, confidence=_scores(dets),
                        data={k: dets.data[k] for k in BRANCH_FIELDS})
    out.data[BRANCH] = np.full(len(dets), branch)
    return out
