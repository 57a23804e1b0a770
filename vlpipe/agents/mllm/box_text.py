"""Boxes written for an MLLM prompt in the units its family was trained on.

Three units (a family's :attr:`~.families.Family.boxes`): ``"fractions"`` of the width and
height with two decimals, as in LLaVA-1.5's grounding data; ``"thousandths"`` of the image
(0-1000), as Qwen2-VL and Qwen3-VL were trained; ``"pixels"`` of the input the processor resized
the image to, as Qwen2.5-VL was trained (absolute coordinates of the resized image). The prompt
states the image size and the units once (:func:`box_convention`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

BOX_UNITS = ("fractions", "thousandths", "pixels")

BoxText = Callable[[Sequence[float]], str]


def box_convention(units: str, image_hw: tuple[int, int], input_hw: tuple[int, int] | None = None
                   ) -> tuple[str, BoxText]:
    """(a sentence stating the image size and the box units, pixel xyxy -> text). ``input_hw``:
    the size the processor resizes the image to (``"pixels"`` only)."""
    h, w = image_hw[:2]
    if units == "thousandths":
        unit = "in thousandths of its width and height (0 to 1000)"

        def text(xyxy: Sequence[float]) -> str:
            x0, y0, x1, y1 = (round(1000 * v / s) for v, s in zip(xyxy, (w, h, w, h)))
            return f"[{x0}, {y0}, {x1}, {y1}]"
    elif units == "pixels":
        rh, rw = input_hw
        unit = f"in pixels of the image resized to {rw}x{rh}"

        def text(xyxy: Sequence[float]) -> str:
            x0, y0, x1, y1 = (round(v * r / s) for v, r, s in zip(xyxy, (rw, rh, rw, rh),
                                                                 (w, h, w, h)))
            return f"[{x0}, {y0}, {x1}, {y1}]"
    elif units == "fractions":
        unit = "as fractions of its width and height"

        def text(xyxy: Sequence[float]) -> str:
            return "[" + ", ".join(f"{v / s:.2f}" for v, s in zip(xyxy, (w, h, w, h))) + "]"
    else:
        raise ValueError(f"unknown box units {units!r} (known: {', '.join(BOX_UNITS)})")
    return f"The first image is {w}x{h} pixels; boxes are [x0, y0, x1, y1] {unit}.", text
