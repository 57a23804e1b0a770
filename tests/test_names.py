"""Object-name parsing from MLLM answers and vocabulary mapping."""

from __future__ import annotations

import pytest
import torch

from vlpipe.agents.gazetteer import Gazetteer
from vlpipe.agents.names import (
    NameSpan,
    VocabularyMapper,
    category_terms,
    clip_text_encoder,
    normalize_name,
    parse_object_names,
    singularize,
)
from vlpipe.tiny.clip import build_tiny_clip_text


def names(text, **kw):
    return [s.name for s in parse_object_names(text, **kw)]


def test_numbered_list():
    assert names("1. a red car\n2. two dogs\n3) People") == ["car", "dog", "person"]


def test_markdown_list_with_descriptions():
    text = ("Here is a list of objects:\n1. **Car**: a red sedan parked on the street\n"
            "2. Dog - a brown dog\n* **Lamp posts:** tall")
    # names come from labels and descriptions alike; "list", "objects" are no objects
    assert names(text) == ["car", "sedan", "street", "dog", "lamp post"]


def test_bullets():
    assert names("- cat\n* Mice\n\u2022 the benches") == ["cat", "mouse", "bench"]


def test_sentences():
    text = ("The image features a cat sitting on a wooden desk, intently staring at a black laptop. "
            "Additionally, a little boy is riding his bike, showcasing its beautiful feature.")
    assert names(text) == ["cat", "desk", "laptop", "boy", "bike"]
    assert names("There is a dog, a cat and a tree.") == ["dog", "cat", "tree"]
    assert names("a cup; a fork & a knife") == ["cup", "fork", "knife"]


def test_longest_tag_wins_and_function_words_complete_tags():
    assert names("two red fire hydrants next to a wooden trash can") == ["fire hydrant", "trash can"]
    assert names("A can of soda and several bottles of wine") == ["can", "soda", "bottle", "wine"]


def test_quotes_negations_and_proper_names_are_skipped():
    assert names('A sign that reads "Fresh Apples Today" above the Eiffel Tower.') == ["sign"]
    assert names("A dock, with no visible boats or people. A bird sits on it.") == ["dock", "bird"]


def test_list_items_fall_back_to_their_own_words():
    # "lychee" and "bollard" are no tags; as list items they still name objects, in prose not
    assert names("dog, cat, lychees") == ["dog", "cat", "lychee"]
    assert names("- Bollards\n- DW") == ["bollard"]  # an acronym is no name
    assert names("The water is calm, silvery, reflecting the sky.") == ["water", "sky"]


def test_answer_cut_at_max_new_tokens_drops_the_unfinished_name():
    assert names("a dog, a cat and a fire hyd", truncated=True) == ["dog", "cat"]
    assert names("a dog, a cat and a fire hyd") == ["dog", "cat", "fire"]
    assert names("two dogs and a ca", truncated=True) == ["dog"]
    # a closed phrase stays: "mouse" is followed by punctuation
    text = '{"object_name": "monitor", "bbox": [1, 2], "object_name": "mouse", "bbox": [5, 6'
    assert names(text, truncated=True) == ["monitor", "mouse"]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("cookies", "cookie"),  # not "cooky"
        ("lenses", "lens"),  # not "lense"
        ("skis", "ski"),
        ("leaves", "leaf"),  # not "leave": the lemma that is a tag
        ("dogs", "dog"),
        ("people", "person"),
        ("men", "man"),
        ("children", "child"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("knives", "knife"),
        ("buses", "bus"),
        ("bus", "bus"),
        ("boxes", "box"),
        ("benches", "bench"),
        ("cherries", "cherry"),
        ("glasses", "glasses"),  # its own lemma and a tag
        ("grass", "grass"),
        ("species", "species"),
        ("scissors", "scissors"),
        ("cactus", "cactus"),
        ("cacti", "cactus"),
        ("tiara", "tiara"),  # lemminflect's rules alone would say "tiarum"
    ],
)
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_normalization():
    assert normalize_name("Two RED Cars!") == "two red car"
    assert normalize_name("bottles of wine") == "bottle of wine"  # the head noun before "of"
    assert normalize_name("bow_(weapon)") == "bow"
    assert normalize_name("sports ball") == "sports ball"
    assert normalize_name("wine glasses") == "wine glass"


def test_duplicates_keep_first_occurrence():
    text = "a dog, two dogs, a cat and the Dog"
    spans = parse_object_names(text)
    assert [s.name for s in spans] == ["dog", "cat"]
    assert text[spans[0].start : spans[0].end] == "dog"


def test_spans_cover_the_raw_name():
    text = "The image shows two dogs, a fire hydrant and\n- three little children's toys"
    spans = parse_object_names(text)
    assert spans == [
        NameSpan("dog", text.index("dogs"), text.index("dogs") + 4),
        NameSpan("fire hydrant", text.index("fire"), text.index("fire") + 12),
        NameSpan("child", text.index("children"), text.index("children") + 8),
        NameSpan("toy", text.index("toys"), len(text)),
    ]


def test_empty_answer():
    assert parse_object_names("") == []
    assert parse_object_names("   \n\n") == []
    assert parse_object_names("The image shows.") == []


def test_dataset_vocabulary_extends_the_gazetteer():
    terms = category_terms(LVIS_LIKE)
    assert {"dog", "domestic dog", "bow", "bow and arrow", "auto", "red apple"} <= set(terms)
    text = "A domestic dog next to an auto and a red apple."
    assert names(text) == ["dog", "apple"]  # "auto" and "red apple" are no vendored tags
    assert names(text, gazetteer=Gazetteer.default().with_terms(terms)) == [
        "domestic dog", "auto", "red apple"]


# --------------------------------------------------------------------------------------------
# VocabularyMapper
# --------------------------------------------------------------------------------------------

LVIS_LIKE = [
    {"id": 1, "name": "dog", "synonyms": ["dog", "domestic_dog"]},
    {"id": 2, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)", "bow_and_arrow"]},
    {"id": 3, "name": "car_(automobile)", "synonyms": ["car_(automobile)", "auto_(automobile)"]},
    {"id": 4, "name": "red_apple"},
    {"id": 5, "name": "green_apple"},
    {"id": 6, "name": "wine_bottle"},
]


def test_exact_and_synonym_matches():
    mapper = VocabularyMapper(LVIS_LIKE)
    assert mapper.map(["dog", "Dogs", "domestic dog", "bow", "bow and arrow", "autos", "car", "zebra"]) == [
        [(1, 1.0)],
        [(1, 1.0)],
        [(1, 1.0)],
        [(2, 1.0)],
        [(2, 1.0)],
        [(3, 1.0)],
        [(3, 1.0)],
        [],  # no match and no text encoder
    ]


class BagOfWords:
    """A deterministic test encoder: one-hot bag of words over the texts seen so far."""

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        for t in texts:
            for w in t.lower().replace("(", " ").replace(")", " ").split():
                self.vocab.setdefault(w, len(self.vocab))
        out = torch.zeros(len(texts), 64)
        for i, t in enumerate(texts):
            for w in t.lower().replace("(", " ").replace(")", " ").split():
                if w != "a":  # the shared prompt word carries no information
                    out[i, self.vocab[w]] = 1.0
        return out


def test_embedding_fallback_nearest_and_top_k():
    enc = BagOfWords()
    mapper = VocabularyMapper(LVIS_LIKE, text_encoder=enc, top_k=3)
    (apple,), (bottle,), (dog,) = [mapper.map([n]) for n in ("red apple slice", "bottle", "dog")]
    # "a red apple slice" shares "red" and "apple" with "a red apple", only "apple" with "a green apple".
    assert [cid for cid, _ in apple][:2] == [4, 5]
    assert apple[0][1] > apple[1][1] > 0
    assert apple[0][1] == pytest.approx(2 / (3**0.5 * 2**0.5))  # cosine of bags {red,apple,slice}, {red,apple}
    assert len(apple) == 3 and all(a[1] >= b[1] for a, b in zip(apple, apple[1:]))
    assert bottle[0] == (6, pytest.approx(2**-0.5))
    assert dog == [(1, 1.0)]  # exact matches do not use the encoder
    mapper.map(["kitten", "puppy"])
    assert enc.calls == 1 + 3  # category embeddings computed once, then one call per map()


def test_tiny_clip_text_encoder_offline(tmp_path):
    path = build_tiny_clip_text(tmp_path / "clip")
    encode = clip_text_encoder(path)
    emb = encode(["a dog", "a red car", "a word not in vocabulary"])
    assert emb.shape == (3, 16) and torch.isfinite(emb).all()
    # Pooling happens at EOS: a padded short text embeds as it does alone.
    assert torch.allclose(encode(["a dog"])[0], emb[0], atol=1e-5)
    cats = [{"id": 10 + i, "name": n} for i, n in enumerate(["person", "bicycle", "car", "traffic light"])]
    mapper = VocabularyMapper(cats, text_encoder=encode, top_k=2)
    out = mapper.map(["zebra", "cars", "red bus"])
    assert out[1] == [(12, 1.0)]
    for hits in (out[0], out[2]):
        assert len(hits) == 2
        assert all(cid in {10, 11, 12, 13} and -1.0 - 1e-6 <= s <= 1.0 + 1e-6 for cid, s in hits)
        assert hits[0][1] >= hits[1][1]


@pytest.mark.parametrize("answer, names", [
    ("None.", []), ("none", []), ("nothing", []), ("disc, none", ["disc"]),
    ("Nothing but a dog.", ["dog"]),
])
def test_none_and_nothing_are_no_objects(answer, names):
    assert [n.name for n in parse_object_names(answer)] == names
