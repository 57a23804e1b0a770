"""The merge as a node: detections of every view -> one deduplicated set (:mod:`.merging`)."""

from __future__ import annotations

from ...pipeline import Node
from ..ports import DETECTIONS
from .merging import merge_detections, tile_fragments


class MergeNode(Node):
    """detections (every view, question and round) -> merged detections, best first.

    Defaults (VL-SAM merges with NMS): tile fragments are dropped first (parts of objects cut by
    a tile border that a larger same-name detection contains, see
    :func:`~vlpipe.agents.merge.merging.tile_fragments`), then greedy NMS with IoU 0.5, class-aware by
    normalized name. NMS keeps each object's best view, question and refinement round as they
    are (no union of rounds) and keeps side-by-side instances apart, which intersection over
    the smaller box with merging (``method: nmm, metric: ios``) does not."""

    inputs = {"detections": DETECTIONS}
    outputs = {"detections": DETECTIONS}

    def __init__(self, name: str, *, method: str = "nms", metric: str = "iou",
                 threshold: float = 0.5, class_agnostic: bool = False,
                 drop_fragments: bool = True, fragment_containment: float = 0.8, **kw) -> None:
        super().__init__(name, **kw)
        self.options = {"method": method, "metric": metric, "threshold": float(threshold),
                        "class_agnostic": bool(class_agnostic)}
        self.drop_fragments = bool(drop_fragments)
        self.containment = float(fragment_containment)

    def run(self, batch):
        out = []
        for item in batch:
            dets = item["detections"]
            if self.drop_fragments:
                dets = dets[~tile_fragments(dets, containment=self.containment)]
            out.append({"detections": merge_detections(dets, **self.options)})
        return out
