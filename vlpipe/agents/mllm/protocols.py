"""What the MLLM nodes ask of an MLLM backend, as Protocols.

:class:`MllmBackend` is what any backend gives, local (:class:`~.model.Mllm`) or served
(:class:`~.served.ServedMllm`): chat prompts, generation, option probabilities, boxes in the
family's units. :class:`LocalMllm` adds what only local weights give: the tokenizer, the image
token, and the teacher-forced attention flows detect's maps are read from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .box_text import BoxText
from .model import Generation, TokenFlow


@runtime_checkable
class MllmBackend(Protocol):
    """An MLLM the ask nodes (need_tool, mllm_phrases, mllm_answer) can run on."""

    family: str  # the transformers model_type, or "served"

    def prompt(self, text: str, n_images: int = 1) -> str:
        """The chat prompt asking ``text`` about ``n_images`` images."""

    def generate(self, images: list, prompts: list[str], max_new_tokens: int | None = None,
                 fit: str = "pad") -> list[Generation]:
        """One answer per prompt; ``images[i]``: prompt i's image (H, W, 3) uint8 or a list."""

    def option_probs(self, image: np.ndarray, prompt: str, options: list[str]) -> np.ndarray:
        """(K,) probability of each option as the answer's first token."""

    def box_convention(self, image: np.ndarray) -> tuple[str, BoxText]:
        """(the sentence stating the image size and box units, pixel xyxy -> text)."""


@runtime_checkable
class LocalMllm(MllmBackend, Protocol):
    """An MLLM with local weights: what detect's nodes (mllm_objects, attention_maps) need."""

    tokenizer: object
    image_token_id: int

    def flows(self, image: np.ndarray, prompts: list[str], answers: list[torch.Tensor],
              head_weighting: bool = True, regularize: bool = True, fit: str = "pad",
              flow: bool = True, share_prefix: bool = True) -> Iterator[TokenFlow]:
        """One teacher-forced attention flow per prompt + answer about ``image``."""
