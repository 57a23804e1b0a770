"""MLLM families: everything vlpipe knows about one, in one record, registered once.

A family is a transformers ``model_type`` (``model.config.model_type``) whose image tokens vlpipe
can place on the image. Its :class:`Family` record holds all that differs between families: the
layout of its image tokens (:mod:`.layouts`), whether its processor needs the image padded to a
square, the thinnest image its processor takes, the units of the boxes it was trained on, the
builder of a tiny random-weight model (tests, ``vlpipe models tiny``) and the image processor of
the released model (the oracle world of :mod:`vlpipe.testing.oracle`). The backend, the nodes,
the tiny models, the oracle and the tests all read :data:`FAMILIES`; nothing else lists families.

Adding a family is one :func:`register_family` call here plus its tiny builder in
:mod:`vlpipe.tiny.mllm`; ``tests/test_families.py`` fails while any part is missing.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .box_text import BOX_UNITS
from .layouts import (FITS, Layout, Region, llava_layout, llava_next_layout, qwen2_vl_layout,
                      square_pad)

InputSize = Callable[[object, tuple[int, int]], tuple[int, int]]


@dataclass(frozen=True)
class Family:
    """One MLLM family.

    ``name``: the transformers ``model_type``; ``layout``: its image tokens -> grid and region
    (:data:`~.layouts.Layout`); ``boxes``: the units of the boxes it was trained on
    (:data:`~.box_text.BOX_UNITS`); ``tiny``: ``"module:function"`` building a tiny random-weight
    model of the family in a folder (``function(out: Path) -> Path``); ``released``: the image
    side of the released model's processor, built from its config (``() -> namespace`` with
    ``image_processor`` and ``patch_size``); ``square_pad``: its processor may centre-crop a
    single view, so ``image_fit: pad`` pads the image to a square first (LLaVA-1.5);
    ``max_aspect``: the thinnest image (long / short side) its processor takes, a thinner one is
    stretched; ``input_hw``: (processor, (h, w)) -> the (h, w) its processor resizes an image
    to, needed when ``boxes`` is ``"pixels"`` (pixels of that resized input)."""

    name: str
    layout: Layout
    boxes: str
    tiny: str
    released: Callable[[], SimpleNamespace]
    square_pad: bool = False
    max_aspect: float = math.inf
    input_hw: InputSize | None = None

    def __post_init__(self) -> None:
        if self.boxes not in BOX_UNITS:
            raise ValueError(f"family {self.name!r}: boxes {self.boxes!r} is none of "
                             f"{', '.join(BOX_UNITS)}")
        if self.boxes == "pixels" and (self.input_hw is None or self.square_pad):
            raise ValueError(f"family {self.name!r}: boxes in pixels of the resized input need "
                             "input_hw, and an image not padded to a square")
        module, sep, function = self.tiny.partition(":")
        if not (module and sep and function):
            raise ValueError(f"family {self.name!r}: tiny is 'module:function', got {self.tiny!r}")
        if not (callable(self.layout) and callable(self.released)):
            raise ValueError(f"family {self.name!r}: layout and released must be callables")

    def build_tiny(self, out: str | Path) -> Path:
        """Build the family's tiny random-weight model (processor + weights) in ``out``."""
        module, _, function = self.tiny.partition(":")
        return getattr(importlib.import_module(module), function)(Path(out))


FAMILIES: dict[str, Family] = {}


@dataclass(frozen=True)
class Locator:
    """A locator-only family: an MLLM whose answers hold positions (``detect-branches``' points
    and boxes, parsed by :mod:`.vlm_coords`) but whose image tokens vlpipe does not place (no
    layout: no attention maps).

    ``units``: the units of those positions (``location_bins``: Florence-2's ``<loc_N>``, bins
    0..999 of the width / height; ``percent``: Molmo's points, 0..100; ``thousandths``: Molmo
    2's points, 0..1000); ``backend``: the MLLM backend that drives it (None: its answers parse,
    no node runs it yet); ``tiny``: ``"module:function"`` building a tiny random-weight model
    of it (None with no backend)."""

    name: str
    units: str
    backend: str | None = None
    tiny: str | None = None

    def build_tiny(self, out: str | Path) -> Path:
        """Build the locator's tiny random-weight model (processor + weights) in ``out``."""
        module, _, function = self.tiny.partition(":")
        return getattr(importlib.import_module(module), function)(Path(out))


#: Locator-only families (:class:`Locator`). A registered family's units are its
#: :attr:`Family.boxes`; a name is in one place or the other, never both.
LOCATORS: dict[str, Locator] = {locator.name: locator for locator in (
    Locator("florence2", "location_bins", backend="florence2",
            tiny="vlpipe.tiny.locators:build_florence2"),
    Locator("molmo", "percent"),  # remote code only: no transformers class to build or drive
    Locator("molmo2", "thousandths", backend="molmo2", tiny="vlpipe.tiny.locators:build_molmo2"),
)}


def answer_units(name: str) -> str:
    """The units positions are in, in answers of family ``name`` (registered or locator-only);
    a ValueError listing the known families otherwise."""
    if name in FAMILIES:
        return FAMILIES[name].boxes
    if name in LOCATORS:
        return LOCATORS[name].units
    raise ValueError(f"no coordinate convention for family {name!r} "
                     f"(known: {', '.join([*FAMILIES, *LOCATORS])})")


def locator_backend(name: str) -> str:
    """The MLLM backend that asks a model of family ``name`` for positions: ``transformers``
    for a registered family, the locator's own otherwise; a ValueError when none drives it."""
    if name in FAMILIES:
        return "transformers"
    if name in LOCATORS and LOCATORS[name].backend:
        return LOCATORS[name].backend
    drivable = [*FAMILIES, *(n for n, loc in LOCATORS.items() if loc.backend)]
    raise ValueError(f"no backend drives {name!r} models as a locator (drivable: "
                     f"{', '.join(drivable)})")


def register_family(family: Family) -> Family:
    """Make ``family`` known to the MLLM backend, the tiny models, the oracle and the tests."""
    if family.name in FAMILIES or family.name in LOCATORS:
        raise ValueError(f"MLLM family {family.name!r} is registered already")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The registered family ``name``; a ValueError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"no image-token layout for model type {name!r} "
                         f"(supported: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def fit_image(family: str, processor, image: np.ndarray, fit: str = "pad"
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 -> (the image the processor gets, (x, y) offset of the original in it).

    With ``fit="pad"``, the processor of a ``square_pad`` family (LLaVA-1.5) that centre-crops
    without padding gets the image centred in a square filled with the processor's mean colour
    (LLaVA-1.5's ``expand2square``), so its crop is the whole image. Other families, and
    ``fit="native"``, get the image as is.
    """
    if fit not in FITS:
        raise ValueError(f"unknown image fit {fit!r} (known: {', '.join(FITS)})")
    ip = processor.image_processor
    if (fit == "native" or not get_family(family).square_pad or getattr(ip, "do_pad", False)
            or not getattr(ip, "do_center_crop", False)):
        return image, (0, 0)
    return square_pad(image, ip.image_mean)


def token_grid(family: str, processor, inputs: dict, index: int, fitted_hw: tuple[int, int],
               offset: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int], Region]:
    """The family's layout for image ``index`` of ``inputs`` (processed from a fitted image of
    size ``fitted_hw``), with the region moved back into the original image's pixels."""
    order, grid, (x0, y0, x1, y1) = get_family(family).layout(processor, inputs, index, fitted_hw)
    dx, dy = offset
    return order, grid, (x0 - dx, y0 - dy, x1 - dx, y1 - dy)


# -- the released models' image processors (sizes from their configs, no weights) ------------
def _clip_processor() -> SimpleNamespace:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px."""
    from transformers import CLIPImageProcessor

    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return SimpleNamespace(image_processor=ip, patch_size=14)


def _anyres_processor() -> SimpleNamespace:
    """llava-hf/llava-v1.6-mistral-7b-hf: 336 px tiles on its grid pinpoints."""
    from transformers import LlavaNextImageProcessor

    ip = LlavaNextImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    return SimpleNamespace(image_processor=ip, patch_size=14)


def _qwen_processor(patch_size: int, min_pixels: int, max_pixels: int) -> SimpleNamespace:
    """A Qwen-VL smart-resize processor: sides multiples of patch·2, min..max pixels."""
    from transformers import Qwen2VLImageProcessor

    ip = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels,
                               patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    return SimpleNamespace(image_processor=ip, patch_size=patch_size)


def qwen_input_hw(processor, hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) a Qwen-VL processor resizes an (h, w) image to (its ``smart_resize``: sides
    multiples of patch·merge, pixels within the processor's limits)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = processor.image_processor
    return smart_resize(*hw, factor=ip.patch_size * ip.merge_size,
                        min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])


QWEN_MAX_ASPECT = 200  # smart_resize refuses a thinner image

register_family(Family(
    "llava", llava_layout, boxes="fractions", tiny="vlpipe.tiny.mllm:build_llava",
    released=_clip_processor, square_pad=True))
register_family(Family(
    "llava_next", llava_next_layout, boxes="fractions", tiny="vlpipe.tiny.mllm:build_llava_next",
    released=_anyres_processor))
register_family(Family(  # Qwen/Qwen2-VL-7B-Instruct; boxes in thousandths (Qwen2-VL report)
    "qwen2_vl", qwen2_vl_layout, boxes="thousandths", tiny="vlpipe.tiny.mllm:build_qwen2_vl",
    released=partial(_qwen_processor, 14, 3136, 12845056), max_aspect=QWEN_MAX_ASPECT))
register_family(Family(  # Qwen/Qwen2.5-VL-7B-Instruct; boxes in pixels of the resized input
    "qwen2_5_vl", qwen2_vl_layout, boxes="pixels", tiny="vlpipe.tiny.mllm:build_qwen2_5_vl",
    released=partial(_qwen_processor, 14, 3136, 12845056), max_aspect=QWEN_MAX_ASPECT,
    input_hw=qwen_input_hw))
register_family(Family(  # Qwen/Qwen3-VL-8B-Instruct: patch 16, 256² to 4096² pixels
    "qwen3_vl", qwen2_vl_layout, boxes="thousandths", tiny="vlpipe.tiny.mllm:build_qwen3_vl",
    released=partial(_qwen_processor, 16, 65536, 16777216), max_aspect=QWEN_MAX_ASPECT))
