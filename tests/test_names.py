"""Object-name parsing from MLLM answers."""

from __future__ import annotations

import pytest

from vlpipe.agents.names.gazetteer import Gazetteer
from vlpipe.agents.names.parse import NameSpan, normalize_name, parse_object_names


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
def test_singular(plural, singular):
    assert Gazetteer.default().singular([plural]) == singular


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


@pytest.mark.parametrize("answer, names", [
    ("None.", []), ("none", []), ("nothing", []), ("disc, none", ["disc"]),
    ("Nothing but a dog.", ["dog"]),
])
def test_none_and_nothing_are_no_objects(answer, names):
    assert [n.name for n in parse_object_names(answer)] == names


@pytest.mark.parametrize("answer, expected", [
    # a verb after a noun it agrees with, before an object: not a name, and not glued to the noun
    ("a woman walks her dog past a parking meter", ["woman", "dog", "parking meter"]),
    ("people showcase their food", ["person", "food"]),
    ("The vendors showcase fresh produce.", ["vendor", "produce"]),  # a plural ends its phrase
    ("A chef prepares food in the kitchen.", ["chef", "food", "kitchen"]),  # no noun: a verb
    ("The cars move slowly along the road.", ["car", "road"]),
    ("the dog walks.", ["dog"]),  # WordNet counts "walk" more as a verb (192) than a noun (15)
    # first in its phrase after a subject or "to"
    ("they serve food and it rises above the city", ["food", "city"]),
    ("kids walk to school", ["kid"]),
    # the same words as nouns
    ("a walk in the park", ["walk", "park"]),
    ("a showcase of cakes", ["showcase", "cake"]),
    ("glass bottles on the table", ["glass bottle", "table"]),  # "bottles" is no verb here
    ("the dog's walks", ["dog", "walk"]),
])
def test_verb_or_noun_from_the_words_around(answer, expected):
    assert names(answer) == expected


def test_abstract_tags_name_no_object():
    # "conversation", "celebration", "gesture", "interaction", "habitat"-like tags are abstract
    # in WordNet (tag_classes.tsv); "share" is a verb after the plural "people"
    text = "Two people share a conversation, a celebration and a friendly gesture over coffee."
    assert names(text) == ["person", "coffee"]
    assert names("- Interaction\n- Table") == ["table"]  # nor a list item's own word


@pytest.mark.parametrize("answer, expected", [
    ("two parking meters on the sidewalk", ["parking meter", "sidewalk"]),  # a verb form begins a tag
    ("a potted plant next to the dining table", ["potted plant", "dining table"]),
    ("two wine glasses", ["wine glass"]),  # not "glasses", the tag of one word
    ("a luggage cart and a bowl of tortilla chips", ["luggage cart", "bowl", "tortilla chip"]),
    ("a stone wall behind an orange cat", ["stone wall", "cat"]),  # "orange" is an adjective too
])
def test_compounds_keep_the_words_that_make_the_object(answer, expected):
    assert names(answer) == expected
