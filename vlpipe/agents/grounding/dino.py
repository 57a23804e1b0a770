"""Grounding DINO backend (transformers): open-vocabulary boxes for text phrases.

Phrases of every image are packed into ``"a dog. a cat."`` prompts that fit the model's text
length; all prompts of all images run through the model in batched forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import supervision as sv
import torch

from ...io import as_rgb_image
from ..backends import GROUNDING_BACKENDS
from ..detections import CLASS_NAME, TEXT_LABEL, concat, empty_detections
from ..hub import from_pretrained, resolve_dtype
from ..thin import stretch_thin

__all__ = ["GroundingDinoBackend", "load_grounding_dino", "load_grounding_dino_backend"]


def load_grounding_dino(model: str | Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(processor, model)`` for a Grounding DINO checkpoint (local dir or hub id), in eval
    mode on ``device``; ``dtype`` is a torch dtype, its name, or "auto"."""
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    processor = from_pretrained(AutoProcessor, str(model), "Grounding DINO")
    net = from_pretrained(GroundingDinoForObjectDetection, str(model), "Grounding DINO",
                          dtype=resolve_dtype(dtype, str(device)))
    return processor, net.to(device).eval()


@dataclass
class _Chunk:
    """One prompt: phrases of one image, with the character span of each phrase in ``text``."""

    image_index: int
    phrase_indices: list[int]  # indices into that image's phrase list
    text: str
    spans: list[tuple[int, int]]  # character span of each phrase within ``text``


class GroundingDinoBackend:
    """Detect boxes for free-text phrases with a transformers Grounding DINO model.

    Args:
        processor, model: a loaded pair (:func:`load_grounding_dino`).
        box_threshold: minimum box confidence (max token probability of a query).
        text_threshold: token probability threshold used by the processor's text labels.
        max_text_len: upper bound on prompt token length (the model's own limit also applies).
        batch_size: prompts per forward pass; ``None`` puts all prompts in one pass.
    """

    def __init__(self, processor: Any, model: Any, box_threshold: float = 0.35,
                 text_threshold: float = 0.25, max_text_len: int = 256,
                 batch_size: int | None = None) -> None:
        self.processor = processor
        self.model = model
        self.tokenizer = processor.tokenizer
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        model_len = int(getattr(model.config, "max_text_len", max_text_len))
        self.max_text_len = min(int(max_text_len), model_len)
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 or None")
        self.batch_size = batch_size
        self.forward_calls = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ------------------------------------------------------------------ prompts
    @property
    def max_aspect(self) -> float:
        """The thinnest image (long / short side) whose resize keeps one cell of the backbone's
        coarsest feature map (stride 32) across: the resize's longest edge / 32."""
        return self.processor.image_processor.size["longest_edge"] / 32

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chunk_phrases(self, phrases: Sequence[str], image_index: int = 0) -> list[_Chunk]:
        """Pack phrases into ``"a. b."`` prompts whose token length fits ``max_text_len``.

        Empty/duplicate phrases are skipped. A single phrase too long for the budget gets its
        own prompt and is truncated by the tokenizer.
        """
        budget = self.max_text_len - 2  # [CLS] ... [SEP]
        sep_tokens = self._n_tokens(".")
        chunks: list[_Chunk] = []
        cur: list[tuple[int, str]] = []
        cur_len = 0
        seen: set[str] = set()

        def flush() -> None:
            nonlocal cur, cur_len
            if cur:
                text, spans, pos = "", [], 0
                for k, (_, p) in enumerate(cur):
                    if k:
                        text += " "
                        pos += 1
                    spans.append((pos, pos + len(p)))
                    text += p + "."
                    pos += len(p) + 1
                chunks.append(_Chunk(image_index, [i for i, _ in cur], text, spans))
            cur, cur_len = [], 0

        for i, phrase in enumerate(phrases):
            clean = " ".join(str(phrase).replace(".", " ").split()).lower()
            if not clean or clean in seen:
                continue
            seen.add(clean)
            n = self._n_tokens(clean) + sep_tokens
            if cur and cur_len + n > budget:
                flush()
            cur.append((i, clean))
            cur_len += n
        flush()
        return chunks

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray], phrases: Sequence[Sequence[str]]) -> list[sv.Detections]:
        """Detect ``phrases[i]`` in ``images[i]`` (RGB uint8 HxWx3).

        Returns one ``sv.Detections`` per image: ``xyxy`` in original pixels, ``confidence``,
        ``class_id`` (index into that image's phrase list) and ``data["class_name"]`` (the phrase).
        """
        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images but {len(phrases)} phrase lists")
        images = [as_rgb_image(im) for im in images]
        chunks = [c for i, ph in enumerate(phrases) for c in self.chunk_phrases(ph, i)]
        per_image: list[list[sv.Detections]] = [[] for _ in images]
        if not chunks:
            return [empty_detections() for _ in images]

        used = sorted({c.image_index for c in chunks})
        # Boxes come out relative to the input and are scaled to ``target_sizes`` (each image's
        # own size), so a stretched thin image needs no mapping back.
        pix = self.processor.image_processor(
            images=[stretch_thin(images[i], self.max_aspect) for i in used], return_tensors="pt",
            input_data_format="channels_last")
        row_of = {img_idx: row for row, img_idx in enumerate(used)}
        bs = self.batch_size or len(chunks)

        for start in range(0, len(chunks), bs):
            batch = chunks[start : start + bs]
            rows = torch.tensor([row_of[c.image_index] for c in batch])
            text = self.tokenizer(
                [c.text for c in batch],
                padding="longest",
                truncation=True,
                max_length=self.max_text_len,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets = text.pop("offset_mapping")
            inputs = {k: v.to(self.device) for k, v in text.items()}
            inputs["pixel_values"] = pix["pixel_values"][rows].to(self.device, self.dtype)
            if "pixel_mask" in pix:
                inputs["pixel_mask"] = pix["pixel_mask"][rows].to(self.device)
            outputs = self.model(**inputs)
            self.forward_calls += 1

            sizes = [images[c.image_index].shape[:2] for c in batch]
            results = self.processor.post_process_grounded_object_detection(
                outputs,
                input_ids=inputs["input_ids"],
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=sizes,
            )
            probs = outputs.logits.sigmoid().float().cpu()
            for b, (chunk, res) in enumerate(zip(batch, results)):
                dets = self._to_detections(chunk, res, probs[b], offsets[b], phrases[chunk.image_index])
                per_image[chunk.image_index].append(dets)

        out = []
        for i, parts in enumerate(per_image):
            dets = concat(parts)
            if len(dets):
                h, w = images[i].shape[:2]
                dets.xyxy = np.clip(dets.xyxy, 0, [w, h, w, h]).astype(np.float32)
                order = np.argsort(-dets.confidence, kind="stable")
                dets = dets[order]
            out.append(dets)
        return out

    def _to_detections(self, chunk: _Chunk, res: dict, probs: torch.Tensor, offsets: torch.Tensor,
                       phrases: Sequence[str]) -> sv.Detections:
        """Turn one post-processed prompt result into Detections labelled by phrase.

        Each kept query is assigned the phrase whose tokens have the highest probability.
        """
        # Re-derive which queries post-processing kept (same rule as the processor).
        keep = probs.max(dim=-1).values > self.box_threshold
        q_probs = probs[keep]  # (K, max_text_len)
        n = len(res["scores"])
        if n == 0:
            return empty_detections()
        assert q_probs.shape[0] == n, "query selection mismatch with post-processing"

        # Token positions of each phrase (via character offsets; special tokens have (0, 0)).
        seq_len = min(offsets.shape[0], q_probs.shape[1])
        phrase_scores = torch.full((n, len(chunk.spans)), -1.0)
        for j, (c0, c1) in enumerate(chunk.spans):
            tok = [t for t in range(seq_len)
                   if offsets[t, 1] > offsets[t, 0] and offsets[t, 0] >= c0 and offsets[t, 1] <= c1]
            if tok:
                phrase_scores[:, j] = q_probs[:, tok].max(dim=-1).values
        best = phrase_scores.argmax(dim=-1).tolist()
        class_id = np.array([chunk.phrase_indices[j] for j in best], dtype=int)
        names = np.array([str(phrases[k]) for k in class_id], dtype=object).astype(str)
        return sv.Detections(
            xyxy=res["boxes"].float().cpu().numpy().reshape(-1, 4).astype(np.float32),
            confidence=res["scores"].float().cpu().numpy().astype(np.float32),
            class_id=class_id,
            data={CLASS_NAME: names, TEXT_LABEL: np.array(list(res["text_labels"]), dtype=str)},
        )


@GROUNDING_BACKENDS.register("grounding_dino")
def load_grounding_dino_backend(weights: str, device: str, dtype: str, *,
                                box_threshold: float = 0.35,
                                text_threshold: float = 0.25) -> GroundingDinoBackend:
    return GroundingDinoBackend(*load_grounding_dino(weights, device, dtype), box_threshold,
                                text_threshold)
