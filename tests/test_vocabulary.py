"""Mapping open-ended names to a dataset's categories: exact, synonym, text-embedding."""

from __future__ import annotations

import pytest
import torch

from vlpipe.agents.names.gazetteer import Gazetteer
from vlpipe.agents.names.parse import category_terms, parse_object_names
from vlpipe.tiny.clip import build_tiny_clip_text
from vlpipe.agents.names.vocabulary import VocabularyMapper, clip_text_encoder

LVIS_LIKE = [
    {"id": 1, "name": "dog", "synonyms": ["dog", "domestic_dog"]},
    {"id": 2, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)", "bow_and_arrow"]},
    {"id": 3, "name": "car_(automobile)", "synonyms": ["car_(automobile)", "auto_(automobile)"]},
    {"id": 4, "name": "red_apple"},
    {"id": 5, "name": "green_apple"},
    {"id": 6, "name": "wine_bottle"},
]


def test_dataset_vocabulary_extends_the_gazetteer():
    terms = category_terms(LVIS_LIKE)
    assert {"dog", "domestic dog", "bow", "bow and arrow", "auto", "red apple"} <= set(terms)
    text = "A domestic dog next to an auto and a red apple."
    # "auto" and "red apple" are no vendored tags
    assert [s.name for s in parse_object_names(text)] == ["dog", "apple"]
    extended = Gazetteer.default().with_terms(terms)
    assert [s.name for s in parse_object_names(text, extended)] == ["domestic dog", "auto", "red apple"]


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


def test_a_compound_maps_to_the_category_it_ends_with():
    mapper = VocabularyMapper(LVIS_LIKE)
    # "luggage car" ends with the synonym "car"; "red apple" wins over a shorter ending
    assert mapper.map(["luggage cars", "big red apple", "wine bottle", "dog bed"]) == [
        [(3, 1.0)], [(4, 1.0)], [(6, 1.0)], []]


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
