"""The pictures a batch run saves when asked: annotated images (``out/vis``) and attention
overlays (``out/attention``), under safe, collision-free names."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..io import safe_filename
from ..maps import min_max
from ..results import annotate, heatmap_overlay


def save_pictures(out: Path, file: str, image: np.ndarray, outputs: dict[str, Any],
                  save_vis: bool, save_attention: bool) -> list[Path]:
    """The annotated image (``out/vis``) and attention overlays (``out/attention``) of entry
    ``file`` when asked and the outputs have them; returns the files written."""
    written = []
    if save_vis and outputs.get("detections") is not None:
        path = out / "vis" / output_name(file, ".jpg")
        save_image(path, annotate(image, outputs["detections"]))
        written.append(path)
    if save_attention and outputs.get("maps"):
        written += save_attention_maps(out / "attention", file, image, outputs["maps"])
    return written


def output_name(file: str, suffix: str) -> str:
    """A safe, collision-free flat file name for an output derived from entry ``file``: its
    file name plus a hash of the whole entry name (``val/a b.jpg`` -> ``a_b-<8 hex>.jpg``)."""
    digest = hashlib.sha1(file.encode("utf-8")).hexdigest()[:8]
    return f"{safe_filename(PurePath(file).stem)}-{digest}{suffix}"


def save_image(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def save_attention_maps(folder: Path, file: str, image: np.ndarray, maps) -> list[Path]:
    """One heat-map overlay per object map (full-image views only); returns the files."""
    from ..agents.sam.points import resize_map

    written = []
    for k, m in enumerate(x for x in maps if x.view == 0):
        heat = min_max(resize_map(m.map, m.region, image.shape[:2]))
        path = folder / output_name(file, f"-{k:03d}-{safe_filename(m.name)}.jpg")
        save_image(path, heatmap_overlay(image, heat))
        written.append(path)
    return written
