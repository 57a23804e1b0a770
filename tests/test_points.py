import numpy as np
import pytest
import torch

from vlpipe.agents.points import PointPrompt, points_to_image, resize_map, sample_points


def gaussian(h, w, cy, cx, sigma, peak=1.0):
    y, x = np.mgrid[0:h, 0:w]
    return peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def test_single_blob():
    m = gaussian(24, 24, 8, 15, 3)
    p = sample_points(torch.from_numpy(m))
    assert p.coords.dtype == np.float32 and p.labels.dtype == np.int32
    assert p.labels.tolist() == [1, 0]
    assert p.coords[0].tolist() == [15.5, 8.5]  # (x, y) centre of pixel (row 8, col 15)
    np.testing.assert_array_equal(p.positive_area, m >= 0.5 * (m.max() + m.min()))
    nx, ny = p.coords[1].astype(int)
    assert not p.positive_area[ny, nx]


def test_largest_component_wins_over_highest_peak():
    small_high = gaussian(32, 32, 6, 6, 1.5, peak=1.0)
    large_low = gaussian(32, 32, 22, 22, 5.0, peak=0.9)
    m = np.maximum(small_high, large_low)
    p = sample_points(m, threshold=0.3)
    x, y = p.coords[0]
    assert abs(x - 22.5) <= 1 and abs(y - 22.5) <= 1
    assert p.positive_area[22, 22] and not p.positive_area[6, 6]
    nx, ny = p.coords[1].astype(int)
    assert not p.positive_area[ny, nx]


def test_several_points_are_spread_and_labelled():
    m = gaussian(40, 40, 20, 20, 6)
    p = sample_points(m, n_positive=3, n_negative=2)
    assert p.labels.tolist() == [1, 1, 1, 0, 0]
    pos = p.coords[:3]
    assert min(np.abs(pos[i] - pos[j]).max() for i in range(3) for j in range(i)) > 1
    for x, y in p.coords[:3].astype(int):
        assert p.positive_area[y, x]
    for x, y in p.coords[3:].astype(int):
        assert not p.positive_area[y, x]


def test_flat_map_returns_centre():
    p = sample_points(np.full((5, 8), 0.3))
    assert p.coords.tolist() == [[4.5, 2.5]] and p.labels.tolist() == [1]
    assert p.positive_area.all()


def test_no_outside_area_gives_no_negatives():
    m = np.zeros((4, 4))
    m[1, 1] = 1.0
    p = sample_points(m, threshold=0.0)
    assert p.labels.tolist() == [1] and p.positive_area.all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_map_raises(bad):
    m = np.zeros((4, 4))
    m[2, 2] = bad
    with pytest.raises(ValueError, match="NaN"):
        sample_points(m)


def test_non_2d_map_raises():
    with pytest.raises(ValueError):
        sample_points(np.zeros((2, 4, 4)))


def test_mask_restricts_positive():
    m = gaussian(24, 24, 6, 6, 3, peak=1.0) + gaussian(24, 24, 18, 18, 3, peak=0.6)
    mask = np.zeros((24, 24), dtype=bool)
    mask[12:, 12:] = True
    p = sample_points(m, mask=mask)
    assert p.coords[0].tolist() == [18.5, 18.5]
    assert not (p.positive_area & ~mask).any()
    # An empty mask is ignored.
    assert sample_points(m, mask=np.zeros_like(mask)).coords[0].tolist() == [6.5, 6.5]


def grid_map(gh, gw):
    return np.arange(gh * gw, dtype=np.float32).reshape(gh, gw)


def test_resize_full_image_maps_patches():
    m = grid_map(3, 4)
    out = resize_map(m, (0, 0, 44, 33), (33, 44))  # 11 x 11 pixel patches
    assert out.shape == (33, 44) and out.dtype == np.float32
    for r in range(3):
        for c in range(4):
            assert out[11 * r + 5, 11 * c + 5] == pytest.approx(m[r, c])  # patch centre pixel
    np.testing.assert_allclose(out[:5, :5], m[0, 0])  # edge replicated, not darkened
    assert out.min() == 0 and out.max() == 11


def test_resize_centre_crop_region():
    # The model saw the central 66x66 square of a 66x110 image: left/right strips are outside.
    m = grid_map(2, 2) + 1
    out = resize_map(m, (22, 0, 88, 66), (66, 110))
    assert out[16, 22 + 16] == pytest.approx(1) and out[49, 22 + 49] == pytest.approx(4)
    np.testing.assert_array_equal(out[:, :22], 1)
    np.testing.assert_array_equal(out[:, 88:], 1)
    square = resize_map(m, (0, 0, 66, 66), (66, 66))
    np.testing.assert_allclose(out[:, 22:88], square, atol=1e-3)


def test_resize_padded_region():
    # A 40x80 image padded to 80x80 (20 rows above and below): the grid spans y in [-20, 60).
    m = grid_map(2, 2) + 1
    out = resize_map(m, (0, -20, 80, 60), (40, 80))
    square = resize_map(m, (0, 0, 80, 80), (80, 80))
    assert out.shape == (40, 80)
    np.testing.assert_allclose(out, square[20:60], atol=1e-3)


def test_points_to_image_lands_on_patch_centre():
    p = PointPrompt(
        coords=np.array([[2.5, 1.5], [0.5, 0.5]], dtype=np.float32),
        labels=np.array([1, 0], dtype=np.int32),
        positive_area=np.ones((3, 4), dtype=bool),
    )
    # Grid (3, 4) over the region x in [20, 100), y in [-10, 50): patches of 20 x 20.
    xy = points_to_image(p, (3, 4), (20, -10, 100, 50))
    np.testing.assert_allclose(xy, [[20 + 2 * 20 + 10, -10 + 20 + 10], [30, 0]])
