"""One image's way through a batch: decoded (:class:`Loaded`), run in a batch of the pipeline,
turned into its record (pictures saved when asked) and its :class:`Line` of
``predictions.jsonl``. Every engine goes through :func:`batch_lines`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import load_image
from ..pipeline import Pipeline
from ..results import image_record
from .inputs import Entry
from .pictures import save_pictures
from .predictions import record_line


@dataclass(frozen=True)
class Loaded:
    """One entry, decoded: its (H, W, 3) uint8 RGB image, or the error that stopped loading."""

    file: str
    image_id: int | None
    image: np.ndarray | None
    error: str | None = None


def load_entry(entry: Entry) -> Loaded:
    try:
        return Loaded(entry.file, entry.image_id, load_image(entry.path))
    except (ValueError, OSError) as exc:
        return Loaded(entry.file, entry.image_id, None, str(exc))


@dataclass(frozen=True)
class Line:
    """One image's finished line of ``predictions.jsonl`` (``text``, newline included) with
    its ``file`` and ``error`` for the run's summary."""

    file: str
    error: str | None
    text: str

    @classmethod
    def of(cls, record: dict[str, Any]) -> Line:
        return cls(record["file"], record["error"], record_line(record))


def make_record(file: str, image_id: int | None, image: np.ndarray | None, outcome,
                out: Path, save_vis: bool = False, save_attention: bool = False) -> dict[str, Any]:
    """The JSON record for one image from a pipeline Result or a load-error message; writes the
    annotated image / attention overlays when asked."""
    hw = None if image is None else image.shape[:2]
    if isinstance(outcome, str) or outcome.error is not None:
        error = outcome if isinstance(outcome, str) else outcome.error
        return image_record(file, image_id, hw, None, error)
    save_pictures(out, file, image, outcome.outputs, save_vis, save_attention)
    return image_record(file, image_id, hw, outcome.outputs["detections"])


def batch_lines(pipeline: Pipeline, batch: list[Loaded], out: Path, save_vis: bool = False,
                save_attention: bool = False) -> list[Line]:
    """The lines of ``batch``, in order: the images that loaded go through the pipeline in one
    ``run_batch`` (pictures saved under ``out`` when asked); an image that did not load is
    recorded with its error."""
    images = [item.image for item in batch if item.error is None]
    results = iter(pipeline.run_batch([{"image": image} for image in images]) if images else [])
    return [Line.of(make_record(item.file, item.image_id, item.image,
                                item.error if item.error is not None else next(results),
                                out, save_vis, save_attention)) for item in batch]
