"""The vendored tags classed by WordNet (vlpipe/data/tag_classes.tsv, scripts/tag_classes.py)."""

from __future__ import annotations

import pytest

from vlpipe.agents.names.gazetteer import Gazetteer, tag_classes, vendored_tags
from vlpipe.agents.names.verbs import verb_forms


def test_every_vendored_tag_is_classed():
    assert set(tag_classes()) == set(vendored_tags())
    assert {c.kind for c in tag_classes().values()} == {"thing", "partly", "scene", "abstract", "unknown"}


@pytest.mark.parametrize("tag, kind, in_gazetteer", [
    ("table", "partly", True),  # most frequent sense noun.group ("a table of numbers"), then artifact
    ("conversation", "abstract", False),  # noun.communication only
    ("celebration", "abstract", False),  # noun.event, noun.act
    ("interaction", "abstract", False),  # noun.act first
    ("walk", "partly", True),  # noun.act first, an artifact sense too: a verb by context only
    ("traffic light", "scene", True),  # a compound of noun.communication only: kept
    ("crowd", "scene", True),
    ("building", "thing", True),  # an -ing form whose first sense is an artifact
    ("sitting", "abstract", False),
])
def test_kinds_by_wordnet(tag, kind, in_gazetteer):
    assert tag_classes()[tag].kind == kind
    assert (tag in Gazetteer.default()) == in_gazetteer


@pytest.mark.parametrize("word, forms", [
    ("walk", {"base"}), ("walks", {"s"}), ("showcase", {"base"}), ("bottles", {"s"}),
    ("countertop", set()), ("rose", set()),  # past forms are left out ("rose" is a flower too)
])
def test_verb_forms(word, forms):
    assert verb_forms(word) == forms
