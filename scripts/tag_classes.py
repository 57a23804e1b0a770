"""Classify the vendored object tags by meaning with WordNet 3.0 -> vlpipe/data/tag_classes.tsv.

Run once, with vlpipe installed (needs WordNet's database files, e.g. Debian's ``wordnet-base`` in
/usr/share/wordnet):

    python scripts/tag_classes.py [/usr/share/wordnet] > vlpipe/data/tag_classes.tsv

For each lowercase tag of ``vlpipe/data/*_tag_list.txt`` (a multi-word tag that WordNet lacks is
looked up by its last word, "tortilla chip" -> "chip") it writes the lexicographer class of each
noun sense, most frequent first, with the sense's count in WordNet's sense-tagged corpora, and
the tag's noun and verb counts (all senses), and its kind (:func:`kind`): ``thing`` (its most
frequent sense in :data:`PHYSICAL`), ``partly`` (another sense there: "walk", "showcase"),
``scene`` (places, groups, weather: "city", "crowd", "fog"), ``abstract`` (acts, events,
feelings, states, speech: "conversation", "celebration", "gesture"; the parser drops these) or
``unknown`` (not in WordNet, kept).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vlpipe.agents.names.gazetteer import vendored_tags


#: WordNet's lexicographer files by number (lexnames(5WN)).
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social
verb.stative verb.weather adj.ppl""".split()

#: Classes of things one can see and outline in an image (noun.Tops holds "person").
PHYSICAL = frozenset("""noun.Tops noun.animal noun.artifact noun.body noun.food noun.object
noun.person noun.plant noun.substance""".split())

#: Classes of what one cannot outline. noun.communication holds both talk ("conversation") and
#: things with writing or signals ("traffic light", "business card"): a one-word tag with only
#: such senses is taken as abstract, a compound as a thing.
ABSTRACT = frozenset("""noun.act noun.event noun.feeling noun.state noun.attribute
noun.cognition noun.motive noun.process noun.relation noun.time""".split())


def _sense_counts(wordnet: Path) -> dict[str, int]:
    """Sense key -> tag count (cntlist.rev)."""
    counts = {}
    for line in (wordnet / "cntlist.rev").read_text().splitlines():
        key, _, count = line.split()
        counts[key] = int(count)
    return counts


def _senses(wordnet: Path, pos: str, counts: dict[str, int]) -> dict[str, list[tuple[str, int]]]:
    """Lemma -> [(lexicographer class, count)] of its senses, in WordNet's order."""
    offsets: dict[str, list[int]] = {}
    for line in (wordnet / f"index.{pos}").read_text().splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        n_synsets = int(fields[2])
        offsets[fields[0]] = [int(o) for o in fields[-n_synsets:]]
    data = (wordnet / f"data.{pos}").read_bytes()
    ss_type = {"noun": 1, "verb": 2}[pos]
    out = {}
    for lemma, offs in offsets.items():
        senses = []
        for off in offs:
            fields = data[off:data.index(b"\n", off)].decode().split()
            lexfile = int(fields[1])
            n_words = int(fields[3], 16)
            lex_id = next(int(fields[5 + 2 * i], 16) for i in range(n_words)
                          if fields[4 + 2 * i].lower() == lemma)
            key = f"{lemma}%{ss_type}:{lexfile:02d}:{lex_id:02d}::"
            senses.append((LEXNAMES[lexfile], counts.get(key, 0)))
        out[lemma] = senses
    return out


def kind(tag: str, senses: list[tuple[str, int]]) -> str:
    """``thing``, ``scene`` or ``abstract`` from the classes of a tag's noun senses."""
    classes = {cls for cls, _ in senses}
    if senses[0][0] in PHYSICAL:
        return "thing"
    if classes & PHYSICAL:
        return "partly"
    talk = ABSTRACT | ({"noun.communication"} if " " not in tag else set())
    if classes <= talk or senses[0][0] in talk:
        return "abstract"
    return "scene"


def main(wordnet: Path) -> None:
    counts = _sense_counts(wordnet)
    nouns, verbs = _senses(wordnet, "noun", counts), _senses(wordnet, "verb", counts)
    tags = sorted(vendored_tags())
    print("# tag\tkind\tlemma\tnoun_count\tverb_count\tnoun senses (class:count, most frequent first)")
    for tag in tags:
        lemma = tag.replace(" ", "_")
        if lemma not in nouns and " " in tag:
            lemma = tag.split()[-1]
        senses = nouns.get(lemma)
        if senses is None:
            print(f"{tag}\tunknown\t\t0\t{sum(c for _, c in verbs.get(lemma, ()))}\t")
            continue
        verb_count = sum(c for _, c in verbs.get(lemma, ()))
        classes = " ".join(f"{cls.removeprefix('noun.')}:{c}" for cls, c in senses)
        nouns_count = sum(c for _, c in senses)
        print(f"{tag}\t{kind(tag, senses)}\t{lemma}\t{nouns_count}\t{verb_count}\t{classes}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet"))
