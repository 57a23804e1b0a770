"""Tiling as a node: an image -> its views (:mod:`vlpipe.agents.tiles.grid`)."""

from __future__ import annotations

from ...pipeline import Node
from .grid import parse_grid, split_tiles
from ..ports import IMAGE, VIEWS
from ..views import View


class TilesNode(Node):
    """image (H, W, 3) -> views: the full image plus a ``tiles`` grid ("1x1" = full image only).

    Each view is then run by the detect branch like an image of its own, so the MLLM and SAM
    nodes batch views across images."""

    inputs = {"image": IMAGE}
    outputs = {"views": VIEWS}

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
