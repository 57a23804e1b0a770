"""OWLv2 backend (transformers ``Owlv2ForObjectDetection``): open-vocabulary boxes for phrases.

The same contract as :class:`~vlpipe.agents.grounding.dino.GroundingDinoBackend`. OWLv2 embeds each
phrase as its own text query, so no prompt packing is needed: the phrase lists of a batch of
images are padded to the longest one and go through the model in one forward pass per
``batch_size`` images, never one pass per phrase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import supervision as sv
import torch

from ...io import as_rgb_image
from ..backends import GROUNDING_BACKENDS
from ..detections import CLASS_NAME, TEXT_LABEL, empty_detections
from ..hub import from_pretrained, resolve_dtype

__all__ = ["Owlv2Backend", "load_owlv2", "load_owlv2_backend"]


def load_owlv2(model: str | Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(processor, model)`` for an OWLv2 checkpoint (local dir or hub id, e.g.
    ``google/owlv2-base-patch16-ensemble``), in eval mode on ``device``."""
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    processor = from_pretrained(AutoProcessor, str(model), "OWLv2")
    net = from_pretrained(Owlv2ForObjectDetection, str(model), "OWLv2",
                          dtype=resolve_dtype(dtype, str(device)))
    return processor, net.to(device).eval()


class Owlv2Backend:
    """Detect boxes for free-text phrases with a transformers OWLv2 model.

    Args:
        processor, model: a loaded pair (:func:`load_owlv2`).
        box_threshold: minimum box confidence (sigmoid of the query's class logit).
        batch_size: images per forward pass; ``None`` puts all images in one pass.
    """

    def __init__(self, processor: Any, model: Any, box_threshold: float = 0.1,
                 batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        self.processor, self.model = processor, model
        self.box_threshold = float(box_threshold)
        self.batch_size = batch_size
        self.forward_calls = 0

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], phrases: Sequence[Sequence[str]]) -> list[sv.Detections]:
        """Detect ``phrases[i]`` in ``images[i]`` (RGB uint8 HxWx3).

        Returns one ``sv.Detections`` per image: ``xyxy`` in original pixels, ``confidence``,
        ``class_id`` (index into that image's phrase list) and ``data["class_name"]`` (the
        phrase), highest confidence first. Each box keeps its best-scoring phrase."""
        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images but {len(phrases)} phrase lists")
        from transformers.image_transforms import center_to_corners_format

        images = [as_rgb_image(im) for im in images]
        phrases = [[str(p) for p in ph] for ph in phrases]
        used = [i for i, ph in enumerate(phrases) if ph]
        out = [empty_detections() for _ in images]
        bs = self.batch_size or max(1, len(used))
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(used), bs):
            rows = used[start:start + bs]
            inputs = self.processor(text=[phrases[i] for i in rows],
                                    images=[images[i] for i in rows], return_tensors="pt",
                                    input_data_format="channels_last")
            inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                      for k, v in inputs.items()}
            outputs = self.model(**inputs)
            self.forward_calls += 1
            # logits (B, patches, max_queries): queries past an image's own count are padding
            logits = outputs.logits.float().cpu()
            boxes = center_to_corners_format(outputs.pred_boxes.float().cpu())  # (B, patches, 4)
            for b, i in enumerate(rows):
                h, w = images[i].shape[:2]
                # boxes are relative to the image padded to a square of its longer side
                xyxy = boxes[b] * max(h, w)
                best = logits[b, :, :len(phrases[i])].max(dim=-1)
                scores = best.values.sigmoid()
                keep = scores > self.box_threshold
                out[i] = _detections(xyxy[keep], scores[keep], best.indices[keep], phrases[i], (h, w))
        return out


@GROUNDING_BACKENDS.register("owlv2")
def load_owlv2_backend(weights: str, device: str, dtype: str, *,
                       box_threshold: float = 0.1) -> Owlv2Backend:
    return Owlv2Backend(*load_owlv2(weights, device, dtype), box_threshold)


def _detections(xyxy: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                phrases: list[str], hw: tuple[int, int]) -> sv.Detections:
    if len(scores) == 0:
        return empty_detections()
    h, w = hw
    order = torch.argsort(-scores, stable=True)
    class_id = labels[order].numpy().astype(int)
    names = np.array([phrases[k] for k in class_id], dtype=str)
    return sv.Detections(
        xyxy=np.clip(xyxy[order].numpy(), 0, [w, h, w, h]).astype(np.float32),
        confidence=scores[order].numpy().astype(np.float32),
        class_id=class_id,
        data={CLASS_NAME: names, TEXT_LABEL: names.copy()},
    )
