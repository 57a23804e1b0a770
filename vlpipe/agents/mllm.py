"""The multimodal LLM: object lists, VL-SAM attention maps, option probabilities, answers.

Any Hugging Face image-text-to-text model loads through ``AutoModelForImageTextToText``. What
differs between families is where the image tokens sit and which part of the image they see;
:data:`LAYOUTS` holds one small function per family for that.

Generation runs with the model's default (fast) attention. Attention maps come from one
teacher-forced forward pass over prompt + answer with eager attention, each text layer's
(H, N, N) weights reduced into the VL-SAM flow by a forward hook as soon as the layer has run,
so peak extra memory is O(H·N²) for one layer plus O(N²) for the flow.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..pipeline import Node
from ..prompts import load_prompt, load_questions
from ..results import detections_to_json
from .attention import AttentionFlow, object_map
from .hub import from_pretrained, resolve_device, resolve_dtype
from .names import parse_object_names
from .ocr import format_lines
from .views import ObjectMap, View

# -- image-token layouts, one per family -------------------------------------------------------
# Each returns, for image `index` of a processed batch of original size hw = (h, w):
#   index (gh·gw,) — which of the image's placeholder tokens (counted from its first one) hold
#                    grid cells, in row-major order (newline tokens and other views skipped);
#   grid (gh, gw);
#   region (x0, y0, x1, y1) — the part of the input image, in its pixels, that the grid covers.
Layout = Callable[[object, dict, int, tuple[int, int]], tuple[torch.Tensor, tuple, tuple]]


def _center_crop_region(hw: tuple[int, int], crop: int) -> tuple[float, float, float, float]:
    """Region seen after 'resize shortest edge to crop, centre-crop crop x crop' (CLIP style)."""
    h, w = hw
    scale = crop / min(h, w)
    rw, rh = round(w * scale), round(h * scale)
    left, top = (rw - crop) // 2, (rh - crop) // 2
    return (left / scale, top / scale, (left + crop) / scale, (top + crop) / scale)


def llava_layout(processor, inputs, index, hw):
    """LLaVA-1.5: one CLIP grid of (S/p)² tokens over the centre crop (CLS dropped, "default")."""
    crop = processor.image_processor.crop_size["height"]
    side = crop // processor.patch_size
    return torch.arange(side * side), (side, side), _center_crop_region(hw, crop)


def llava_next_layout(processor, inputs, index, hw):
    """LLaVA-NeXT: the base view's (S/p)² tokens, then the any-resolution tiles stitched into one
    grid, unpadded to the image's aspect ratio, with a newline token closing each row. The map
    uses the stitched high-resolution grid, which covers the whole image."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, unpad_image)

    ip = processor.image_processor
    tile = ip.crop_size["height"]
    side = tile // processor.patch_size
    n_h, n_w = get_anyres_image_grid_shape(list(hw), ip.image_grid_pinpoints, tile)
    gh, gw = unpad_image(torch.empty(1, n_h * side, n_w * side), list(hw)).shape[1:]
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    order = side * side + rows * (gw + 1) + cols
    return order.flatten(), (gh, gw), (0.0, 0.0, float(hw[1]), float(hw[0]))


def qwen2_vl_layout(processor, inputs, index, hw):
    """Qwen2-VL / 2.5-VL: the whole image resized to a multiple of patch·merge; tokens are the
    merged (h/merge, w/merge) grid of ``image_grid_thw``."""
    t, gh, gw = (int(v) for v in inputs["image_grid_thw"][index])
    merge = processor.image_processor.merge_size
    gh, gw = gh // merge, gw // merge
    return torch.arange(gh * gw), (gh, gw), (0.0, 0.0, float(hw[1]), float(hw[0]))


LAYOUTS: dict[str, Layout] = {
    "llava": llava_layout,
    "llava_next": llava_next_layout,
    "qwen2_vl": qwen2_vl_layout,
    "qwen2_5_vl": qwen2_vl_layout,
}


@dataclass
class Generation:
    """One generated answer. ``prompt_ids`` (P,) include the image tokens; ``answer_ids`` (T,)."""

    prompt_ids: torch.Tensor
    answer_ids: torch.Tensor
    text: str


class Mllm:
    """A loaded processor + model, with the few operations the nodes need."""

    def __init__(self, processor, model) -> None:
        self.processor = processor
        self.model = model
        family = model.config.model_type
        if family not in LAYOUTS:
            raise ValueError(f"no image-token layout for model type {family!r} "
                             f"(supported: {', '.join(LAYOUTS)})")
        self.layout = LAYOUTS[family]
        self.image_token_id = model.config.image_token_id
        self.tokenizer = processor.tokenizer

    @classmethod
    def load(cls, model: str, device: str, dtype: str | None, trust_remote_code: bool = False):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = resolve_device(device)
        kw = {"trust_remote_code": True} if trust_remote_code else {}
        processor = from_pretrained(AutoProcessor, model, "MLLM", **kw)
        net = from_pretrained(AutoModelForImageTextToText, model, "MLLM",
                              dtype=resolve_dtype(dtype, device), **kw)
        return cls(processor, net.to(device).eval())

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompt(self, text: str, n_images: int = 1) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True)

    def encode(self, images: list, prompts: list[str]) -> dict:
        """Processor call: one prompt per entry; ``images[i]`` is prompt i's image or images."""
        self.tokenizer.padding_side = "left"
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        return inputs.to(self.device)

    @torch.inference_mode()
    def generate(self, images: list, prompts: list[str],
                 max_new_tokens: int | None = None) -> list[Generation]:
        """Batched generation: ``prompts[i]`` about ``images[i]`` (an image, or a list of images
        when the prompt has several)."""
        inputs = self.encode(images, prompts)
        kw = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        out = self.model.generate(**inputs, **kw)
        start = inputs["input_ids"].shape[1]
        gens = []
        for row, mask, seq in zip(inputs["input_ids"], inputs["attention_mask"], out):
            answer = _strip_special(seq[start:], self.tokenizer)
            gens.append(Generation(row[mask.bool()].cpu(), answer.cpu(),
                                   self.tokenizer.decode(answer, skip_special_tokens=True)))
        return gens

    @torch.inference_mode()
    def flow(self, image: np.ndarray, prompt: str, answer_ids: torch.Tensor,
             head_weighting: bool = True, regularize: bool = True):
        """Teacher-forced pass over prompt + answer; returns (R (N, N) float32 flow,
        image token positions (gh·gw,), grid (gh, gw), region (x0, y0, x1, y1), prompt length)."""
        inputs = self.encode([image], [prompt])
        prompt_len = inputs["input_ids"].shape[1]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], answer_ids[None].to(self.device)], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:  # Qwen2-VL marks image tokens; text tokens are 0
            extra = torch.zeros_like(answer_ids[None]).to(inputs["mm_token_type_ids"])
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], extra], 1)
        acc = AttentionFlow(head_weighting=head_weighting, regularize=regularize)
        with self._eager(), self._text_attention_hook(lambda w: acc.update(w[0])):
            self.model(**inputs)
        order, grid, region = self.layout(self.processor, inputs, 0, image.shape[:2])
        positions = (inputs["input_ids"][0] == self.image_token_id).nonzero()[:, 0]
        return acc.result, positions[order.to(positions.device)], grid, region, prompt_len

    @torch.inference_mode()
    def option_probs(self, image: np.ndarray, prompt: str, options: list[str]) -> np.ndarray:
        """Next-token probabilities of each option's first token, renormalized over the options."""
        inputs = self.encode([image], [prompt])
        logits = self.model(**inputs).logits[0, -1].float()
        first = [self.tokenizer(o, add_special_tokens=False)["input_ids"][0] for o in options]
        return torch.softmax(logits[first], 0).cpu().numpy()

    @contextmanager
    def _eager(self):
        before = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    @contextmanager
    def _text_attention_hook(self, fn: Callable[[torch.Tensor], None]):
        """Call ``fn(weights (B, H, N, N))`` after each language-model attention layer."""
        modules = [m for name, m in self.model.named_modules()
                   if name.split(".")[-1] == "self_attn" and "language_model" in name]
        if not modules:
            raise RuntimeError("no language-model attention layers found")
        handles = [m.register_forward_hook(lambda mod, args, out: fn(out[1])) for m in modules]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _strip_special(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Answer ids up to the first EOS/pad, without them."""
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for k, t in enumerate(ids.tolist()):
        if t in stop:
            return ids[:k]
    return ids


def token_spans(answer_ids: torch.Tensor, tokenizer, spans: list[tuple[int, int]]) -> list[list[int]]:
    """Answer-token indices covering each character span of the decoded answer."""
    ids = answer_ids.tolist()
    ends = [len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    starts = [0] + ends[:-1]
    return [[k for k, (s, e) in enumerate(zip(starts, ends)) if s < end and e > start]
            for start, end in spans]


class _MllmNode(Node):
    """Shared parameters of the MLLM nodes: which model, where, in what dtype."""

    def __init__(self, name: str, *, model: str, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, **params) -> None:
        super().__init__(name, device=resolve_device(device), **params)
        self.model_id, self.dtype, self.trust_remote_code = model, dtype, trust_remote_code

    MAX_NEW_TOKENS = 4096

    @property
    def max_new_tokens(self) -> int:
        """Tokens one generate call may add (the nodes that generate set it from their params,
        checked here to 1..MAX_NEW_TOKENS when the pipeline is built, before any model loads)."""
        return self._max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        if not 1 <= value <= self.MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be 1..{self.MAX_NEW_TOKENS}, got {value}")
        self._max_new_tokens = value

    @property
    def mllm(self) -> Mllm:
        return self.pool.get("mllm", self.model_id, self.device, self.dtype,
                             lambda: Mllm.load(self.model_id, self.device, self.dtype,
                                               self.trust_remote_code))


@dataclass
class ObjectList:
    """Objects named in one answer: the view and question it answers, the generation, and per
    name its answer-token indices."""

    view: int
    question: int
    generation: Generation
    prompt: str
    names: list[tuple[str, list[int]]]


class ObjectListNode(_MllmNode):
    """views -> objects: asks each view K "list the objects" questions, all in batched
    generate calls, and parses the names (with their answer-token spans)."""

    inputs = {"views": "views"}
    outputs = {"objects": "object_lists"}

    def __init__(self, name: str, *, questions: int = 10, prompt: str = "list_objects",
                 max_new_tokens: int = 96, gen_batch: int = 16, **kw) -> None:
        super().__init__(name, **kw)
        self.questions = load_questions(prompt, int(questions))
        self.max_new_tokens, self.gen_batch = int(max_new_tokens), int(gen_batch)

    def run(self, batch):
        mllm = self.mllm
        jobs = [(b, v, q) for b, item in enumerate(batch) for v in range(len(item["views"]))
                for q in range(len(self.questions))]
        prompts = [mllm.prompt(q) for q in self.questions]
        results = [[] for _ in batch]
        for s in range(0, len(jobs), self.gen_batch):
            chunk = jobs[s:s + self.gen_batch]
            gens = mllm.generate([batch[b]["views"][v].image for b, v, _ in chunk],
                                 [prompts[q] for _, _, q in chunk], self.max_new_tokens)
            for (b, v, q), gen in zip(chunk, gens):
                spans = parse_object_names(gen.text)
                tokens = token_spans(gen.answer_ids, mllm.tokenizer, [(n.start, n.end) for n in spans])
                names = [(n.name, t) for n, t in zip(spans, tokens) if t]
                results[b].append(ObjectList(v, q, gen, prompts[q], names))
        return [{"objects": r} for r in results]


class AttentionMapNode(_MllmNode):
    """views + objects -> maps: one teacher-forced pass per answer, one VL-SAM map per name."""

    inputs = {"views": "views", "objects": "object_lists"}
    outputs = {"maps": "object_maps"}
    max_batch = 1

    def __init__(self, name: str, *, head_weighting: bool = True, regularize: bool = True,
                 **kw) -> None:
        super().__init__(name, **kw)
        self.head_weighting, self.regularize = bool(head_weighting), bool(regularize)

    def run(self, batch):
        mllm = self.mllm
        out = []
        for item in batch:
            maps = []
            for obj in item["objects"]:
                if not obj.names:
                    continue
                view = item["views"][obj.view]
                R, positions, grid, region, prompt_len = mllm.flow(
                    view.image, obj.prompt, obj.generation.answer_ids,
                    self.head_weighting, self.regularize)
                for name, tokens in obj.names:
                    m = object_map(R, [prompt_len + t for t in tokens], positions, grid)
                    maps.append(ObjectMap(name, obj.view, obj.question, m, region))
            out.append({"maps": maps})
        return out


class PhrasesNode(_MllmNode):
    """image + question -> phrases: the objects the MLLM says it must locate to answer."""

    inputs = {"image": "image", "question": "text"}
    outputs = {"phrases": "phrases"}

    def __init__(self, name: str, *, max_new_tokens: int = 48, **kw) -> None:
        super().__init__(name, **kw)
        self.max_new_tokens = int(max_new_tokens)

    def run(self, batch):
        mllm = self.mllm
        template = load_prompt("ground_phrases")
        gens = mllm.generate([item["image"] for item in batch],
                             [mllm.prompt(template.format(question=item["question"]))
                              for item in batch], self.max_new_tokens)
        return [{"phrases": [n.name for n in parse_object_names(g.text)]} for g in gens]


class AnswerNode(_MllmNode):
    """image + question [+ crops of grounded objects, OCR lines, decision] -> answer, evidence.

    The MLLM sees the global image, then up to ``max_crops`` crops as extra images, and the OCR
    lines with their pixel boxes as text (P²G's final call)."""

    inputs = {"image": "image", "question": "text", "crops": "crops", "lines": "text_lines",
              "detections": "detections"}
    outputs = {"answer": "text", "evidence": "evidence"}
    optional = frozenset({"crops", "lines", "detections"})

    def __init__(self, name: str, *, max_crops: int = 4, max_new_tokens: int = 128, **kw) -> None:
        super().__init__(name, **kw)
        self.max_crops, self.max_new_tokens = int(max_crops), int(max_new_tokens)

    def prompt_for(self, item) -> tuple[list[np.ndarray], str]:
        crops = (item["crops"] or [])[: self.max_crops]
        lines = item["lines"] or []
        evidence = ""
        if lines:
            evidence = ("Text read in the image (OCR), with pixel boxes [x0, y0, x1, y1]:\n"
                        + format_lines(lines, item["image"].shape[:2]) + "\n")
        hint = f" and the {len(crops)} zoomed-in crops after it" if crops else ""
        text = load_prompt("answer").format(evidence=evidence, question=item["question"],
                                            crops_hint=hint)
        return [item["image"], *crops], self.mllm.prompt(text, n_images=1 + len(crops))

    def run(self, batch):
        prompts = [self.prompt_for(item) for item in batch]
        gens = self.mllm.generate([images for images, _ in prompts], [p for _, p in prompts],
                                  self.max_new_tokens)
        out = []
        for item, gen in zip(batch, gens):
            dets = item["detections"]
            evidence = {"crops": len((item["crops"] or [])[: self.max_crops]),
                        "lines": [line.to_json() for line in item["lines"] or []],
                        "boxes": [] if dets is None else detections_to_json(dets)}
            out.append({"answer": gen.text.strip(), "evidence": evidence})
        return out
