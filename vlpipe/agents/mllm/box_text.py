"""Boxes written for an MLLM prompt in the coordinate convention of its family.

Qwen2-VL and Qwen3-VL were trained on boxes in thousandths of the image (0-1000); the others get
fractions of the width and height with two decimals, as in LLaVA-1.5's grounding data. The
prompt states the image size and the convention once (:func:`box_convention`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Families whose boxes are thousandths of the image.
THOUSANDTHS = frozenset({"qwen2_vl", "qwen3_vl"})

BoxText = Callable[[Sequence[float]], str]


def box_convention(family: str, image_hw: tuple[int, int]) -> tuple[str, BoxText]:
    """(a sentence stating the image size and the box convention, pixel xyxy -> text)."""
    h, w = image_hw[:2]
    if family in THOUSANDTHS:
        unit = "in thousandths of its width and height (0 to 1000)"

        def text(xyxy: Sequence[float]) -> str:
            x0, y0, x1, y1 = (round(1000 * v / s) for v, s in zip(xyxy, (w, h, w, h)))
            return f"[{x0}, {y0}, {x1}, {y1}]"
    else:
        unit = "as fractions of its width and height"

        def text(xyxy: Sequence[float]) -> str:
            return "[" + ", ".join(f"{v / s:.2f}" for v, s in zip(xyxy, (w, h, w, h))) + "]"
    return f"The first image is {w}x{h} pixels; boxes are [x0, y0, x1, y1] {unit}.", text
