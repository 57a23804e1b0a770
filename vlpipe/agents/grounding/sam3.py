"""SAM 3 (transformers, ``facebook/sam3``) as a grounding backend (``backend: sam3``).

Promptable concept segmentation with ``Sam3Model``: a noun phrase in, every instance of it out
(boxes, masks, scores). :class:`Sam3ConceptBackend` encodes each image once and runs every
phrase of every image in batched forward passes over those image features, never one image
encoding per phrase. SAM 3's point-prompted tracker is a SAM backend: :mod:`vlpipe.agents.sam.sam3`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import supervision as sv
import torch

from ...io import as_rgb_image
from ..backends import GROUNDING_BACKENDS
from ..detections import CLASS_NAME, TEXT_LABEL, concat, empty_detections
from ..hub import from_pretrained, resolve_dtype

__all__ = ["Sam3ConceptBackend", "load_sam3", "load_sam3_concept"]

TEXT_TOKENS = 32  # Sam3Processor pads every phrase to 32 tokens (SAM 3's CLIP text length)


def load_sam3(model: str | Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(processor, model)`` for SAM 3's concept detector (``Sam3Model``, e.g.
    ``facebook/sam3``), in eval mode on ``device``."""
    from transformers import Sam3Model, Sam3Processor

    processor = from_pretrained(Sam3Processor, str(model), "SAM 3")
    net = from_pretrained(Sam3Model, str(model), "SAM 3", dtype=resolve_dtype(dtype, str(device)))
    return processor, net.to(device).eval()


class Sam3ConceptBackend:
    """Every instance of each phrase, with its mask, from a transformers ``Sam3Model``.

    Score of an instance = sigmoid(query logit) × sigmoid(presence logit), as SAM 3's
    post-processing computes it; masks are the query's mask probabilities resized (bilinear) to
    the image and cut at ``mask_threshold``.

    Args:
        processor, model: a loaded pair (:func:`load_sam3`).
        box_threshold: minimum instance score.
        mask_threshold: probability above which a pixel is in the mask.
        batch_size: (image, phrase) pairs per forward pass; ``None`` puts all in one pass.
    """

    def __init__(self, processor: Any, model: Any, box_threshold: float = 0.5,
                 mask_threshold: float = 0.5, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        self.processor, self.model = processor, model
        self.box_threshold, self.mask_threshold = float(box_threshold), float(mask_threshold)
        self.batch_size = batch_size
        self.forward_calls = 0

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], phrases: Sequence[Sequence[str]]) -> list[sv.Detections]:
        """Detect ``phrases[i]`` in ``images[i]`` (RGB uint8 HxWx3).

        Returns one ``sv.Detections`` per image: ``xyxy`` (pixel edges of the original image),
        ``mask`` (an ``sv.CompactMask`` of the image size), ``confidence``, ``class_id`` (index
        into that image's phrase list) and ``data["class_name"]`` (the phrase), highest
        confidence first."""
        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images but {len(phrases)} phrase lists")
        images = [as_rgb_image(im) for im in images]
        pairs = [(i, k, str(p)) for i, ph in enumerate(phrases) for k, p in enumerate(ph)]
        parts: list[list[sv.Detections]] = [[] for _ in images]
        if pairs:
            used = sorted({i for i, _, _ in pairs})
            row_of = {i: row for row, i in enumerate(used)}
            pixels = self.processor.image_processor(images=[images[i] for i in used],
                                                    return_tensors="pt",
                                                    input_data_format="channels_last")["pixel_values"]
            vision = self.model.get_vision_features(pixels.to(self.model.device, self.model.dtype))
            bs = self.batch_size or len(pairs)
            for start in range(0, len(pairs), bs):
                batch = pairs[start:start + bs]
                out = self._forward(vision, [row_of[i] for i, _, _ in batch], [p for _, _, p in batch])
                for b, (i, k, _) in enumerate(batch):
                    dets = self._instances(out, b, images[i].shape[:2], k, phrases[i])
                    if len(dets):
                        parts[i].append(dets)
        return [_by_confidence(p) for p in parts]

    def _forward(self, vision, rows: list[int], texts: list[str]):
        """One forward for len(rows) (image, phrase) pairs over the images' encoded features."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        index = torch.as_tensor(rows, device=self.model.device)
        pick = lambda levels: tuple(t.index_select(0, index) for t in levels)
        text = self.processor.tokenizer(texts, padding="max_length", max_length=TEXT_TOKENS,
                                        truncation=True, return_tensors="pt")
        self.forward_calls += 1
        return self.model(
            vision_embeds=Sam3VisionEncoderOutput(
                fpn_hidden_states=pick(vision.fpn_hidden_states),
                fpn_position_encoding=pick(vision.fpn_position_encoding)),
            input_ids=text["input_ids"].to(self.model.device),
            attention_mask=text["attention_mask"].to(self.model.device))

    def _instances(self, out, b: int, hw: tuple[int, int], phrase_index: int,
                   phrases: Sequence[str]) -> sv.Detections:
        """Pair ``b`` of a forward's outputs -> Detections of the instances above threshold.
        pred_boxes (B, Q, 4) are xyxy fractions of the image; pred_masks (B, Q, m, m) logits."""
        h, w = hw
        scores = out.pred_logits[b].float().sigmoid() * out.presence_logits[b].float().sigmoid()
        keep = scores > self.box_threshold
        if not keep.any():
            return empty_detections()
        probs = out.pred_masks[b][keep].float().sigmoid()[None]  # (1, K, m, m)
        masks = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear",
                                                align_corners=False)[0] > self.mask_threshold
        xyxy = out.pred_boxes[b][keep].float() * torch.tensor([w, h, w, h], device=scores.device)
        xyxy = np.clip(xyxy.cpu().numpy(), 0, [w, h, w, h]).astype(np.float32)
        masks = masks.cpu().numpy()
        n = len(xyxy)
        names = np.full(n, str(phrases[phrase_index]))
        return sv.Detections(
            xyxy=xyxy, mask=sv.CompactMask.from_dense(masks, sv.mask_to_xyxy(masks), (h, w)),
            confidence=scores[keep].cpu().numpy().astype(np.float32),
            class_id=np.full(n, phrase_index), data={CLASS_NAME: names, TEXT_LABEL: names.copy()})


def _by_confidence(parts: list[sv.Detections]) -> sv.Detections:
    """One image's per-phrase Detections merged, highest confidence first."""
    dets = concat(parts)
    return dets[np.argsort(-dets.confidence, kind="stable")]


@GROUNDING_BACKENDS.register("sam3")
def load_sam3_concept(weights: str, device: str, dtype: str, *,
                      box_threshold: float = 0.5) -> Sam3ConceptBackend:
    return Sam3ConceptBackend(*load_sam3(weights, device, dtype), box_threshold)
