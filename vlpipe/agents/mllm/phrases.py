"""Referring phrases to ground, from an MLLM answer (P²G asks which objects to locate).

Whole phrases are kept, since a grounding model reads "the man in the red shirt" better than
"man"; lead-ins ("To answer it, locate ...", "Objects: ...") are dropped and an answer of
"none" / "no objects" gives no phrase.
"""

from __future__ import annotations

import re

MAX_PHRASE_WORDS = 10

_NONE = re.compile(r"^\W*(?:none|nothing|n/?a|no\b(?: \w+)? (?:objects?|things?|items?))\b", re.I)
# A sentence that introduces its list ("The objects to be located are ...", "To answer it, you
# need to find ...", "Locate ..."), not a phrase that says where a thing was found.
_LEAD_VERB = re.compile(r"^(?:[^.\n]*?\b(?:answer|need|needs|should|must|objects?|items?|"
                        r"things?|you|we|i)\b[^.\n]*?)?\b(?:locate|located|find|found|ground|"
                        r"grounded|identify|identified|look for|detect|detected)\b"
                        r"(?:\s+(?:are|is))?\s*:?\s*", re.I)
# A short heading before a colon ("Objects:", "Here is the list:").
_HEADING = re.compile(r"^[^:\n,]{0,60}:\s*")
_SPLIT = re.compile(r"\n|[;,]|\s+(?:and|&)\s+(?=(?:the|a|an|two|three|some|his|her|its|their)\b)",
                    re.I)
_MARKUP = re.compile(r"^(?:\s*(?:[-*\u2022]|\d+[.)]|\*\*|and\b|or\b))+\s*|[\s*.!?:]+$", re.I)


def parse_phrases(text: str, truncated: bool = False) -> list[str]:
    """Phrases to ground in ``text``, in order, duplicates (case-insensitive) dropped.

    ``truncated``: the answer was cut at ``max_new_tokens``, so its last phrase, when no
    punctuation closes it, is unfinished and dropped.
    """
    text = text.strip()
    if not text or _NONE.match(text):
        return []
    text = _HEADING.sub("", _LEAD_VERB.sub("", text, count=1), count=1)
    pieces = [_MARKUP.sub("", p).strip() for p in _SPLIT.split(text)]
    if truncated and pieces and not re.search(r"[.!?\n]\s*$", text):
        pieces.pop()
    out: list[str] = []
    for piece in pieces:
        if piece and not _NONE.match(piece) and len(piece.split()) <= MAX_PHRASE_WORDS \
                and piece.lower() not in map(str.lower, out):
            out.append(piece)
    return out
