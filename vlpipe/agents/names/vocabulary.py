"""Open-ended object names mapped to a dataset's categories (COCO, LVIS, ...).

``VocabularyMapper``: exact match of the normalized name (:func:`~.parse.normalize_name`) or of
a synonym first, then of the name less its first words (a "luggage cart" is a "cart"),
text-embedding similarity otherwise (:func:`clip_text_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .parse import normalize_name

__all__ = ["TextEncoder", "Vocabulary", "VocabularyMapper", "clip_text_encoder"]

TextEncoder = Callable[[list[str]], torch.Tensor]


def _display_name(name: str) -> str:
    """Readable category name for prompts: ``bow_(weapon)`` -> ``bow (weapon)``."""
    return " ".join(name.replace("_", " ").split())


@dataclass
class Vocabulary:
    """A dataset's categories: ids, prompt names and an exact-match lookup.

    ``lookup`` maps normalized names and synonyms to a category id; names take precedence
    over synonyms, and the first category wins a clash (e.g. two LVIS ``bow_(...)``).
    """

    ids: list[int]
    names: list[str]
    lookup: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_categories(cls, categories: Sequence[dict]) -> Vocabulary:
        ids = [int(c["id"]) for c in categories]
        names = [_display_name(c["name"]) for c in categories]
        lookup: dict[str, int] = {}
        for cat in categories:
            lookup.setdefault(normalize_name(cat["name"]), int(cat["id"]))
        for cat in categories:
            for synonym in cat.get("synonyms", ()):
                lookup.setdefault(normalize_name(synonym), int(cat["id"]))
        lookup.pop("", None)
        return cls(ids, names, lookup)

    def find(self, name: str) -> int | None:
        """The category of a name, or of its longest ending that is one ("steel refrigerator"
        -> "refrigerator")."""
        words = normalize_name(name).split()
        return next((self.lookup[k] for i in range(len(words))
                     if (k := " ".join(words[i:])) in self.lookup), None)


class VocabularyMapper:
    """Map open-ended object names to dataset categories.

    ``map(names)`` gives, per name, a list of ``(category_id, similarity)``: ``[(id, 1.0)]``
    when the normalized name, or its longest ending, is a category name or synonym
    (:meth:`Vocabulary.find`: "toy car" -> car), otherwise the ``top_k`` categories by cosine
    similarity of ``"a {name}"`` and ``"a {category name}"`` embedded by
    ``text_encoder`` (``list[str] -> Tensor (n, d)``), or ``[]`` without an encoder.
    """

    def __init__(self, categories: Sequence[dict], text_encoder: TextEncoder | None = None, top_k: int = 1):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.vocabulary = Vocabulary.from_categories(categories)
        self.text_encoder = text_encoder
        self.top_k = top_k
        self._category_embeddings: torch.Tensor | None = None

    def _embed(self, texts: list[str]) -> torch.Tensor:
        assert self.text_encoder is not None
        emb = torch.as_tensor(self.text_encoder(texts)).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    @property
    def category_embeddings(self) -> torch.Tensor:
        """Normalized embeddings of ``"a {category name}"``, computed once."""
        if self._category_embeddings is None:
            self._category_embeddings = self._embed([f"a {n}" for n in self.vocabulary.names])
        return self._category_embeddings

    def map(self, names: Sequence[str]) -> list[list[tuple[int, float]]]:
        out: list[list[tuple[int, float]]] = [[] for _ in names]
        unmatched: list[int] = []
        for i, name in enumerate(names):
            cat_id = self.vocabulary.find(name)
            if cat_id is not None:
                out[i] = [(cat_id, 1.0)]
            elif self.text_encoder is not None and name.strip():
                unmatched.append(i)
        if unmatched and self.vocabulary.ids:
            queries = self._embed([f"a {names[i]}" for i in unmatched])
            sims = queries @ self.category_embeddings.T
            k = min(self.top_k, sims.shape[1])
            values, indices = sims.topk(k, dim=1)
            for row, i in enumerate(unmatched):
                out[i] = [(self.vocabulary.ids[j], float(v)) for v, j in zip(values[row].tolist(), indices[row].tolist())]
        return out


def clip_text_encoder(model_path: str | Path, device: str = "cpu", batch_size: int = 256) -> TextEncoder:
    """A ``list[str] -> Tensor (n, projection_dim)`` encoder from a CLIP checkpoint.

    ``model_path`` is a local directory or a hub id (a full CLIP model or a text-only
    ``CLIPTextModelWithProjection``); no remote code is run.
    """
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = CLIPTextModelWithProjection.from_pretrained(str(model_path)).to(device).eval()
    max_length = model.config.max_position_embeddings

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds)
        if not chunks:
            return torch.empty(0, model.config.projection_dim)
        return torch.cat(chunks).float().cpu()

    return encode
