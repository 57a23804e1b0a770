"""OCR as a node: image (+ optional boxes to read inside) -> text lines."""

from __future__ import annotations

from ..pipeline import Node
from .ocr import ocr_backend


class OcrNode(Node):
    """image [+ detections whose boxes to read inside] -> lines (list of TextLine)."""

    inputs = {"image": "image", "detections": "detections"}
    outputs = {"lines": "text_lines"}
    optional = frozenset({"detections"})

    def __init__(self, name: str, *, backend: str = "rapidocr", **kw) -> None:
        super().__init__(name, device="cpu")
        self.backend_name, self.backend_params = backend, kw

    @property
    def backend(self):
        return self.pool.get("ocr", self.backend_name, "cpu", None,
                             lambda: ocr_backend(self.backend_name, **self.backend_params))

    def run(self, batch):
        ocr = self.backend
        return [{"lines": ocr.read(item["image"], None if item["detections"] is None
                                   else item["detections"].xyxy)}
                for item in batch]
