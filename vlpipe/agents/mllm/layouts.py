"""Where an MLLM's image tokens sit and which part of the image each one sees, per family
(each family's :class:`~.families.Family` names its layout here).

Two small steps per family:

* :func:`~.families.fit_image` prepares an image for the processor. LLaVA-1.5 was trained on
  images padded to a square with the mean colour ("pad" aspect ratio), but the llava-hf
  processor resizes the short side and centre-crops, so whatever lies outside the central square is never seen (on a
  1920x270 panorama the crop covers 14% of the image). With ``fit="pad"`` (the default) such a
  processor gets the padded square, as the original model did, and the tokens cover the whole
  image; ``fit="native"`` leaves the processor's own behaviour.
* a layout function maps the image's placeholder tokens to a row-major grid and the grid to the
  region of the (fitted) image it covers; :func:`~.families.token_grid` shifts that region back
  to the original image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

FITS = ("pad", "native")

# Each layout returns, for image `index` of a processed batch of (fitted) size hw = (h, w):
#   order (gh·gw,) — which of the image's placeholder tokens (counted from its first one) hold
#                    grid cells, in row-major order (newline tokens and other views skipped);
#   grid (gh, gw);
#   region (x0, y0, x1, y1) — the part of the fitted image, in its pixels, the grid covers.
Layout = Callable[[object, dict, int, tuple[int, int]], tuple[torch.Tensor, tuple, tuple]]
Region = tuple[float, float, float, float]


def _center_crop_region(hw: tuple[int, int], crop: int) -> Region:
    """Region seen after 'resize shortest edge to crop, centre-crop crop x crop' (CLIP style)."""
    h, w = hw
    scale = crop / min(h, w)
    rw, rh = round(w * scale), round(h * scale)
    left, top = (rw - crop) // 2, (rh - crop) // 2
    return (left / scale, top / scale, (left + crop) / scale, (top + crop) / scale)


def _square_pad(hw: tuple[int, int]) -> tuple[int, int, int]:
    """(side, left, top) of the square an (h, w) image is centred in, as LLaVA pads."""
    h, w = hw
    side = max(h, w)
    return side, (side - w) // 2, (side - h) // 2


def llava_layout(processor, inputs, index, hw) -> tuple[torch.Tensor, tuple, Region]:
    """LLaVA-1.5: one CLIP grid of (S/p)² tokens (CLS dropped, "default") over what the image
    processor keeps: the padded square (``do_pad``), else the centre crop (``do_center_crop``),
    else the whole image resized."""
    ip = processor.image_processor
    crop = ip.crop_size["height"]
    side = crop // processor.patch_size
    h, w = hw
    if getattr(ip, "do_pad", False):
        square, left, top = _square_pad(hw)
        region = (-left, -top, square - left, square - top)
    elif getattr(ip, "do_center_crop", False):
        region = _center_crop_region(hw, crop)
    else:
        region = (0.0, 0.0, float(w), float(h))
    return torch.arange(side * side), (side, side), tuple(float(v) for v in region)


def llava_next_layout(processor, inputs, index, hw):
    """LLaVA-NeXT: the base view's (S/p)² tokens, then the any-resolution tiles stitched into one
    grid, unpadded to the image's aspect ratio, with a newline token closing each row. The map
    uses the stitched high-resolution grid, which covers the whole image; for a strip so thin
    that the unpadded grid has no row (or column), the base view (the whole image resized to the
    square)."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, unpad_image)

    ip = processor.image_processor
    tile = ip.crop_size["height"]
    side = tile // processor.patch_size
    n_h, n_w = get_anyres_image_grid_shape(list(hw), ip.image_grid_pinpoints, tile)
    gh, gw = unpad_image(torch.empty(1, n_h * side, n_w * side), list(hw)).shape[1:]
    if not gh or not gw:  # a strip thinner than one token of the grid: the base view's tokens
        return torch.arange(side * side), (side, side), (0.0, 0.0, float(hw[1]), float(hw[0]))
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    order = side * side + rows * (gw + 1) + cols
    return order.flatten(), (gh, gw), (0.0, 0.0, float(hw[1]), float(hw[0]))


def qwen2_vl_layout(processor, inputs, index, hw):
    """Qwen2-VL / 2.5-VL / Qwen3-VL: the whole image resized to a multiple of patch·merge; tokens are the
    merged (h/merge, w/merge) grid of ``image_grid_thw``."""
    t, gh, gw = (int(v) for v in inputs["image_grid_thw"][index])
    merge = processor.image_processor.merge_size
    gh, gw = gh // merge, gw // merge
    return torch.arange(gh * gw), (gh, gw), (0.0, 0.0, float(hw[1]), float(hw[0]))


def square_pad(image: np.ndarray, mean: list[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 -> (the image centred in a square filled with ``mean`` (3 values in
    0..1, the processor's mean colour), (x, y) offset of the image in it), as LLaVA-1.5's
    ``expand2square``; a square image is returned as is."""
    side, left, top = _square_pad(image.shape[:2])
    if (left, top) == (0, 0):
        return image, (0, 0)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = np.round(np.asarray(mean, np.float64) * 255).astype(np.uint8)
    out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out, (left, top)
