import numpy as np
import pytest
import torch

from vlpipe.agents.points import (PointPrompt, instance_prompts, points_to_image, pool_to_grid,
                                  resize_map, sample_points)


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


def test_every_instance_prompts_on_its_own_largest_first():
    # three cups side by side: blobs of 9, 4 and 1 cells at height 1, background 0
    m = np.zeros((10, 30))
    m[2:5, 2:5] = 1.0
    m[2:4, 12:14] = 1.0
    m[3, 24] = 1.0
    prompts = instance_prompts(m)
    assert [int(p.positive_area.sum()) for p in prompts] == [9, 4, 1]
    # each positive: the first maximum (the plateau's top-left cell) moved to the centroid of
    # its 3x3 neighbourhood inside the blob: rows 2-3, cols 2-3 of blob 1 -> (x, y) = (2.5, 2.5)
    # + 0.5; rows 2-3, cols 12-13 of blob 2 -> (13, 3); the lone cell of blob 3 stays
    assert [p.coords[0].tolist() for p in prompts] == [[3.0, 3.0], [13.0, 3.0], [24.5, 3.5]]
    for p in prompts:
        nx, ny = p.coords[1].astype(int)
        assert p.labels.tolist() == [1, 0] and not p.positive_area[ny, nx]
    assert len(instance_prompts(m, max_instances=2)) == 2
    one = instance_prompts(m, max_instances=1)[0]
    ref = sample_points(m)
    np.testing.assert_array_equal(one.coords, ref.coords)
    np.testing.assert_array_equal(one.positive_area, ref.positive_area)


def test_a_weak_peak_beside_a_strong_one_is_an_instance():
    # a large cup (1.0) and a small one that covers a fifth of a cell (0.2 < the cut at 0.5)
    m = np.zeros((10, 20))
    m[2:6, 2:6] = 1.0
    m[7, 15] = 0.2
    strong, weak = instance_prompts(m, min_peak=0.15)
    assert weak.positive_area.sum() == 1 and weak.positive_area[7, 15]
    assert weak.coords[0].tolist() == [15.5, 7.5]
    assert len(instance_prompts(m, min_peak=0.25)) == 1  # below min_peak
    assert len(instance_prompts(m, min_peak=0.5)) == 1  # min_peak >= threshold: off


def test_a_peak_between_cells_moves_to_their_weighted_centroid():
    # an object straddling two cells, covering 0.3 of the left one and 0.1 of the right one:
    # the centroid of cell centres 4.5 and 5.5 weighted 0.3 : 0.1 is x = 4.75
    m = np.zeros((8, 10))
    m[3, 4], m[3, 5] = 0.3, 0.1
    (p,) = instance_prompts(m, threshold=0.2)
    assert p.coords[0].tolist() == pytest.approx([4.75, 3.5])


def test_pool_to_grid_averages_each_cell_of_the_region():
    mask = np.zeros((4, 8), np.float32)
    mask[:, :2] = 1.0  # the two left columns
    # region 2 px beyond the image on the left: cells of 4x2 px over x -2..6; cell 0 covers
    # x -2..2 (2 of its 4 columns set), cell 1 x 2..6 (none)
    np.testing.assert_allclose(pool_to_grid(mask, (-2, 0, 6, 4), (2, 2)), [[0.5, 0], [0.5, 0]])
