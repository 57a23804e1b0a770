"""OCR backends: read text lines (quadrilateral + text + score) from RGB images.

``RapidOcrBackend`` (default) runs the ONNX PP-OCR models shipped inside the ``rapidocr`` wheel,
so it works offline; a line-shaped image (or crop) in which its detector finds no text box is
read as one line by the angle classifier and the recognizer alone. ``PaddleOcrBackend`` is
optional (``pip install "vlpipe[paddle]"``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ...io import as_rgb_image
from ..backends import OCR_BACKENDS
from ..thin import is_thin, pad_thin
from ..tiles.grid import Tile

__all__ = [
    "PaddleOcrBackend",
    "RapidOcrBackend",
    "TextLine",
    "format_lines",
    "lines_prompt",
    "load_paddleocr",
    "load_rapidocr",
]


@dataclass
class TextLine:
    """One recognised text line.

    Attributes:
        text: recognised string.
        score: recognition confidence in [0, 1].
        box: (4, 2) float32 quadrilateral (clockwise from top-left) in full-image pixels.
    """

    text: str
    score: float
    box: np.ndarray

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float32).reshape(4, 2)
        self.score = float(self.score)

    @property
    def xyxy(self) -> np.ndarray:
        """Axis-aligned bounding box ``[x0, y0, x1, y1]`` (float32)."""
        return np.concatenate([self.box.min(axis=0), self.box.max(axis=0)]).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "score": self.score, "box": self.box.tolist()}


def _bgr(image) -> np.ndarray:
    """An image (see :func:`vlpipe.io.as_rgb_image`) as the (H, W, 3) uint8 BGR array the OCR
    engines take (OpenCV order), contiguous."""
    return np.ascontiguousarray(as_rgb_image(image)[:, :, ::-1])


def _inside(quads, image: np.ndarray) -> np.ndarray:
    """Quad corners (..., 2) as float32 clipped to the (H, W) image (an engine that read a
    padded copy may give corners in the padding)."""
    h, w = image.shape[:2]
    return np.clip(np.asarray(quads, dtype=np.float32), 0, [w, h])


LINE_ASPECT = 2.0  # an image at least this many times wider than high may be one text line


def _line_shaped(image: np.ndarray) -> bool:
    h, w = image.shape[:2]
    return h > 0 and w >= LINE_ASPECT * h


class _OcrBase(ABC):
    """Shared ``read`` logic: whole image or inside boxes, quads mapped to full-image pixels."""

    @abstractmethod
    def _read_bgr(self, bgr: np.ndarray) -> list[TextLine]:
        """Text lines of a BGR uint8 image."""

    def read(self, image: np.ndarray, boxes: np.ndarray | None = None) -> list[TextLine]:
        """Read text lines from an RGB image, or only inside ``boxes`` ((K, 4) xyxy pixels).

        Lines read inside boxes are returned with quads in full-image coordinates, box by box.
        """
        bgr = _bgr(image)
        if boxes is None:
            return self._read_bgr(bgr)
        lines: list[TextLine] = []
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            tile = Tile.covering(box, bgr.shape[:2])
            if tile is None:
                continue
            for line in self._read_bgr(np.ascontiguousarray(tile.crop(bgr))):
                line.box = line.box + np.array([tile.x0, tile.y0], dtype=np.float32)
                lines.append(line)
        return lines


class RapidOcrBackend(_OcrBase):
    """OCR with ``rapidocr`` (PP-OCR ONNX models bundled in the wheel; offline).

    ``params`` are RapidOCR config keys such as ``{"Global.text_score": 0.6}``; a key without a
    section (``text_score=0.6``) means ``Global.<key>``. The engine is built on first use.

    RapidOCR treats ndarray input as OpenCV BGR, so RGB images are flipped before reading.
    """

    def __init__(self, **params: Any):
        self.params = {"Global.log_level": "error"}
        self.params.update({(k if "." in k else f"Global.{k}"): v for k, v in params.items()})
        self._engine = None
        self._lock = threading.Lock()

    @property
    def engine(self):
        """The underlying ``rapidocr.RapidOCR`` instance (created lazily)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from rapidocr import RapidOCR

                    self._engine = RapidOCR(params=self.params)
        return self._engine

    def _call(self, bgr: np.ndarray, det: bool = True, rec: bool = True):
        """RapidOCR on ``bgr``. An image thinner than its resize takes (the long side resized to
        ``max_side_len``, the short side rounded to 32 pixels) is padded first to that limit, or
        to RapidOCR's own ``width_height_ratio`` where it is lower (as it pads wide images
        before detection), so its boxes may reach past ``bgr`` (callers clip them)."""
        eng = self.engine
        # RapidOCR stores per-call flags on the instance, so always pass all of them.
        use_cls = bool(eng.cfg.Global.use_cls) and rec
        limit = eng.cfg.Global.max_side_len / 32
        if is_thin(bgr.shape[:2], limit):
            ratio = eng.cfg.Global.width_height_ratio  # -1: RapidOCR's "no limit"
            bgr = pad_thin(bgr, min(limit, ratio) if ratio > 0 else limit)
        with self._lock:
            return eng(bgr, use_det=det, use_cls=use_cls, use_rec=rec)

    def _read_bgr(self, bgr: np.ndarray) -> list[TextLine]:
        res = self._call(bgr)
        if getattr(res, "boxes", None) is None or getattr(res, "txts", None) is None:
            return self._read_as_one_line(bgr) if _line_shaped(bgr) else []
        return [TextLine(str(t), float(s), _inside(b, bgr)) for b, t, s in zip(res.boxes, res.txts, res.scores)]

    def _read_as_one_line(self, bgr: np.ndarray) -> list[TextLine]:
        """The whole image read as one text line: the angle classifier and recognition without
        detection, which finds no box in a tight crop of a line. Kept when the recognition
        score reaches ``Global.text_score``; the line's box is the whole image."""
        res = self._call(bgr, det=False)
        texts, scores = getattr(res, "txts", None) or (), getattr(res, "scores", None) or ()
        if not texts or not str(texts[0]).strip() or scores[0] < self.engine.cfg.Global.text_score:
            return []
        h, w = bgr.shape[:2]
        return [TextLine(str(texts[0]).strip(), scores[0], [[0, 0], [w, 0], [w, h], [0, h]])]

    def detect_boxes(self, image: np.ndarray) -> np.ndarray:
        """Text-region quads ((N, 4, 2) float32) from the detection model only (no recognition)."""
        bgr = _bgr(image)
        res = self._call(bgr, rec=False)
        boxes = getattr(res, "boxes", None)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return _inside(boxes, bgr).reshape(-1, 4, 2)

    def text_area_fraction(self, image: np.ndarray) -> float:
        """Fraction of the image area covered by detected text regions (detector only)."""
        import cv2

        h, w = np.asarray(image).shape[:2]
        quads = self.detect_boxes(image)
        if h == 0 or w == 0 or len(quads) == 0:
            return 0.0
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.rint(q).astype(np.int32) for q in quads], 1)
        return float(mask.mean())


class PaddleOcrBackend(_OcrBase):
    """OCR with PaddleOCR 3.x (optional extra; needs its models, which it downloads)."""

    def __init__(self, **params: Any):
        self.params = params
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            try:
                from paddleocr import PaddleOCR
            except ImportError as e:
                raise RuntimeError(
                    'PaddleOCR is not installed: pip install "vlpipe[paddle]" '
                    "(or use the default 'rapidocr' backend)"
                ) from e
            try:
                self._engine = PaddleOCR(**self.params)
            except Exception as e:  # offline: "No available model hosting platforms detected"
                raise RuntimeError(
                    f"PaddleOCR could not load its models (they are downloaded on first use; "
                    f"offline machines need them cached locally): {e}"
                ) from e
        return self._engine

    def _read_bgr(self, bgr: np.ndarray) -> list[TextLine]:
        lines: list[TextLine] = []
        for res in self.engine.predict(bgr):
            texts, scores = res["rec_texts"], res["rec_scores"]
            polys = res.get("rec_polys", res.get("dt_polys"))
            for t, s, p in zip(texts, scores, polys):
                if str(t).strip():
                    lines.append(TextLine(str(t), float(s), np.asarray(p, dtype=np.float32)))
        return lines


# OCR engines bring their own models and run on the CPU: the builders take no weights, device
# or dtype, only the engine's params.
@OCR_BACKENDS.register("rapidocr")
def load_rapidocr(weights: None, device: str, dtype: None, **params: Any) -> RapidOcrBackend:
    return RapidOcrBackend(**params)


@OCR_BACKENDS.register("paddleocr")
def load_paddleocr(weights: None, device: str, dtype: None, **params: Any) -> PaddleOcrBackend:
    return PaddleOcrBackend(**params)


def _reading_order(lines: Sequence[TextLine]) -> list[TextLine]:
    """Sort lines top-to-bottom into rows (overlapping vertical centres), then left-to-right."""
    if not lines:
        return []
    boxes = np.stack([ln.xyxy for ln in lines])
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    rows: list[list[int]] = []
    row_cy = 0.0
    for i in np.argsort(cy, kind="stable"):
        if rows and cy[i] - row_cy <= 0.5 * min(heights[i], heights[rows[-1][0]]):
            rows[-1].append(int(i))
        else:
            rows.append([int(i)])
            row_cy = cy[i]
    return [lines[i] for row in rows for i in sorted(row, key=lambda k: boxes[k, 0])]


def format_lines(lines: Sequence[TextLine], image_hw: tuple[int, int] | None = None,
                 box: Callable[[Sequence[float]], str] | None = None) -> str:
    """Format OCR lines for an MLLM prompt, one per line in reading order.

    Example: ``"正品促销" at [0, 0, 322, 108]`` (pixel xyxy, clipped to ``image_hw`` = (H, W)),
    or the clipped box as ``box(xyxy)`` writes it (the MLLM family's convention).
    """
    out = []
    for ln in _reading_order(lines):
        x0, y0, x1, y1 = np.rint(ln.xyxy).astype(int).tolist()
        if image_hw is not None:
            h, w = image_hw[:2]
            x0, x1 = (min(max(v, 0), w) for v in (x0, x1))
            y0, y1 = (min(max(v, 0), h) for v in (y0, y1))
        coords = [x0, y0, x1, y1]
        out.append(f"{json.dumps(ln.text, ensure_ascii=False)} at {box(coords) if box else coords}")
    return "\n".join(out)


def lines_prompt(lines: Sequence[TextLine], image_hw: tuple[int, int],
                 box: Callable[[Sequence[float]], str]) -> str:
    """The OCR lines as a paragraph of an MLLM prompt: a heading, then :func:`format_lines` with
    boxes as ``box(xyxy)`` writes them, or "" without lines."""
    if not lines:
        return ""
    return "Text read in the image (OCR), with boxes:\n" + format_lines(lines, image_hw, box) + "\n"
