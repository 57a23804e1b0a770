"""The MLLM backend (local weights): generation, VL-SAM attention flows, option probabilities.

Any Hugging Face image-text-to-text model of a registered family loads through
``AutoModelForImageTextToText``. What differs between families (where the image tokens sit and
which part of the image they see, how images are fitted, the units of boxes) is in the family's
record, :mod:`vlpipe.agents.mllm.families`.

Generation runs with the model's default (fast) attention. Attention maps come from one
teacher-forced forward pass over prompt + answer whose language-model attention layers run
:mod:`~vlpipe.agents.mllm.flow_attention`: each layer's output and its head reduction are computed a
block of query rows at a time and folded into the VL-SAM flow, never the (H, N, N) weights, so
peak extra memory is O(N²).

The questions about one view share its prompt prefix (system text and image tokens): generation
and the teacher-forced passes prefill it once and reuse its KV cache (:meth:`Mllm.generate`,
:meth:`Mllm.flows`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import flow_attention
from ..backends import MLLM_BACKENDS
from ..hub import from_pretrained, resolve_device, resolve_dtype
from ..thin import stretch_thin
from .attention import AttentionFlow
from .box_text import BoxText, box_convention
from .families import fit_image, get_family, token_grid


@dataclass
class Generation:
    """One generated answer: ``answer_ids`` (T,); ``stopped``: generation ended with an
    end-of-sequence token (False: cut at max_new_tokens)."""

    answer_ids: torch.Tensor
    text: str
    stopped: bool


class TokenFlow(NamedTuple):
    """One teacher-forced pass (:meth:`Mllm.flow`): ``flow`` (N, N) float32, the VL-SAM flow R
    over the sequence's N tokens (the last layer's S' with ``flow=False``, see
    :class:`AttentionFlow`); ``positions`` (gh·gw,) the sequence positions of the image tokens in
    row-major grid order; ``grid`` (gh, gw); ``region`` (x0, y0, x1, y1) the part of the image,
    in its pixels, the grid covers; ``prompt_length`` the prompt's tokens (the answer's follow)."""

    flow: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int]
    region: tuple[float, float, float, float]
    prompt_length: int


def load_image_text_model(model: str, device: str, dtype: str | None, kind: str,
                          trust_remote_code: bool = False) -> tuple:
    """(processor, model in eval mode on ``device``) of an image-text-to-text model (a folder or
    a hub id); ``kind`` names it in the error when its weights are missing."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(device)
    kw = {"trust_remote_code": True} if trust_remote_code else {}
    processor = from_pretrained(AutoProcessor, model, kind, **kw)
    net = from_pretrained(AutoModelForImageTextToText, model, kind,
                          dtype=resolve_dtype(dtype, device), **kw)
    return processor, net.to(device).eval()


class Mllm:
    """A loaded processor + model, with the few operations the nodes need."""

    def __init__(self, processor, model) -> None:
        self.processor = processor
        self.model = model
        self.family = get_family(model.config.model_type).name
        self.image_token_id = model.config.image_token_id
        self.tokenizer = processor.tokenizer

    @classmethod
    def load(cls, model: str, device: str, dtype: str | None, *,
             trust_remote_code: bool = False) -> Mllm:
        return cls(*load_image_text_model(model, device, dtype, "MLLM", trust_remote_code))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompt(self, text: str, n_images: int = 1) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True)

    def encode(self, images: list, prompts: list[str], fit: str = "pad") -> dict:
        """Processor call: one prompt per entry; ``images[i]`` is prompt i's image or images,
        each prepared (:meth:`prepare`)."""
        fitted = [[self.prepare(im, fit) for im in entry] if isinstance(entry, list)
                  else self.prepare(entry, fit) for entry in images]
        self.tokenizer.padding_side = "left"
        inputs = self.processor(images=fitted, text=prompts, return_tensors="pt", padding=True,
                                input_data_format="channels_last")  # not a guess: a 3-row image is no CHW
        return inputs.to(self.device)

    def fit(self, image: np.ndarray, fit: str = "pad") -> tuple[np.ndarray, tuple[int, int]]:
        """(fitted image, (x, y) offset of ``image`` in it) for this model's processor."""
        return fit_image(self.family, self.processor, image, fit)

    def prepare(self, image: np.ndarray, fit: str = "pad") -> np.ndarray:
        """The image the processor gets: fitted (:func:`~.families.fit_image`) and, when thinner
        than the family takes (:attr:`~.families.Family.max_aspect`), stretched."""
        return stretch_thin(self.fit(image, fit)[0], get_family(self.family).max_aspect)

    def box_convention(self, image: np.ndarray) -> tuple[str, BoxText]:
        """(the sentence stating ``image``'s size and the box units, pixel xyxy -> text) in the
        units the family was trained on (:mod:`.box_text`)."""
        return box_convention(get_family(self.family).boxes, image.shape[:2],
                              self.input_hw(image))

    def locate_prompt(self, kind: str, name: str, template: str) -> str:
        """The chat prompt asking for ``kind`` (boxes, points) of ``name``: ``template`` with
        ``{name}`` filled in (the locate nodes' prompt file)."""
        return self.prompt(template.format(name=name))

    def input_hw(self, image: np.ndarray, fit: str = "pad") -> tuple[int, int] | None:
        """(h, w) the processor resizes ``image`` to, for a family that needs it (boxes in pixels
        of that input: :attr:`~.families.Family.input_hw`); None for the others."""
        family = get_family(self.family)
        if family.input_hw is None:
            return None
        return family.input_hw(self.processor, self.prepare(image, fit).shape[:2])

    @torch.inference_mode()
    def generate(self, images: list, prompts: list[str], max_new_tokens: int | None = None,
                 fit: str = "pad", share_prefix: bool = True) -> list[Generation]:
        """Batched generation: ``prompts[i]`` about ``images[i]`` (an image, or a list of images
        when the prompt has several). When every prompt is about the same image object and
        ``share_prefix`` is on, the prompts' shared prefix (system text and image tokens) runs
        once and its KV cache serves the whole batch (:meth:`_generate_shared`)."""
        kw = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        if share_prefix and len(images) > 1 and all(im is images[0] for im in images):
            return self._generate_shared(images[0], prompts, fit, kw)
        inputs = self.encode(images, prompts, fit)
        out = self.model.generate(**inputs, **kw)
        return self._generations(out[:, inputs["input_ids"].shape[1]:])

    def _generate_shared(self, image, prompts: list[str], fit: str, kw: dict) -> list[Generation]:
        """Generation over one prefill of the prompts' shared prefix: its cache is repeated over
        the batch and each row continues ``prefix, padding, own suffix`` (the padding masked, so
        positions run on from the prefix as in the unshared, left-padded batch)."""
        first = self.encode([image], prompts[:1], fit)
        rows = self._prompt_rows(first, prompts)
        p = shared_prefix_length(rows, self.image_token_id)
        cache = self._prefill(first, p)
        cache.batch_repeat_interleave(len(rows))
        width = max(len(r) for r in rows) - p
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), p + width), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for k, row in enumerate(rows):
            ids[k, :p], ids[k, p + width - (len(row) - p):] = row[:p], row[p:]
            mask[k, :p], mask[k, p + width - (len(row) - p):] = 1, 1
        out = self.model.generate(input_ids=ids, attention_mask=mask, cache=cache, **kw)
        return self._generations(out[:, p + width:])

    def _generations(self, answers: torch.Tensor) -> list[Generation]:
        """Generations from the (B, T) generated ids."""
        stop = self.stop_ids
        gens = []
        for seq in answers:
            answer, stopped = _strip_special(seq, stop)
            gens.append(Generation(answer.cpu(), self.tokenizer.decode(answer, skip_special_tokens=True),
                                   stopped))
        return gens

    def _prompt_rows(self, first: dict, prompts: list[str]) -> list[torch.Tensor]:
        """Each of ``prompts`` (one image each) as the processor tokenizes it with the image of
        ``first`` (the first prompt encoded): the tokenizer's ids with the image placeholder
        repeated as often as the processor repeats it there, so the image is processed once."""
        row = first["input_ids"][0]
        count = int((row == self.image_token_id).sum())
        rows = []
        for ids in self.tokenizer(prompts)["input_ids"]:
            ids = torch.tensor(ids, device=row.device)
            rows.append(ids.repeat_interleave(torch.where(ids == self.image_token_id, count, 1)))
        if not torch.equal(rows[0], row):
            raise ValueError(f"{self.family}'s processor does more than repeat the image token")
        return rows

    def _prefill(self, inputs: dict, length: int):
        """Run the first ``length`` tokens of ``inputs`` (one prompt with its image, as
        :meth:`encode` gives it) -> the DynamicCache of their keys and values. (Qwen2-VL and
        Qwen3-VL also keep the prefix's M-RoPE offset, ``rope_deltas``, which the model and
        ``generate`` add to the positions of the tokens run after a cached prefix.)"""
        from transformers import DynamicCache

        head = {k: v[:, :length] if k in _TOKEN_ALIGNED else v for k, v in inputs.items()}
        cache = DynamicCache(config=self.model.config)
        self.model(**head, cache=cache, use_cache=True, logits_to_keep=1)
        return cache

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer: the tokenizer's EOS and pad, the generation config's EOS."""
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {t for t in [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, *eos]
                if t is not None}

    def flow(self, image: np.ndarray, prompt: str, answer_ids: torch.Tensor,
             head_weighting: bool = True, regularize: bool = True, fit: str = "pad",
             flow: bool = True) -> TokenFlow:
        """Teacher-forced pass over prompt + answer (:class:`TokenFlow`)."""
        with closing(self.flows(image, [prompt], [answer_ids], head_weighting, regularize, fit,
                                flow, share_prefix=False)) as one:
            return next(one)

    @torch.inference_mode()
    def flows(self, image: np.ndarray, prompts: list[str], answers: list[torch.Tensor],
              head_weighting: bool = True, regularize: bool = True, fit: str = "pad",
              flow: bool = True, share_prefix: bool = True) -> Iterator[TokenFlow]:
        """A :class:`TokenFlow` for each prompt + answer about one image, in order. With
        ``share_prefix`` the prompts' shared prefix (system text and image tokens) runs once:
        its keys, values and per-layer queries are kept, and each sequence runs only its own
        tokens, the flow attention putting the prefix's query rows back in front
        (:func:`flow_attention.record_prefix`), so R covers all N rows as before."""
        fitted, offset = self.fit(image, fit)
        first = self.encode([fitted], prompts[:1], "native")  # fitted once, here
        prompt_rows = self._prompt_rows(first, prompts)
        seqs = [torch.cat([r, a.to(r.device)]) for r, a in zip(prompt_rows, answers)]
        p = shared_prefix_length(seqs, self.image_token_id) if share_prefix else 0
        order, grid, region = token_grid(self.family, self.processor, first, 0, fitted.shape[:2],
                                         offset)
        with self._flow_attention() as modules:
            prefix = cache = None
            if p:
                with flow_attention.record_prefix(modules) as prefix:
                    cache = self._prefill(self._sequence_inputs(first, seqs[0]), p)
            for seq, prompt_row in zip(seqs, prompt_rows):
                acc = AttentionFlow(head_weighting=head_weighting, regularize=regularize, flow=flow)
                with flow_attention.collect_flow(modules, acc.update_reduced, head_weighting,
                                                 prefix):
                    if cache is None:
                        self.model(**self._sequence_inputs(first, seq), logits_to_keep=1)
                    else:
                        self.model(input_ids=seq[None, p:], cache=cache, use_cache=True,
                                   logits_to_keep=1)
                        cache.crop(p - len(seq))  # back to the prefix
                positions = (seq == self.image_token_id).nonzero()[:, 0]
                yield TokenFlow(acc.result, positions[order.to(positions.device)], grid, region,
                                len(prompt_row))

    def _sequence_inputs(self, encoded: dict, seq: torch.Tensor) -> dict:
        """``encoded`` (one prompt with its image) with its tokens replaced by ``seq`` (N,): the
        prompt's tokens, then more text."""
        inputs = dict(encoded, input_ids=seq[None], attention_mask=torch.ones_like(seq[None]))
        if "mm_token_type_ids" in inputs:  # Qwen2-VL marks image tokens (1); text tokens are 0
            inputs["mm_token_type_ids"] = (seq[None] == self.image_token_id).to(
                encoded["mm_token_type_ids"].dtype)
        return inputs

    @torch.inference_mode()
    def option_probs(self, image: np.ndarray, prompt: str, options: list[str]) -> np.ndarray:
        """(K,) probability of each option as the next answer token (see :func:`option_probs`)."""
        inputs = self.encode([image], [prompt])
        return option_probs(self.model(**inputs).logits[0, -1].float(), self.tokenizer, options)

    @contextmanager
    def _flow_attention(self):
        """Run the model's attention with :func:`flow_attention.flow_attention` (plain SDPA
        outside :func:`flow_attention.collect_flow` and :func:`flow_attention.record_prefix`);
        yields the language model's attention modules, for those."""
        modules = [m for name, m in self.model.named_modules()
                   if name.split(".")[-1] == "self_attn" and "language_model" in name]
        if not modules:
            raise RuntimeError("no language-model attention layers found")
        flow_attention.register()
        before = self.model.config._attn_implementation
        self.model.set_attn_implementation(flow_attention.NAME)
        try:
            yield modules
        finally:
            self.model.set_attn_implementation(before)


MLLM_BACKENDS.register("transformers")(Mllm.load)  # any family with an image-token layout
_TOKEN_ALIGNED = ("input_ids", "attention_mask", "mm_token_type_ids")  # processor outputs, (B, N)


def shared_prefix_length(rows: list[torch.Tensor], image_token_id: int) -> int:
    """Tokens at the start of every row of ``rows`` (1-D ids) that all rows share, leaving each
    row one token at least; every image token must lie in them (the image runs once, there)."""
    shortest = min(len(r) for r in rows)
    heads = torch.stack([r[:shortest] for r in rows])
    length = min(int((heads == heads[0]).all(0).long().cumprod(0).sum()), shortest - 1)
    if any((r[length:] == image_token_id).any() for r in rows):
        raise ValueError("image tokens after the shared prefix: the prompts differ before the image")
    return length


def _strip_special(ids: torch.Tensor, stop: set[int]) -> tuple[torch.Tensor, bool]:
    """(answer ids up to the first stop token, without it; whether there was one)."""
    for k, t in enumerate(ids.tolist()):
        if t in stop:
            return ids[:k], True
    return ids, False


def option_token_ids(tokenizer, option: str) -> set[int]:
    """Ids of the tokens that start ``option`` in any casing, with or without a leading space
    ("none", "None", "NONE", " none", ... : "▁None" for Llama, "ĠNone" for Qwen), keeping only
    tokens that spell the whole word; the plain option's first token if none does."""
    ids = set()
    for word in {option.lower(), option.capitalize(), option.upper()}:
        for text in (word, " " + word):
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
            first = next((t for t in pieces if tokenizer.decode([t]).strip()), None)
            if first is not None and tokenizer.decode([first]).strip() == word:
                ids.add(first)
    return ids or {tokenizer(option, add_special_tokens=False)["input_ids"][0]}


def option_probs(logits: torch.Tensor, tokenizer, options: list[str]) -> np.ndarray:
    """(K,) probabilities of ``options`` from next-token ``logits`` (V,): each option scores the
    log-sum-exp of its tokens' logits (:func:`option_token_ids`; a token shared by two options
    counts for neither), then a softmax over the options."""
    ids = [option_token_ids(tokenizer, o) for o in options]
    shared = {t for a, b in itertools.combinations(ids, 2) for t in a & b}
    scores = torch.stack([torch.logsumexp(logits[sorted(s - shared)], 0) for s in ids])
    return torch.softmax(scores, 0).cpu().numpy()


def token_spans(answer_ids: torch.Tensor, tokenizer, spans: list[tuple[int, int]]) -> list[list[int]]:
    """Answer-token indices covering each character span of the decoded answer."""
    ids = answer_ids.tolist()
    ends = [len(tokenizer.decode(ids[: k + 1], skip_special_tokens=True)) for k in range(len(ids))]
    starts = [0] + ends[:-1]
    return [[k for k, (s, e) in enumerate(zip(starts, ends)) if s < end and e > start]
            for start, end in spans]
