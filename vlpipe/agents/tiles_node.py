"""Nodes around :mod:`vlpipe.agents.tiles`: split an image into views, merge detections."""

from __future__ import annotations

from ..pipeline import Node
from .tiles import merge_detections, parse_grid, split_tiles
from .views import View


class TilesNode(Node):
    """image (H, W, 3) -> views: the full image plus a ``tiles`` grid ("1x1" = full image only).

    Each view is then run by the detect branch like an image of its own, so the MLLM and SAM
    nodes batch views across images."""

    inputs = {"image": "image"}
    outputs = {"views": "views"}

    def __init__(self, name: str, *, tiles: str = "2x2", overlap: float = 0.0,
                 min_size: int = 64, **kw) -> None:
        super().__init__(name, **kw)
        self.grid = parse_grid(tiles)
        self.overlap, self.min_size = float(overlap), int(min_size)

    def run(self, batch):
        out = []
        for item in batch:
            image = item["image"]
            h, w = image.shape[:2]
            tiles = split_tiles(h, w, self.grid, self.overlap, self.min_size)
            out.append({"views": [View(t.crop(image), t, (h, w)) for t in tiles]})
        return out


class MergeNode(Node):
    """detections (every view, question and round) -> merged detections, best first.

    Defaults: greedy non-maximum merging with intersection-over-smaller 0.5, class-aware by
    normalized name (see :mod:`vlpipe.agents.tiles` for why)."""

    inputs = {"detections": "detections"}
    outputs = {"detections": "detections"}

    def __init__(self, name: str, *, method: str = "nmm", metric: str = "ios",
                 threshold: float = 0.5, class_agnostic: bool = False, **kw) -> None:
        super().__init__(name, **kw)
        self.options = {"method": method, "metric": metric, "threshold": float(threshold),
                        "class_agnostic": bool(class_agnostic)}

    def run(self, batch):
        return [{"detections": merge_detections(item["detections"], **self.options)}
                for item in batch]
