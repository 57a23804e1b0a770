"""Object names from free-form MLLM answers.

``parse_object_names`` finds the objects an answer names, whatever its form: sentences ("The
image features a cat sitting on a wooden desk"), numbered or bulleted lists with descriptions,
markdown (``**Dog**: ...``), JSON-like lists. The answer is cut into short noun-phrase chunks at
punctuation, prepositions, verbs and other function words; in each chunk the rightmost, longest
run of words that is an object tag (:class:`~.gazetteer.Gazetteer`: the RAM and Tag2Text tag
lists, optionally a dataset's categories and synonyms) is the name. A chunk that makes up a whole
list item or label ("- Bollards", "Trees:") falls back to its own words when no tag matches.
Each name keeps the character span of its words in the answer, so a caller can find the
generated tokens through tokenizer offsets.

Their mapping to a dataset's categories is :mod:`vlpipe.agents.names.vocabulary`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import lemminflect

from .gazetteer import NON_OBJECTS, Gazetteer, TagClass, is_verb_form, tag_classes
from .verbs import follows_as_verb, opens_with_verb, verb_forms

__all__ = [
    "NameSpan",
    "parse_object_names",
    "normalize_name",
    "category_terms",
]

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

#: Words that open a noun phrase and are not part of the name: articles, quantifiers, counts.
DETERMINERS = frozenset(
    """a an the this these those some any several many few various multiple numerous other
    another each every all both such more most less one two three four five six seven eight nine ten eleven twelve
    dozen dozens hundreds""".split()
)

#: Words after which a phrase may go on with a verb ("it seems", "can see", "to iron").
VERBAL_OPENERS = frozenset(
    """i you he she it we they who which that there is are was were be been
    being am has have had do does did can could will would shall should may might must to also
    just only then still even never not""".split()
)

#: Words that end a noun phrase and belong to none: prepositions, conjunctions, pronouns,
#: auxiliaries, adverbs, and the verbs that descriptions are made of.
PHRASE_STOPS = VERBAL_OPENERS | frozenset(
    """about above across after against along alongside amid amidst among around as at atop
    before behind below beneath beside besides between beyond by down during except for from in
    including inside into like near next of off on onto out outside over past per since than
    through throughout toward towards under underneath until up upon via with within without
    and or but nor so yet plus either neither whether if while when where whereas because
    although though me him her us them my your his its our their myself itself themselves what
    whatever here no very quite rather really too almost perhaps maybe additionally overall
    show shows showing shown depict depicts depicting display displays displaying feature
    features featuring contain contains containing include includes capture captures capturing
    create creates creating add adds adding suggest suggests suggesting indicate indicates
    indicating appear appears appearing seem seems seen visible located placed positioned
    situated surrounded filled covered cut spread stands sits lies runs rises holds casts reads
    makes takes looks hangs leads draws gives offers provides reflects frames overlooks extends
    stretches dominates fills covers lines highlights yes okay sure let please""".split()
)

#: Stops after which the names up to the next punctuation are absent ("no visible boats").
NEGATIONS = frozenset({"no", "not", "without", "neither", "nor", "never"})

MAX_FALLBACK_WORDS = 3

_UNKNOWN = TagClass("unknown", 0, 0)

_TOKEN = re.compile(
    r"(?P<sentence>^[ \t]*\d+[.)](?=\s)|[.!?:\n*#\u2022]|(?:^|(?<=\s))[-\u2013](?=\s))"
    r"|(?P<word>[A-Za-z0-9]+(?:['\u2019\-][A-Za-z0-9]+)*)"
    r"|(?P<quote>[\"\u201c\u201d])"
    r"|(?P<clause>[,;()\[\]{}/|&\u2014])",
    re.MULTILINE,
)


# --------------------------------------------------------------------------------------------
# Normalization
# --------------------------------------------------------------------------------------------


def _head_index(words: Sequence[str]) -> int:
    """Index of the head noun: the last word, or the word before "of" ("bottles of wine")."""
    if "of" in words[1:]:
        return words.index("of", 1) - 1
    return len(words) - 1


def normalize_name(phrase: str) -> str:
    """Normalize a name: lowercase, punctuation and underscores to spaces, text in parentheses
    dropped (LVIS ``bow_(weapon)`` -> ``bow``), head noun singularized."""
    phrase = re.sub(r"\(.*?\)", " ", phrase.lower().replace("_", " "))
    words = [m.group("word").replace("\u2019", "'") for m in _TOKEN.finditer(phrase) if m.group("word")]
    if not words:
        return ""
    head = _head_index(words)
    words[head] = Gazetteer.default().singular(words[: head + 1])
    return " ".join(words)


def category_terms(categories: Sequence[dict]) -> list[str]:
    """A dataset's category names and synonyms (COCO / LVIS ``categories``), normalized, as
    extra gazetteer entries."""
    raw = [c["name"] for c in categories] + [s for c in categories for s in c.get("synonyms", ())]
    return list(dict.fromkeys(n for n in map(normalize_name, raw) if n))


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameSpan:
    """An object name found in an answer.

    ``name`` is normalized; ``text[start:end]`` is the raw phrase in the answer (article and
    counts excluded, e.g. ``"dogs"`` for ``"two dogs"``).
    """

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class _Word:
    lower: str
    start: int
    end: int
    proper: bool  # capitalized inside a sentence: a proper name ("the Mona Lisa")
    possessive: bool  # "man" in "the man's hands"
    acronym: bool  # "DW", "QWERTY"


@dataclass
class _Chunk:
    words: list[_Word] = field(default_factory=list)
    verbal: bool = False  # opened by a pronoun, auxiliary or adverb: it may start with a verb
    opener: str | None = None  # the function word before it
    determined: bool = False  # opened by an article or a count


def _segments(text: str) -> list[tuple[bool, list[_Word]]]:
    """Words between punctuation marks, each segment with whether it opens a sentence (or a
    line, list item, label), without quoted phrases (text the image shows, not objects: "My
    Joke Website") or JSON keys; a capitalized word inside a sentence is marked proper unless
    its segment is a title-case label of several words ("Red Brick Buildings")."""
    segments: list[list[tuple[str, int, bool, bool]]] = [[]]
    quoted: list[tuple[str, int, bool, bool]] | None = None
    sentence_start = True
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "word":
            raw = m.group()
            possessive = raw.lower().endswith(("'s", "\u2019s"))
            item = (raw[:-2] if possessive else raw, m.start(), sentence_start, possessive)
            (quoted if quoted is not None else segments[-1]).append(item)
            sentence_start = False
            continue
        if kind == "quote":
            key = text[m.end():].lstrip().startswith(":")
            if quoted is not None and len(quoted) == 1 and not key:  # a JSON value
                segments[-1].extend(quoted)
            quoted = [] if quoted is None else None
        segments.append([])
        sentence_start = sentence_start or kind == "sentence"
    if quoted:  # an unclosed quote: its words are no quotation
        segments.append(quoted)
    out = []
    for seg in segments:
        title = len(seg) > 1 and all(raw[:1].isupper() or raw[:1].isdigit() for raw, *_ in seg)
        words = [_Word(raw.lower(), s, s + len(raw),
                       len(raw) > 1 and raw.istitle() and not first and not title, possessive,
                       len(raw) > 1 and raw.isupper()) for raw, s, first, possessive in seg]
        out.append((bool(seg) and seg[0][2], words))
    return [(opens, seg) for opens, seg in out if seg]


def _is_boundary(word: str, gazetteer: Gazetteer) -> bool:
    """A function word, an adverb in -ly, or a verb form that is no tag ("sitting", not
    "building"; "prepares", which is no noun)."""
    if word in PHRASE_STOPS:
        return True
    readings = lemminflect.getAllLemmas(word)
    if word.endswith("ly") and "ADV" in readings:
        return True
    if word in gazetteer:
        return False
    return is_verb_form(word) or ("NOUN" not in readings and bool(verb_forms(word)))


def _starts_tag(words: list[str], i: int, gazetteer: Gazetteer) -> bool:
    """``words[i]`` and the words after it make a tag ("parking meters", "dining table")."""
    for end in range(i + 1, min(len(words), i + gazetteer.max_words)):
        found = gazetteer.match(words, end, start=i)
        if found is not None and found[0] == i:
            return True
    return False


def _chunks(segment: list[_Word], gazetteer: Gazetteer) -> tuple[list[_Chunk], bool]:
    """Noun-phrase chunks of a segment, and whether the segment is a list item: a few words
    with no function word or verb among them. Chunks after a negation, and those that end at a
    proper name ("the famous Mona Lisa"), are left out. A function word that completes a tag
    ("a trash can", "a can of soda"), and a verb form that begins one ("parking meters"), stay
    in their chunk; a word that reads as a verb where it stands (:mod:`.verbs`: "a woman walks
    her dog", "they serve") ends it."""
    chunks = [_Chunk()]
    negated = False
    content = 0
    lower = [w.lower for w in segment]
    for i, w in enumerate(segment):
        words = [*(x.lower for x in chunks[-1].words), w.lower]
        found = gazetteer.match(words, len(words) - 1)
        completes_tag = found is not None and (found[0] < len(words) - 1
                                               or (len(words) == 1 and chunks[-1].determined))
        following = lower[i + 1] if i + 1 < len(lower) else None
        if w.proper:
            chunks[-1] = _Chunk()
            content += 10  # no list item
        elif w.lower in DETERMINERS or w.lower.isdigit() or w.lower == "and":
            chunks.append(_Chunk(determined=w.lower != "and"))
        elif (_is_boundary(w.lower, gazetteer) and not completes_tag
              and not _starts_tag(lower, i, gazetteer) and not _is_attributive(chunks[-1], w, following)
              ) or _reads_as_verb(chunks[-1], w, following, gazetteer):
            negated = negated or w.lower in NEGATIONS
            verbal = w.lower in VERBAL_OPENERS or w.lower.endswith("ly")
            chunks.append(_Chunk(verbal=verbal, opener=w.lower))
            content += 10
        elif not negated:
            chunks[-1].words.append(w)
            content += 1
            if w.possessive:
                chunks.append(_Chunk())
    return [c for c in chunks if c.words], 0 < content <= 4


def _is_attributive(chunk: _Chunk, word: _Word, following: str | None) -> bool:
    """A participle in -ed between an article and a word ("a *potted* plant")."""
    return (chunk.determined and not chunk.words and word.lower.endswith("ed")
            and following is not None and following not in PHRASE_STOPS)


def _reads_as_verb(chunk: _Chunk, word: _Word, following: str | None, gazetteer: Gazetteer) -> bool:
    """``word`` is a verb after what its chunk holds so far, unless it makes a tag with it."""
    if not chunk.words:
        return chunk.verbal and opens_with_verb(chunk.opener, word.lower)
    previous = [w.lower for w in chunk.words]
    found = gazetteer.match([*previous, word.lower], len(previous))
    return (found is None or found[0] == len(previous)) and follows_as_verb(
        previous[-1], word.lower, following, gazetteer)


def _fallback(words: list[str], gazetteer: Gazetteer) -> str | None:
    """A list item's own words as a name (last word singular), when its last word can be a
    noun and the name is no picture or layout word nor, by WordNet, abstract ("Interaction")."""
    readings = lemminflect.getAllLemmas(words[-1])
    if readings and "NOUN" not in readings:
        return None
    head = gazetteer.singular(words)
    name = " ".join([*words[:-1], head])
    abstract = tag_classes().get(head, _UNKNOWN).kind == "abstract"
    return None if abstract or name in NON_OBJECTS or head in NON_OBJECTS else name


def _is_modifier(word: _Word, gazetteer: Gazetteer, after_determiner: bool) -> bool:
    """A word before a tag that makes the object a kind of its own ("luggage cart", "tortilla
    chips", "a potted plant"): a singular noun that is a tag and no adjective, or a participle in
    -ed right after an article."""
    if word.proper or word.possessive or word.acronym or word.lower in NON_OBJECTS:
        return False
    if after_determiner and word.lower.endswith("ed") and is_verb_form(word.lower):
        return True
    readings = lemminflect.getAllLemmas(word.lower)
    return (word.lower in gazetteer and "ADJ" not in readings
            and gazetteer.singular([word.lower]) == word.lower)


def _chunk_name(chunk: _Chunk, gazetteer: Gazetteer, item: bool) -> NameSpan | None:
    """The rightmost, longest tag in a chunk; for a chunk of a list (``item``) without one, its
    own last words."""
    words = [w.lower for w in chunk.words]
    for end in range(len(words) - 1, -1, -1):
        found = gazetteer.match(words, end)
        if found is None:
            continue
        start, name = found
        after_article = start == 1 and chunk.determined
        if start > 0 and _is_modifier(chunk.words[start - 1], gazetteer, after_article):
            start, name = start - 1, f"{words[start - 1]} {name}"
        return NameSpan(name, chunk.words[start].start, chunk.words[end].end)
    tail = chunk.words[-MAX_FALLBACK_WORDS:]
    if not item or tail[-1].acronym:
        return None
    name = _fallback([w.lower for w in tail], gazetteer)
    return None if name is None else NameSpan(name, tail[0].start, tail[-1].end)


def _open_ended(tail: str) -> bool:
    """True when nothing after a name closes its phrase: no punctuation, no function word."""
    return all(m.lastgroup == "word" and m.group().lower() not in PHRASE_STOPS
               for m in _TOKEN.finditer(tail))


def parse_object_names(text: str, gazetteer: Gazetteer | None = None,
                       truncated: bool = False) -> list[NameSpan]:
    """Object names in an MLLM answer, in order of first mention, duplicates dropped.

    ``gazetteer`` defaults to the vendored tags (:meth:`Gazetteer.default`; add a dataset's
    terms with :meth:`Gazetteer.with_terms`). ``truncated``: the answer was cut at
    ``max_new_tokens`` (no end-of-sequence), so a last name whose phrase is still open
    ("... and a fire hyd") is dropped as unfinished.
    """
    gazetteer = gazetteer or Gazetteer.default()
    spans = []
    in_list = False  # the segments so far in this sentence are list items ("dog, cat, lychee")
    for opens, segment in _segments(text):
        chunks, item = _chunks(segment, gazetteer)
        in_list = item and (opens or in_list)
        spans += [s for c in chunks if (s := _chunk_name(c, gazetteer, in_list)) is not None]
    if truncated and spans and _open_ended(text[spans[-1].end:]):
        spans.pop()
    seen: set[str] = set()
    return [s for s in spans if not (s.name in seen or seen.add(s.name))]


