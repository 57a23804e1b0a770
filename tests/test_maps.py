"""The one min-max normaliser (SAM's attention scores and the saved attention pictures)."""

import numpy as np

from vlpipe.maps import min_max


def test_min_max_scales_to_unit_range_and_a_flat_map_is_all_ones():
    heat = np.array([[2.0, 4.0], [3.0, 6.0]], np.float32)
    # (x - 2) / (6 - 2), worked out by hand
    assert np.array_equal(min_max(heat), np.array([[0.0, 0.5], [0.25, 1.0]], np.float32))
    assert np.array_equal(min_max(np.full((2, 3), 7.0)), np.ones((2, 3)))
