"""Florence-2 as a locator (``detect-branches``' boxes branch): transformers'
``Florence2ForConditionalGeneration`` asked with its own task prompts.

Florence-2 takes no chat: each question is a task token, here
``<CAPTION_TO_PHRASE_GROUNDING>`` followed by the object's name (the processor expands it to
"Locate the phrases in the caption: ..."), and answers ``name<loc_x1><loc_y1><loc_x2><loc_y2>``
(:func:`~.vlm_coords.florence2_boxes` reads it). It answers no points.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backends import MLLM_BACKENDS
from .model import Generation, load_image_text_model

#: kind -> Florence-2's task prompt for one object name.
TASKS = {"boxes": "<CAPTION_TO_PHRASE_GROUNDING>{name}"}


class Florence2:
    """A loaded Florence-2 processor + model: task prompts in, answers with location tokens out."""

    family = "florence2"

    def __init__(self, processor, model) -> None:
        self.processor, self.model = processor, model

    @classmethod
    def load(cls, model: str, device: str, dtype: str | None, *,
             trust_remote_code: bool = False) -> Florence2:
        return cls(*load_image_text_model(model, device, dtype, "Florence-2", trust_remote_code))

    def locate_prompt(self, kind: str, name: str, template: str = "") -> str:
        """The task prompt asking for ``kind`` ("boxes") of ``name`` (``template``, the chat
        MLLMs' sentence, is not Florence-2's language: unused)."""
        if kind not in TASKS:
            raise ValueError(f"Florence-2 answers {', '.join(TASKS)}, not {kind}")
        return TASKS[kind].format(name=name)

    def input_hw(self, image: np.ndarray, fit: str = "pad") -> None:
        """None: Florence-2's locations are bins of the image, not pixels of its input."""
        return None

    @torch.inference_mode()
    def generate(self, images: list, prompts: list[str], max_new_tokens: int | None = None,
                 fit: str = "pad") -> list[Generation]:
        """One answer per task prompt about ``images[i]`` ((H, W, 3) uint8), location tokens
        kept in the text (special tokens other than them removed by the parser)."""
        inputs = self.processor(text=prompts, images=list(images), return_tensors="pt",
                                padding=True, input_data_format="channels_last")
        inputs = inputs.to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kw = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        out = self.model.generate(**inputs, **kw)
        eos = self.processor.tokenizer.eos_token_id
        gens = []
        for ids in out:
            answer = ids[1:]  # after the decoder's start token
            stopped = bool((answer == eos).any())
            text = self.processor.tokenizer.decode(answer, skip_special_tokens=False)
            gens.append(Generation(answer.cpu(), text, stopped))
        return gens


MLLM_BACKENDS.register("florence2")(Florence2.load)
