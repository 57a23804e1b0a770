"""A served MLLM: any OpenAI-compatible chat endpoint (vLLM, SGLang, Ollama, hosted APIs).

:class:`ServedMllm` offers the operations of :class:`~vlpipe.agents.mllm.model.Mllm` that need no
weights — ``prompt``, ``generate`` (crops go as extra images) and ``option_probs`` (from the
first answer token's ``top_logprobs``) — so the ``ask`` nodes (need-tool, phrases, answer) run
against a server with ``endpoint: http://host:8000/v1``. Detect's attention maps need the
model's weights and stay local.

The API key is read from ``VLPIPE_API_KEY`` (else ``OPENAI_API_KEY``) and is never logged; a
local server needs none.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..backends import MLLM_BACKENDS
from .box_text import BoxText, box_convention
from .model import Generation

API_KEY_VARIABLES = ("VLPIPE_API_KEY", "OPENAI_API_KEY")
TOP_LOGPROBS = 20


def image_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 RGB -> a ``data:image/jpeg;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def option_probs_from_top(top: list[tuple[str, float]], options: list[str]) -> np.ndarray:
    """(K,) probabilities of ``options`` from the first answer token's top log-probabilities
    [(token, logprob), ...]: each option scores the log-sum-exp of the tokens that spell a
    start of it in any casing, with or without leading space ("None", " none", "▁NONE"); a
    token that starts two options counts for neither; then a softmax over the options. No
    option among the top tokens: uniform."""
    starts = [[t for t, _ in top if _starts(t, o)] for o in options]
    shared = {t for k, ts in enumerate(starts) for t in ts
              if any(t in other for j, other in enumerate(starts) if j != k)}
    logprob = dict(top)
    scores = torch.tensor([torch.logsumexp(torch.tensor([logprob[t] for t in ts if t not in shared]
                                                        or [-torch.inf]), 0).item()
                           for ts in starts])
    if torch.isinf(scores).all():
        return np.full(len(options), 1.0 / len(options))
    return torch.softmax(scores, 0).numpy()


def _starts(token: str, option: str) -> bool:
    word = token.replace("▁", " ").replace("Ġ", " ").strip().lower()
    return bool(word) and option.lower().startswith(word)


@dataclass
class ServedMllm:
    """An OpenAI-compatible chat endpoint serving ``model``."""

    endpoint: str
    model: str
    timeout: float = 120.0
    family: str = "served"

    def __post_init__(self) -> None:
        from openai import OpenAI

        key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), "none")
        self.client = OpenAI(base_url=self.endpoint, api_key=key, timeout=self.timeout,
                             max_retries=1)

    def __repr__(self) -> str:  # never shows the client (and its key)
        return f"ServedMllm({self.endpoint!r}, {self.model!r})"

    def prompt(self, text: str, n_images: int = 1) -> str:
        """The user's text as is: images travel beside it (``generate``'s ``images``)."""
        return text

    def _chat(self, images: np.ndarray | list[np.ndarray], text: str, **kw):
        images = images if isinstance(images, list) else [images]
        content = [{"type": "image_url", "image_url": {"url": image_url(im)}} for im in images]
        content.append({"type": "text", "text": text})
        return self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], temperature=0,
            **kw).choices[0]

    def box_convention(self, image: np.ndarray) -> tuple[str, BoxText]:
        """Boxes as fractions of the image's width and height (a served model's family is
        unknown; fractions need no knowledge of its resize)."""
        return box_convention("fractions", image.shape[:2])

    def generate(self, images: list, prompts: list[str], max_new_tokens: int | None = None,
                 fit: str = "pad") -> list[Generation]:
        """One chat request per prompt (``images[i]``: an image or a list of images). The
        server sees images as they are (``fit`` is the server's business)."""
        kw = {} if max_new_tokens is None else {"max_tokens": max_new_tokens}
        empty = torch.zeros(0, dtype=torch.long)
        gens = []
        for image, text in zip(images, prompts):
            choice = self._chat(image, text, **kw)
            gens.append(Generation(empty, choice.message.content or "",
                                   choice.finish_reason == "stop"))
        return gens

    def option_probs(self, image: np.ndarray, prompt: str, options: list[str]) -> np.ndarray:
        """(K,) probability of each option as the answer's first token (``top_logprobs``)."""
        choice = self._chat(image, prompt, max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
        if choice.logprobs is None or not choice.logprobs.content:
            raise RuntimeError(f"{self.endpoint} returned no logprobs for model {self.model!r}: "
                               "the need-tool decision needs a server that gives top_logprobs "
                               "(or use policy always / never / calibrated)")
        top = [(t.token, t.logprob) for t in choice.logprobs.content[0].top_logprobs]
        return option_probs_from_top(top, options)


@MLLM_BACKENDS.register("served")
def load_served_mllm(weights: str, device: str, dtype: None, *, endpoint: str) -> ServedMllm:
    """``weights``: the model name the server at ``endpoint`` serves."""
    return ServedMllm(endpoint, weights)
