"""The one empty result and the gathering of parts (vlpipe.agents.detections)."""

from __future__ import annotations

import numpy as np
import supervision as sv

from vlpipe.agents.detections import concat, empty_detections


def test_empty_result_has_every_field_of_a_result():
    empty = empty_detections()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    assert empty.confidence.shape == (0,) and empty.class_id.shape == (0,)
    assert empty.data["class_name"].shape == (0,)


def test_concat_keeps_the_parts_in_order_and_is_a_full_empty_result_without_any():
    a = sv.Detections(xyxy=np.array([[0, 0, 2, 2]], np.float32), confidence=np.array([0.5]),
                      class_id=np.array([3]), data={"class_name": np.array(["cat"])})
    b = sv.Detections(xyxy=np.array([[1, 1, 4, 5]], np.float32), confidence=np.array([0.9]),
                      class_id=np.array([1]), data={"class_name": np.array(["dog"])})
    both = concat([b, empty_detections(), a])
    np.testing.assert_array_equal(both.xyxy, [[1, 1, 4, 5], [0, 0, 2, 2]])
    assert list(both.data["class_name"]) == ["dog", "cat"]
    for nothing in ([], [empty_detections(), sv.Detections.empty()]):
        assert len(concat(nothing)) == 0 and "class_name" in concat(nothing).data
