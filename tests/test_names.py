"""Object-name parsing from MLLM answers and vocabulary mapping."""

from __future__ import annotations

import pytest
import torch

from vlpipe.agents.names import (
    NameSpan,
    VocabularyMapper,
    build_tiny_clip_text,
    clip_text_encoder,
    normalize_name,
    parse_object_names,
    singularize,
)


def names(text):
    return [s.name for s in parse_object_names(text)]


def test_numbered_list():
    assert names("1. a red car\n2. two dogs\n3) People") == ["red car", "dog", "person"]


def test_numbered_list_with_descriptions_and_markdown():
    text = "**Objects in the image:**\n1. **Car**: a red sedan parked on the street\n2. Dog - a brown dog\n"
    assert names(text) == ["car", "dog"]


def test_bullets():
    assert names("- cat\n* Mice\n\u2022 the benches") == ["cat", "mouse", "bench"]


def test_comma_and_sentence():
    assert names("There is a dog, a cat and a tree.") == ["dog", "cat", "tree"]
    assert names("a cup; a fork & a knife") == ["cup", "fork", "knife"]


@pytest.mark.parametrize(
    "text",
    [
        "The image shows a dog, a cat and a tree.",
        "In this image, I can see a dog, a cat and a tree.",
        "In this image I can see a dog, a cat, and a tree",
        "Objects: dog, cat, tree",
        "I can see the following objects: a dog sitting on the grass, a cat and a tree.",
    ],
)
def test_lead_in_sentences(text):
    assert names(text) == ["dog", "cat", "tree"]


def test_fillers_are_dropped():
    assert names("In the background there is a building, the sky and the image of a boat.") == ["building", "sky"]


@pytest.mark.parametrize(
    ("plural", "singular"),
    [
        ("dogs", "dog"),
        ("people", "person"),
        ("men", "man"),
        ("women", "woman"),
        ("children", "child"),
        ("mice", "mouse"),
        ("geese", "goose"),
        ("teeth", "tooth"),
        ("feet", "foot"),
        ("leaves", "leaf"),
        ("knives", "knife"),
        ("buses", "bus"),
        ("bus", "bus"),
        ("boxes", "box"),
        ("dishes", "dish"),
        ("benches", "bench"),
        ("cherries", "cherry"),
        ("ties", "tie"),
        ("horses", "horse"),
        ("shoes", "shoe"),
        ("glasses", "glasses"),
        ("grass", "grass"),
        ("glass", "glass"),
        ("species", "species"),
        ("series", "series"),
        ("scissors", "scissors"),
        ("cactus", "cactus"),
    ],
)
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_normalization():
    assert names("Two RED Cars!") == ["red car"]
    assert names("several bottles of wine") == ["bottle of wine"]  # the head noun before "of"
    assert normalize_name("bow_(weapon)") == "bow"
    assert normalize_name("sports ball") == "sports ball"  # only the head noun is singularized


def test_duplicates_keep_first_occurrence():
    text = "a dog, two dogs, a cat and the Dog"
    spans = parse_object_names(text)
    assert [s.name for s in spans] == ["dog", "cat"]
    assert text[spans[0].start : spans[0].end] == "dog"


def test_long_phrases_are_dropped():
    assert names("a big old rusty red vintage car, a tree") == ["tree"]


def test_spans_cover_the_raw_name():
    text = "The image shows two dogs, a red car and\n- three little children"
    spans = parse_object_names(text)
    assert spans == [
        NameSpan("dog", text.index("dogs"), text.index("dogs") + 4),
        NameSpan("red car", text.index("red car"), text.index("red car") + 7),
        NameSpan("little child", text.index("little"), len(text)),
    ]
    raw = ["dogs", "red car", "little children"]
    for span, words in zip(spans, raw):
        assert text[span.start : span.end].lower() == words


def test_empty_answer():
    assert parse_object_names("") == []
    assert parse_object_names("   \n\n") == []
    assert parse_object_names("The image shows.") == []


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
