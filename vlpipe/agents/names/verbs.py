"""Verb or noun, from the words around: "a woman *walks* her dog" (a verb) but "a *walk* in the
park" (a noun); "people *showcase* their food" but "a *showcase* of cakes".

A word that lemminflect can read as a verb is read as one in two places:

- first in its phrase after a subject pronoun, a modal, "to" or an adverb ("they *serve*", "it
  *rises*", "to *travel*", "slowly *moves*"): its base form, and its -s form after "it", "he",
  "she", "who", "which", "that" or an adverb;
- right after a noun it agrees with: a base form after a plural (a plural ends its noun phrase:
  "people *showcase*", "glass bottles"), an -s form after a singular when an object or adverb
  follows ("her", "the", "to", "slowly") or WordNet counts the word more often as a verb than as
  a noun (``tag_classes.tsv``: "the dog *walks*." but "glass bottles on ...").
"""

from __future__ import annotations

import lemminflect

from .gazetteer import Gazetteer, tag_classes

#: Words after which a phrase may begin with a verb's base form ("they walk", "can see").
BEFORE_BASE_FORM = frozenset(
    """i you we they who which that can could will would shall should may might must to do does
    did also just only then still even never not""".split()
)

#: Subjects after which a phrase may begin with a verb's -s form ("it rises").
BEFORE_S_FORM = frozenset("it he she who which that".split())

#: Words that open what follows a verb: an object ("walks *her* dog") or a "to".
AFTER_VERB = frozenset(
    """a an the this these those some any several many two three four five her his their its my
    your our them him it us me to""".split()
)


def verb_forms(word: str) -> set[str]:
    """Which finite forms of a verb a lowercase word is: ``"base"`` ("walk"), ``"s"``
    ("walks"), both or neither (past forms are left out: "saw", "rose" are nouns too)."""
    forms = set()
    for lemma in lemminflect.getAllLemmas(word, upos="VERB").get("VERB", ()):
        if lemma == word:
            forms.add("base")
        elif word in lemminflect.getInflection(lemma, tag="VBZ"):
            forms.add("s")
    return forms


def _verb_leaning(word: str) -> bool:
    """WordNet counts the word (as a tag, or its verb lemma) more often as a verb."""
    classes = tag_classes()
    lemmas = lemminflect.getAllLemmas(word, upos="VERB").get("VERB", ())
    found = [classes[w] for w in (word, *lemmas) if w in classes]
    return bool(found) and found[0].verb_count > found[0].noun_count


def opens_with_verb(opener: str | None, word: str) -> bool:
    """The first word of a phrase after ``opener`` ("they", "it", "can", "to", an adverb in -ly)
    is a verb."""
    forms = verb_forms(word)
    adverb = opener is not None and opener.endswith("ly")
    return ("base" in forms and (adverb or opener in BEFORE_BASE_FORM)) or (
        "s" in forms and (adverb or opener in BEFORE_S_FORM))


def follows_as_verb(previous: str, word: str, following: str | None, gazetteer: Gazetteer) -> bool:
    """``word`` right after the noun ``previous`` (and before ``following``, None at the end of
    the clause) is a verb: "woman *walks* her", "people *showcase* their"."""
    forms = verb_forms(word)
    if not forms:
        return False
    if gazetteer.singular([previous]) != previous:  # a plural ends its noun phrase
        return "base" in forms
    if "s" not in forms:
        return False
    if following is not None and (following in AFTER_VERB or (
            following.endswith("ly") and "ADV" in lemminflect.getAllLemmas(following))):
        return True
    return _verb_leaning(word)
