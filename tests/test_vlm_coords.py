"""Boxes and points in MLLM answers (vlpipe.agents.mllm.vlm_coords) on real answers of each family
(tests/data/answers/locations.jsonl, sources in SOURCES.md there), with the coordinates worked out
by hand in the data, and on malformed answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlpipe.agents.mllm.vlm_coords import CoordinateError, parse_answer

CORPUS = Path(__file__).resolve().parent / "data" / "answers" / "locations.jsonl"
RECORDS = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
#: Where the source gives no image size, the answer is read on a nominal 1000 x 1000 image (and
#: Qwen2.5-VL's resized input is that image, unless the record gives ``input_wh``): the expected
#: numbers are then the answer's own units scaled by 1000 / units (x1 for thousandths and
#: pixels, x10 for percent).
NOMINAL = (1000, 1000)


def parsed(record: dict):
    wh = tuple(record["image_wh"] or NOMINAL)
    input_wh = tuple(record.get("input_wh") or wh) if record["family"] == "qwen2_5_vl" else None
    return parse_answer(record["answer"], record["family"], record["kind"], wh, input_wh)


@pytest.mark.parametrize("record", RECORDS, ids=[r["id"] for r in RECORDS])
def test_real_answers_give_the_hand_worked_positions(record):
    out = parsed(record)
    names = list(out.data["class_name"])
    assert len(out) == record.get("count", len(record["expected"]))
    for k, (label, *values) in enumerate(record["expected"]):
        assert names[k] == label
        got = out.xyxy[k] if record["kind"] == "boxes" else out.xy[k, 0]
        np.testing.assert_allclose(got, values, atol=1e-3)


@pytest.mark.parametrize("record", [r for r in RECORDS if "transformers" in r],
                         ids=[r["id"] for r in RECORDS if "transformers" in r])
def test_florence2_boxes_truncate_to_transformers_post_processing(record):
    """transformers' Florence2PostProcessor casts the dequantized boxes to int: ours, truncated,
    are the integers its tests expect."""
    np.testing.assert_array_equal(np.floor(parsed(record).xyxy).astype(int), record["transformers"])


def test_there_are_real_answers_of_every_family_and_kind():
    found = {(r["family"], r["kind"]) for r in RECORDS}
    assert found >= {("florence2", "boxes"), ("qwen2_vl", "boxes"), ("qwen2_5_vl", "boxes"),
                     ("qwen3_vl", "boxes"), ("qwen3_vl", "points"), ("molmo2", "points"),
                     ("molmo", "points")}


def test_qwen25_boxes_map_back_through_the_resized_input():
    """A 640 x 480 image that smart_resize makes 644 x 476: a box at (322, 238, 644, 476) there is
    the image's right half below the middle, (320, 240, 640, 480)."""
    out = parse_answer('[{"bbox_2d": [322, 238, 644, 476], "label": "cat"}]', "qwen2_5_vl",
                       "boxes", (640, 480), (644, 476))
    np.testing.assert_allclose(out.xyxy, [[320, 240, 640, 480]], atol=1e-3)
    with pytest.raises(CoordinateError, match="input_wh"):
        parse_answer("[]", "qwen2_5_vl", "boxes", (640, 480))


def test_truncated_fenced_and_chatty_answers_keep_every_complete_object():
    cut = ('Here they are:\n```json\n[\n\t{"bbox_2d": [100, 200, 300, 400], "label": "cup"},\n'
           '\t{"bbox_2d": [10, 20,')
    out = parse_answer(cut, "qwen3_vl", "boxes", (2000, 1000))
    np.testing.assert_allclose(out.xyxy, [[200, 200, 600, 400]])
    single = "[{'point_2d': [500, 250], 'label': 'mug'}] Hope this helps!"
    pts = parse_answer(single, "qwen3_vl", "points", (200, 100))
    np.testing.assert_allclose(pts.xy[:, 0], [[100, 25]])
    assert list(pts.data["class_name"]) == ["mug"]
    swapped = parse_answer('[{"bbox_2d": [300, 400, 100, 200]}]', "qwen3_vl", "boxes", (1000, 1000))
    np.testing.assert_allclose(swapped.xyxy, [[100, 200, 300, 400]])
    assert list(swapped.data["class_name"]) == [""]


def test_answers_without_positions_give_nothing_and_unknown_families_a_clear_error():
    for family, kind in (("qwen3_vl", "boxes"), ("molmo2", "points"), ("florence2", "boxes"),
                         ("qwen2_vl", "boxes")):
        assert len(parse_answer("There are none.", family, kind, (10, 10))) == 0
    assert len(parse_answer("</s><s>car<loc_1><loc_2><loc_3></s>", "florence2", "boxes",
                            (10, 10))) == 0  # a box cut after three locations
    with pytest.raises(CoordinateError, match="llava"):
        parse_answer("[]", "llava", "boxes", (10, 10))
    with pytest.raises(CoordinateError, match="no points parser for family 'florence2'"):
        parse_answer("", "florence2", "points", (10, 10))
    with pytest.raises(ValueError, match="boxes or points"):
        parse_answer("", "qwen3_vl", "masks", (10, 10))


def test_molmo2_video_and_multi_image_groups():
    """Groups separated by ';' (video frames "T: ID X Y") or a tab (images) each start with
    their frame or image index."""
    text = '<points coords="0: 1 500 250; 1: 1 700 300 2 100 900">ball</points>'
    pts = parse_answer(text, "molmo2", "points", (200, 100))
    np.testing.assert_allclose(pts.xy[:, 0], [[100, 25], [140, 30], [20, 90]])
