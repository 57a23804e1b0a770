"""Locator-only MLLMs (``detect-branches``' points and boxes branches): models asked for
positions with their own prompts, whose image tokens vlpipe does not place.

* :class:`Florence2` — transformers' ``Florence2ForConditionalGeneration``, no chat: a task
  token, ``<CAPTION_TO_PHRASE_GROUNDING>`` and the object's name (its processor expands it to
  "Locate the phrases in the caption: ..."), answered ``name<loc_x1><loc_y1><loc_x2><loc_y2>``;
  boxes only.
* :class:`Molmo2` — ``Molmo2ForConditionalGeneration`` in its chat template, "Point to every
  ...", answered ``<points coords="IMAGE ID X Y ...">name</points>``; points only.

:func:`~.vlm_coords.parse_answer` reads either answer in the family's units.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backends import MLLM_BACKENDS
from .model import Generation, load_image_text_model


class PromptLocator:
    """A loaded processor + model asked with the family's own prompt for each kind of answer
    (:attr:`TASKS`, ``{name}`` filled in)."""

    family = ""
    TASKS: dict[str, str] = {}
    #: decode the answer without special tokens (False: they carry positions, Florence-2's
    #: location tokens; the parser drops the others).
    skip_special_tokens = True

    def __init__(self, processor, model) -> None:
        self.processor, self.model = processor, model

    @classmethod
    def load(cls, model: str, device: str, dtype: str | None, *,
             trust_remote_code: bool = False) -> PromptLocator:
        return cls(*load_image_text_model(model, device, dtype, cls.family, trust_remote_code))

    def locate_prompt(self, kind: str, name: str, template: str = "") -> str:
        """The prompt asking for ``kind`` (boxes, points) of ``name`` in the family's own words
        (``template``, the chat MLLMs' sentence, is not its language: unused)."""
        if kind not in self.TASKS:
            raise ValueError(f"{self.family} answers {', '.join(self.TASKS)}, not {kind}")
        return self.TASKS[kind].format(name=name)

    def input_hw(self, image: np.ndarray, fit: str = "pad") -> None:
        """None: the positions are not in pixels of the processor's input."""
        return None

    @torch.inference_mode()
    def generate(self, images: list, prompts: list[str], max_new_tokens: int | None = None,
                 fit: str = "pad") -> list[Generation]:
        """One answer per prompt about ``images[i]`` ((H, W, 3) uint8)."""
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor(text=prompts, images=list(images), return_tensors="pt",
                                padding=True).to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kw = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        out = self.model.generate(**inputs, **kw)
        # an encoder-decoder answers after its decoder's start token, a decoder after the prompt
        start = 1 if self.model.config.is_encoder_decoder else inputs["input_ids"].shape[1]
        eos = self.processor.tokenizer.eos_token_id
        return [Generation(ids[start:].cpu(), self.processor.tokenizer.decode(
                    ids[start:], skip_special_tokens=self.skip_special_tokens),
                    bool((ids[start:] == eos).any())) for ids in out]


class Florence2(PromptLocator):
    """Florence-2: phrase grounding's boxes (location tokens kept in the text)."""

    family = "florence2"
    TASKS = {"boxes": "<CAPTION_TO_PHRASE_GROUNDING>{name}"}
    skip_special_tokens = False


class Molmo2(PromptLocator):
    """Molmo 2: its points, asked in its chat template."""

    family = "molmo2"
    TASKS = {"points": "Point to every {name} in the image."}

    def locate_prompt(self, kind: str, name: str, template: str = "") -> str:
        content = [{"type": "image"}, {"type": "text", "text": super().locate_prompt(kind, name)}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True)


MLLM_BACKENDS.register("florence2")(Florence2.load)
MLLM_BACKENDS.register("molmo2")(Molmo2.load)
