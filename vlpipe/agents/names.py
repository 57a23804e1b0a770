"""Object names from free-form MLLM answers, and their mapping to a dataset vocabulary.

``parse_object_names`` turns an answer such as ``"The image shows a red car, two dogs and a
tree."`` or a numbered/bulleted list into normalized names (``red car``, ``dog``, ``tree``)
with the character span of each name in the answer, so a caller can find the generated
tokens of a name through tokenizer offsets.

``VocabularyMapper`` maps those open-ended names to a dataset's categories (COCO, LVIS, ...):
exact match of the normalized name or of a synonym first, text-embedding similarity otherwise.

Everything here is rule based on purpose: small word lists and regular expressions that are
easy to read and extend.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "NameSpan",
    "parse_object_names",
    "normalize_name",
    "singularize",
    "Vocabulary",
    "VocabularyMapper",
    "clip_text_encoder",
    "build_tiny_clip_text",
]

TextEncoder = Callable[[list[str]], torch.Tensor]

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

#: Leading words dropped from a phrase: articles, determiners, counts, quantifiers, fillers.
DETERMINERS = frozenset(
    """a an the some any several many few various multiple numerous lots lot plenty couple pair
    group bunch number this that these those another other each every all both more most
    his her their its my our your one two three four five six seven eight nine ten eleven
    twelve dozen dozens hundreds also just only probably possibly perhaps maybe likely
    single""".split()
)

#: A phrase is cut at the first of these words ("a dog sitting on the grass" -> "dog").
PHRASE_STOPS = frozenset(
    """on in at near with behind beside besides under above below next inside outside
    between among against along across around over into onto through that which who whose
    where while when is are was were be being been has have had sitting standing lying
    holding wearing parked walking looking located placed appears seems can could""".split()
)

#: Names that are not objects: the picture itself, layout words, pronouns.
NON_OBJECTS = frozenset(
    """image images picture pictures photo photos photograph scene view setting background
    foreground object objects item items thing things following left right side top bottom
    middle center centre front back area it they them he she i we you there here
    other""".split()
)

#: Irregular plurals.
IRREGULAR_PLURALS = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "oxen": "ox",
    "leaves": "leaf",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "wolves": "wolf",
    "shelves": "shelf",
    "halves": "half",
    "loaves": "loaf",
    "calves": "calf",
    "scarves": "scarf",
    "buses": "bus",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "mangoes": "mango",
    "volcanoes": "volcano",
    "cacti": "cactus",
}

#: Words that end in "s" but are singular, uncountable or plural-only: left as they are.
INVARIANT = frozenset(
    """glasses sunglasses eyeglasses grass glass species series scissors pants jeans shorts
    trousers tights pajamas clothes binoculars tongs pliers goggles sheep deer fish news gas
    lens canvas chess tennis iris bus""".split()
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*")
# Phrase separators within a line: punctuation and coordinating words.
_SEPARATOR = re.compile(r"[,;:.!?()\[\]]|\b(?:and|or|plus|as well as)\b|&", re.IGNORECASE)
_LINE = re.compile(r"[^\n]+")
# A list item with a description: marker, name, then ":" or " - " (group 1 ends at the name).
_LIST_ITEM = re.compile(r"\s*(?:\d+[.)]|[-*\u2022])\s+([^:\n]*?)\s*(?::|\s[-\u2013\u2014]\s)")
# Lead-ins removed (repeatedly) from the start of a phrase.
_PIC = r"(?:image|picture|photo|photograph|scene)"
_LEAD_IN = re.compile(
    r"\W*(?:"  # used with .match(), which anchors at the given position
    rf"(?:in|within|from) (?:the|this) (?:{_PIC}|background|foreground)"
    rf"|(?:the|this) {_PIC} (?:shows|contains|depicts|features|includes|has|displays|presents)"
    r"|(?:there|here) (?:is|are|appears? to be|seems? to be)"
    r"|(?:i|we|you) (?:can |could )?(?:see|identify|spot|observe|notice|detect)"
    rf"|(?:visible )?(?:objects|items|things)(?: (?:visible )?in (?:the|this) {_PIC})?(?: (?:are|include))?"
    r"|(?:it|this) (?:is|shows|contains)"
    r"|(?:the )?following"
    r")\b\W*",
    re.IGNORECASE,
)

MAX_NAME_WORDS = 5


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------


def singularize(word: str) -> str:
    """Singular of a lowercase English noun, by a small rule set plus exceptions."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word in INVARIANT or len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith(("ss", "us", "is")):  # grass, cactus, tennis
        return word
    if word.endswith("ies"):  # cherries -> cherry, but ties -> tie
        return word[:-3] + "y" if len(word) > 4 else word[:-1]
    if word.endswith(("ches", "shes", "xes", "sses", "zzes")):  # benches, dishes, boxes
        return word[:-2]
    return word[:-1]  # dogs, horses, shoes, gloves


def _head_index(words: Sequence[str]) -> int:
    """Index of the head noun: the last word, or the word before "of" ("bottles of wine")."""
    if "of" in words[1:]:
        return words.index("of", 1) - 1
    return len(words) - 1


def normalize_name(phrase: str) -> str:
    """Normalize a name: lowercase, punctuation and underscores to spaces, text in parentheses
    dropped (LVIS ``bow_(weapon)`` -> ``bow``), head noun singularized."""
    phrase = re.sub(r"\(.*?\)", " ", phrase.lower().replace("_", " "))
    words = [w.replace("\u2019", "'") for w in _WORD.findall(phrase)]
    if not words:
        return ""
    head = _head_index(words)
    words[head] = singularize(words[head])
    return " ".join(words)


@dataclass(frozen=True)
class NameSpan:
    """An object name found in an answer.

    ``name`` is normalized; ``text[start:end]`` is the raw phrase in the answer (article and
    counts excluded, e.g. ``"dogs"`` for ``"two dogs"``).
    """

    name: str
    start: int
    end: int


def _phrase_to_span(text: str, start: int, end: int) -> NameSpan | None:
    """The name inside ``text[start:end]`` (one phrase between separators), or None."""
    chunk = text[start:end]
    # Strip lead-ins ("The image shows", "I can see", "Objects") from the start.
    offset = 0
    while match := _LEAD_IN.match(chunk, offset):
        if match.end() == offset:
            break
        offset = match.end()
    words = [(m.group().lower(), start + m.start(), start + m.end()) for m in _WORD.finditer(chunk, offset)]
    # Drop leading determiners and counts ("two", "a couple of", "3").
    while words and (words[0][0] in DETERMINERS or words[0][0].isdigit() or words[0][0] == "of"):
        words.pop(0)
    # Cut at the first preposition / verb ("dog sitting on the grass" -> "dog").
    for i, (word, _, _) in enumerate(words):
        if word in PHRASE_STOPS:
            words = words[:i]
            break
    if not words or len(words) > MAX_NAME_WORDS:
        return None
    name = normalize_name(" ".join(w for w, _, _ in words))
    tokens = name.split()
    if not name or tokens[_head_index(tokens)] in NON_OBJECTS or tokens[0] in NON_OBJECTS:
        return None
    return NameSpan(name, words[0][1], words[-1][2])


def parse_object_names(text: str) -> list[NameSpan]:
    """Object names in an MLLM answer that lists objects.

    Handles numbered and bulleted lists, comma / semicolon / "and" separated sentences and
    lead-ins such as "The image shows ...", "In this image, I can see ..." or "Objects:".
    Names are normalized (see :func:`normalize_name`), filler such as "image" or "background"
    is dropped, and duplicates keep their first occurrence.
    """
    spans: list[NameSpan] = []
    seen: set[str] = set()
    for line in _LINE.finditer(text):
        line_start, line_end = line.span()
        # "1. Car: a red sedan parked ..." -> only "Car" names an object.
        item = _LIST_ITEM.match(text, line_start, line_end)
        if item is not None:
            line_end = item.end(1)
        start = line_start
        for sep in [*_SEPARATOR.finditer(text, line_start, line_end), None]:
            end = line_end if sep is None else sep.start()
            span = _phrase_to_span(text, start, end) if end > start else None
            if span is not None and span.name not in seen:
                seen.add(span.name)
                spans.append(span)
            if sep is not None:
                start = sep.end()
    return spans


# --------------------------------------------------------------------------------------------
# Vocabulary mapping
# --------------------------------------------------------------------------------------------


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


class VocabularyMapper:
    """Map open-ended object names to dataset categories.

    ``map(names)`` gives, per name, a list of ``(category_id, similarity)``: ``[(id, 1.0)]``
    for an exact match of the normalized name or a synonym, otherwise the ``top_k`` categories
    by cosine similarity of ``"a {name}"`` and ``"a {category name}"`` embedded by
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
            cat_id = self.vocabulary.lookup.get(normalize_name(name))
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


# --------------------------------------------------------------------------------------------
# CLIP text encoder
# --------------------------------------------------------------------------------------------


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


_TINY_WORDS = """a an the of photo and person bicycle car motorcycle airplane bus train truck boat
traffic light fire hydrant stop sign parking meter bench bird cat dog horse sheep cow elephant
bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports ball kite
baseball bat glove skateboard surfboard tennis racket bottle wine glass cup fork knife spoon bowl
banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch potted plant bed
dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink
refrigerator book clock vase scissors teddy hair drier toothbrush red blue green tree man woman
child""".split()


def tiny_clip_tokenizer(max_len: int = 32):
    """An offline word-level CLIP-style tokenizer over a small vocabulary: ``<|startoftext|> ...
    <|endoftext|>``, EOS with the largest id (CLIP and OWLv2 pool the text at the EOS, found as
    ``eos_token_id`` or ``argmax(input_ids)``), ``[PAD]`` id 0. For tiny models only."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad, unk, bos, eos = "[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>"
    words = list(dict.fromkeys(_TINY_WORDS))
    vocab = {tok: i for i, tok in enumerate([pad, unk, *words, bos, eos])}  # EOS has the largest id

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, pad_token=pad, bos_token=bos, eos_token=eos, model_max_length=max_len
    )


def build_tiny_clip_text(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIP text model and an offline word-level tokenizer to ``out_dir``.

    For tests and wiring only (the weights are random)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(max_len=32)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=16,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    CLIPTextModelWithProjection(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
