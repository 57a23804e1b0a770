"""OCR as a node: image (+ optional boxes to read inside) -> text lines."""

from __future__ import annotations

from ...pipeline import Node
from ..backends import OCR_BACKENDS
from ..ports import DETECTIONS, IMAGE, TEXT_LINES


class OcrNode(Node):
    """image [+ detections whose boxes to read inside] -> lines (list of TextLine)."""

    inputs = {"image": IMAGE, "detections": DETECTIONS}
    outputs = {"lines": TEXT_LINES}
    optional = frozenset({"detections"})

    def __init__(self, name: str, *, backend: str = "rapidocr", **kw) -> None:
        super().__init__(name, device="cpu")
        OCR_BACKENDS.check(backend)
        self.backend_name, self.backend_params = backend, kw

    @property
    def backend(self):
        """The engine from the pool, one per backend and params."""
        return OCR_BACKENDS.load(self.pool, self.backend_name, None, "cpu", None,
                                 **self.backend_params)

    def run(self, batch):
        ocr = self.backend
        return [{"lines": ocr.read(item["image"], None if item["detections"] is None
                                   else item["detections"].xyxy)}
                for item in batch]
