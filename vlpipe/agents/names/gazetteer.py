"""Which words name objects: a gazetteer of object tags and noun singulars (lemminflect).

The tags are the union of the Recognize Anything (RAM) and Tag2Text tag lists vendored in
``vlpipe/data`` (Apache-2.0, see SOURCES.md there), the vocabulary VL-SAM parsed MLLM answers
with, less :data:`NON_OBJECTS` and less the tags that WordNet classes as abstract
(``tag_classes.tsv``, made by ``scripts/tag_classes.py``: "conversation", "celebration"). A
dataset's category names and synonyms can be added (:meth:`Gazetteer.with_terms`); they win over
a vendored tag with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lemminflect

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
TAG_FILES = ("ram_tag_list.txt", "tag2text_tag_list.txt")
TAG_CLASSES = "tag_classes.tsv"

#: Tags and words that name no object: the picture itself, layout and position words, colours,
#: abstract nouns that MLLM descriptions are full of, quantity words ("a group of"), and the
#: headings of markdown answers ("**Overall Impression:**").
NON_OBJECTS = frozenset(
    """image images picture photo photograph photography scene view setting background foreground
    object item thing stuff element feature subject detail details part side top bottom middle
    center centre front back corner edge left right area space spot section region position
    distance direction way atmosphere mood ambiance vibe sense feeling essence charm beauty
    interest contrast depth texture pattern design style shape size color colour shade tone
    hue palette light lighting shadow composition perspective angle focus focal point impression
    overview summary description analysis conclusion note context theme concept idea question
    answer example moment time day night hour morning evening afternoon dusk dawn season spring
    summer autumn fall winter weather condition activity action event life nature world
    environment surroundings location place presence appearance expression look smile touch
    twist variety number group bunch lot lots pair couple set piece half assortment collection
    array range mix kind type sort series row line selection handful amount total layer rule
    third list name caption title text word letter meme viewer system material presentation
    project discussion highlight use go break frame close-up stillness body key grid none nothing
    nobody
    red orange-red yellow green blue purple pink brown black white gray grey silver gold golden
    beige tan teal turquoise navy maroon cream ivory dark bright colorful sunny cloudy overcast
    rainy snowy foggy abstract aerial ancient antique blank blind calm circular classic clean
    clear close cold commercial cool damp double elderly fair fancy fat fit flat frosty full
    fun future giant graphic high industrial lean little long lovely low lush magic medical
    modern natural official old oval plain present professional quiet rapid romantic round
    royal rural rustic safe short single small solo sweet thick warm wet wide wild young""".split()
)

#: Singular by a collective plural that lemminflect keeps as its own lemma.
COLLECTIVE = {"people": "person"}


def is_verb_form(word: str) -> bool:
    """True for an -ing/-ed word that lemminflect reads as a form of another verb ("sitting")."""
    verb = lemminflect.getAllLemmas(word, upos="VERB").get("VERB", (word,))[0]
    return word.endswith(("ing", "ed")) and verb != word


@dataclass(frozen=True)
class TagClass:
    """A tag's meaning by WordNet (see ``scripts/tag_classes.py``): ``kind`` is ``thing``,
    ``partly``, ``scene``, ``abstract`` or ``unknown``; counts are of its noun and verb senses in
    WordNet's sense-tagged corpora."""

    kind: str
    noun_count: int
    verb_count: int


@lru_cache(maxsize=1)
def tag_classes() -> dict[str, TagClass]:
    """The vendored tags' classes (read once)."""
    out = {}
    for line in (DATA_DIR / TAG_CLASSES).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            tag, kind, _, nouns, verbs, _ = line.split("\t")
            out[tag] = TagClass(kind, int(nouns), int(verbs))
    return out


def _is_object_tag(tag: str) -> bool:
    """False for vendored tags that name no physical thing: abstract by WordNet; one word that
    is no noun by lemminflect and either an adjective ("wooden", "overall") or a tag without a
    WordNet noun class in ``tag_classes.tsv`` ("provide"); or an -ing/-ed form whose most
    frequent sense is no thing ("sitting"; "building" stays)."""
    kind = tag_classes()[tag].kind if tag in tag_classes() else "unknown"
    if kind == "abstract":
        return False
    if " " in tag:
        return True
    readings = lemminflect.getAllLemmas(tag)
    if readings and "NOUN" not in readings and ("ADJ" in readings or kind == "unknown"):
        return False
    return kind == "thing" or not is_verb_form(tag)


def _key(words: Sequence[str]) -> tuple[str, ...]:
    return tuple(w.lower() for w in words)


def noun_lemmas(word: str) -> tuple[str, ...]:
    """Candidate singulars of a lowercase word: lemminflect's dictionary lemmas when it knows the
    word as a noun, its rules for an unknown word ending in "s", else the word itself."""
    known = lemminflect.getAllLemmas(word, upos="NOUN").get("NOUN")
    if known:
        return known
    if word.endswith("s") and not word.endswith("ss") and not lemminflect.getAllLemmas(word):
        return lemminflect.getAllLemmasOOV(word, upos="NOUN").get("NOUN", (word,))
    return (word,)


class Gazetteer:
    """Object tags keyed by their lowercase words, e.g. ``("fire", "hydrant") -> "fire hydrant"``."""

    def __init__(self, names: Iterable[str]) -> None:
        self.entries: dict[tuple[str, ...], str] = {}
        for name in names:
            words = _key(name.replace("_", " ").split())
            if words and " ".join(words) not in NON_OBJECTS:
                self.entries.setdefault(words, " ".join(words))
        self.max_words = max((len(k) for k in self.entries), default=0)

    @classmethod
    def default(cls) -> Gazetteer:
        """The vendored RAM + Tag2Text tags (read once)."""
        return _default_gazetteer()

    def with_terms(self, terms: Iterable[str]) -> Gazetteer:
        """A copy with extra names (a dataset's categories and synonyms), which win over a tag
        with the same words."""
        return Gazetteer([*terms, *self.entries.values()])

    def __contains__(self, name: str) -> bool:
        return _key(name.split()) in self.entries

    def singular(self, words: Sequence[str]) -> str:
        """Singular of the last word of a lowercase phrase: the first of lemminflect's noun lemmas
        that makes the phrase a tag ("leaves" -> "leaf", not "leave"; "glasses" stays, being its
        own lemma and a tag), else the word when it is a tag as it stands, else the first lemma."""
        *head, last = words
        if last in COLLECTIVE:
            return COLLECTIVE[last]
        lemmas = noun_lemmas(last)
        own = (last,) if last in lemmas else ()  # lemminflect allows the word as its own lemma
        for candidate in (*own, *lemmas, last):
            if (*head, candidate) in self.entries:
                return candidate
        return lemmas[0]

    def match(self, words: Sequence[str], end: int, start: int = 0) -> tuple[int, str] | None:
        """The longest tag made of ``words[i:end + 1]`` with ``start <= i``, its last word read as
        a singular: ``(i, tag)``, or None."""
        for i in range(max(start, end + 1 - self.max_words), end + 1):
            phrase = _key(words[i:end + 1])
            tag = self.entries.get((*phrase[:-1], self.singular(phrase)))
            if tag is not None:
                return i, tag
        return None


def vendored_tags() -> list[str]:
    """The RAM and Tag2Text tags, lowercase, distinct, in file order."""
    return list(dict.fromkeys(line.strip().lower() for f in TAG_FILES
                              for line in (DATA_DIR / f).read_text(encoding="utf-8").splitlines()
                              if line.strip()))


@lru_cache(maxsize=1)
def _default_gazetteer() -> Gazetteer:
    return Gazetteer(t for t in vendored_tags() if _is_object_tag(t))
