"""The MLLM nodes: object lists and attention maps (detect), referring phrases and answers (ask).

Each node gets its model through :class:`MllmNode.mllm`, a :class:`~.model.Mllm` (local weights)
or a :class:`~.served.ServedMllm` (an OpenAI-compatible endpoint, for the nodes that need no
weights), from the pipeline's model pool.
"""

from __future__ import annotations

import itertools
import json
from contextlib import closing
from functools import cached_property

import numpy as np

from ...pipeline import Node
from ...prompts import load_prompt, load_questions
from ...results import detections_to_json
from ..backends import MLLM_BACKENDS
from ..hub import check_dtype, resolve_device
from ..names.gazetteer import Gazetteer
from ..names.parse import category_terms, parse_object_names
from ..ocr.backends import lines_prompt
from ..ports import (CROPS, DETECTIONS, EVIDENCE, IMAGE, OBJECT_LISTS, OBJECT_MAPS, PHRASES, TEXT,
                     TEXT_LINES, VIEWS)
from ..views import ObjectList, ObjectMap
from .attention import READOUTS, object_map, query_positions
from .layouts import FITS
from .model import token_spans
from .phrases import parse_phrases
from .protocols import MllmBackend


class MllmNode(Node):
    """Shared parameters of the MLLM nodes: which model, where, in what dtype, and how images are
    fitted to its processor (``image_fit``: "pad" or "native", see :mod:`~vlpipe.agents.mllm.layouts`).

    ``endpoint`` (nodes with ``servable``): an OpenAI-compatible server's URL; ``model`` is then
    the name it serves (:class:`~vlpipe.agents.mllm.served.ServedMllm`)."""

    servable = False  # can run against a served model (needs no weights, tokens or attention)

    def __init__(self, name: str, *, model: str, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, image_fit: str = "pad", endpoint: str = "",
                 **params) -> None:
        super().__init__(name, device=resolve_device(device), **params)
        if image_fit not in FITS:
            raise ValueError(f"unknown image_fit {image_fit!r} (known: {', '.join(FITS)})")
        if not isinstance(trust_remote_code, bool):  # a string "false" would be truthy
            raise ValueError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
        if endpoint and not self.servable:
            raise ValueError("endpoint: this node reads the model's tokens or attention, "
                             "which a served model does not give; it needs local weights")
        self.model_id, self.dtype = model, check_dtype(dtype)
        self.trust_remote_code = trust_remote_code
        self.image_fit, self.endpoint = image_fit, endpoint

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
    def mllm(self) -> MllmBackend:
        """The served model with an ``endpoint``, else the local one (a
        :class:`~.protocols.LocalMllm`)."""
        if self.endpoint:
            return MLLM_BACKENDS.load(self.pool, "served", self.model_id, "remote", None,
                                      endpoint=self.endpoint)
        return MLLM_BACKENDS.load(self.pool, "transformers", self.model_id, self.device,
                                  self.dtype, trust_remote_code=self.trust_remote_code)


class ObjectListNode(MllmNode):
    """views -> objects: asks each view K "list the objects" questions, in batched generate
    calls of up to ``gen_batch`` questions of one view (which share the view's prefill), and
    parses the names (with their answer-token spans).

    ``vocabulary``: a COCO / LVIS annotation file whose category names and synonyms join the
    tag gazetteer the names are parsed with (empty: the vendored tags only)."""

    inputs = {"views": VIEWS}
    outputs = {"objects": OBJECT_LISTS}

    def __init__(self, name: str, *, questions: int = 10, prompt: str = "list_objects",
                 max_new_tokens: int = 96, gen_batch: int = 16, vocabulary: str = "",
                 **kw) -> None:
        super().__init__(name, **kw)
        self.questions = load_questions(prompt, int(questions))
        self.max_new_tokens, self.gen_batch = int(max_new_tokens), int(gen_batch)
        self.vocabulary = vocabulary

    @cached_property
    def gazetteer(self) -> Gazetteer:
        if not self.vocabulary:
            return Gazetteer.default()
        with open(self.vocabulary, encoding="utf-8") as f:
            categories = json.load(f)["categories"]
        return Gazetteer.default().with_terms(category_terms(categories))

    def run(self, batch):
        mllm = self.mllm
        prompts = [mllm.prompt(q) for q in self.questions]
        results = [[] for _ in batch]
        for b, item in enumerate(batch):
            for v, view in enumerate(item["views"]):  # one view per call: its prefix is shared
                for s in range(0, len(prompts), self.gen_batch):
                    chunk = range(s, min(s + self.gen_batch, len(prompts)))
                    gens = mllm.generate([view.image] * len(chunk), [prompts[q] for q in chunk],
                                         self.max_new_tokens, self.image_fit)
                    for q, gen in zip(chunk, gens):
                        spans = parse_object_names(gen.text, self.gazetteer, truncated=not gen.stopped)
                        tokens = token_spans(gen.answer_ids, mllm.tokenizer,
                                             [(n.start, n.end) for n in spans])
                        names = [(n.name, t) for n, t in zip(spans, tokens) if t]
                        results[b].append(ObjectList(v, q, gen, prompts[q], names))
        return [{"objects": r} for r in results]


class AttentionMapNode(MllmNode):
    """views + objects -> maps: one teacher-forced pass per answer, one VL-SAM map per name.
    A view's answers share its prompt prefix, which runs once (:meth:`Mllm.flows`).

    ``head_weighting``, ``regularize``, ``flow``: the VL-SAM steps, each can be turned off for
    ablations (``flow: false`` reads the last layer's attention only). ``read``: which rows of
    the flow make a name's map, its own tokens (``"name"``), the token before it
    (``"preceding"``, the query that predicted the name) or both
    (:func:`~vlpipe.agents.mllm.attention.query_positions`)."""

    inputs = {"views": VIEWS, "objects": OBJECT_LISTS}
    outputs = {"maps": OBJECT_MAPS}
    max_batch = 1

    def __init__(self, name: str, *, head_weighting: bool = True, regularize: bool = True,
                 flow: bool = True, read: str = "name", **kw) -> None:
        super().__init__(name, **kw)
        if read not in READOUTS:
            raise ValueError(f"unknown read {read!r} (known: {', '.join(READOUTS)})")
        self.head_weighting, self.regularize = bool(head_weighting), bool(regularize)
        self.flow, self.read = bool(flow), read

    def run(self, batch):
        mllm = self.mllm
        out = []
        for item in batch:
            maps = []
            named = [obj for obj in item["objects"] if obj.names]
            for v, objs in itertools.groupby(named, key=lambda obj: obj.view):
                objs = list(objs)
                flows = mllm.flows(item["views"][v].image, [obj.prompt for obj in objs],
                                   [obj.generation.answer_ids for obj in objs],
                                   self.head_weighting, self.regularize, self.image_fit, self.flow)
                with closing(flows):  # restores the model's attention even if a map fails
                    for obj, one in zip(objs, flows):
                        for name, tokens in obj.names:
                            rows = query_positions(tokens, one.prompt_length, self.read)
                            m = object_map(one.flow, rows, one.positions, one.grid)
                            maps.append(ObjectMap(name, obj.view, obj.question, m, one.region))
            out.append({"maps": maps})
        return out


class PhrasesNode(MllmNode):
    """image + question -> phrases: the objects the MLLM says it must locate to answer. One item
    per generate call (``max_batch = 1``): left padding beside longer prompts would change its
    sums, and so its answer."""

    servable = True
    inputs = {"image": IMAGE, "question": TEXT}
    outputs = {"phrases": PHRASES}
    max_batch = 1

    def __init__(self, name: str, *, max_new_tokens: int = 48, **kw) -> None:
        super().__init__(name, **kw)
        self.max_new_tokens = int(max_new_tokens)

    def run(self, batch):
        mllm = self.mllm
        template = load_prompt("ground_phrases")
        gens = mllm.generate([item["image"] for item in batch],
                             [mllm.prompt(template.format(question=item["question"]))
                              for item in batch], self.max_new_tokens)
        return [{"phrases": parse_phrases(g.text, truncated=not g.stopped)} for g in gens]


class AnswerNode(MllmNode):
    """image + question [+ crops of grounded objects, OCR lines, decision] -> answer, evidence.

    The MLLM sees the global image, then up to ``max_crops`` crops as extra images, each named
    in the text with its phrase and box, and the OCR lines with their boxes (P²G's final call).
    Boxes follow the family's convention, stated with the image size (:mod:`.box_text`). One
    item per generate call, as :class:`PhrasesNode`."""

    servable = True
    max_batch = 1
    inputs = {"image": IMAGE, "question": TEXT, "crops": CROPS, "lines": TEXT_LINES,
              "detections": DETECTIONS}
    outputs = {"answer": TEXT, "evidence": EVIDENCE}
    optional = frozenset({"crops", "lines", "detections"})

    def __init__(self, name: str, *, max_crops: int = 4, max_new_tokens: int = 128, **kw) -> None:
        super().__init__(name, **kw)
        self.max_crops, self.max_new_tokens = int(max_crops), int(max_new_tokens)

    def prompt_for(self, item) -> tuple[list[np.ndarray], str]:
        crops = (item["crops"] or [])[: self.max_crops]
        lines = item["lines"] or []
        evidence = ""
        if crops or lines:
            convention, box = self.mllm.box_convention(item["image"])
            evidence = convention + "\n" + "".join(
                f'Image {k} is a zoomed-in crop of "{c.name}" at {box(c.box)}.\n'
                for k, c in enumerate(crops, start=2)) + lines_prompt(lines, item["image"].shape[:2], box)
        hint = f" and the {len(crops)} zoomed-in crop{'s' * (len(crops) > 1)} after it" if crops else ""
        text = load_prompt("answer").format(evidence=evidence, question=item["question"],
                                            crops_hint=hint)
        return [item["image"], *(c.image for c in crops)], self.mllm.prompt(text, n_images=1 + len(crops))

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
