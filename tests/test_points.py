import numpy as np
import pytest
import torch

from vlpipe.agents.sam.points import (InstanceSearch, PointPrompt, inside_cells, instance_prompts,
                                  points_to_image, pool_to_grid, refined_prompt, resize_map,
                                  sample_points)


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


def test_inside_cells_of_a_padded_grid():
    # a 40x80 image padded to 80x80 (20 rows above and below) under a 4x4 grid of 20 px cells:
    # cell centres at y = -10, 10, 30, 50; rows 1 and 2 are inside
    valid = inside_cells((4, 4), (0, -20, 80, 60), (40, 80))
    np.testing.assert_array_equal(valid, np.repeat([[False], [True], [True], [False]], 4, 1))


def test_only_cells_inside_the_image_are_sampled():
    # the padding rows hold the map's maximum and its minimum (as regularization puts them):
    # neither may be a point, and the cut is over the valid cells' range
    m = np.full((6, 6), 0.2)
    m[0, :] = 0.0
    m[5, :] = 5.0
    m[2, 3] = 1.0
    valid = np.zeros((6, 6), bool)
    valid[1:5] = True
    p = sample_points(m, valid=valid)
    assert p.coords[0].tolist() == [3.5, 2.5] and p.positive_area.sum() == 1
    nx, ny = p.coords[1].astype(int)
    assert valid[ny, nx] and m[ny, nx] == 0.2  # the lowest valid cell, not the padding's 0
    flat = sample_points(np.where(valid, 1.0, m), valid=valid)  # flat inside: valid centre
    assert flat.coords.tolist() == [[3.5, 3.5]] and (flat.positive_area == valid).all()


def test_refinement_on_a_small_object_stays_on_it():
    # a large instance (1.0) and a small one covering 0.1 of cell (6, 6); the previous mask is
    # the small object: 0.1 of that cell (a > 50 % cut would make it an empty grid mask and
    # the prompt would jump to the large instance's peak)
    m = np.zeros((8, 8))
    m[0:4, 0:4] = 1.0
    m[6, 6] = 0.1
    coverage = np.zeros((8, 8))
    coverage[6, 6] = 0.1
    p = refined_prompt(m, coverage)
    assert p.coords[0].tolist() == [6.5, 6.5] and p.labels.tolist() == [1, 0]
    # a mask over no activation gives no prompt: the caller keeps its own
    coverage[6, 6], coverage[7, 0] = 0.0, 1.0
    assert refined_prompt(m, coverage) is None


def test_the_refinement_negative_is_the_true_minimum_outside_the_mask():
    # a ramp whose unique minimum is cell (5, 2); the mask covers the peak at the far corner.
    # Setting the map to its minimum outside the mask would tie every cell and put the negative
    # at cell (0, 0)
    rows, cols = np.mgrid[0:8, 0:8]
    m = np.abs(rows - 5) + np.abs(cols - 2) + 0.0
    m[0, 7] = 20.0
    coverage = np.zeros((8, 8))
    coverage[0:2, 6:8] = 0.5
    p = refined_prompt(m, coverage)
    assert p.labels.tolist() == [1, 0]
    assert p.coords[0].tolist() == pytest.approx([7.5, 0.5], abs=0.5)
    assert p.coords[1].tolist() == [2.5, 5.5]
    # the negative stays off every cell the mask touches, even the lowest one
    coverage[5, 2] = 0.01
    assert refined_prompt(m, coverage).coords[1].tolist() != [2.5, 5.5]


@pytest.mark.parametrize("noise", ["uniform", "normal"])
@pytest.mark.parametrize("seed", range(5))
def test_a_pure_noise_map_gives_at_most_one_prompt(noise, seed):
    rng = np.random.default_rng(seed)
    m = getattr(rng, noise)(size=(48, 48))
    assert len(instance_prompts(m)) == 1
    # whatever masks explain the prompts away: none, or two whole quadrants
    for cover in (lambda p: np.zeros((48, 48)), lambda p: np.kron(np.eye(2), np.ones((24, 24)))):
        assert len(instance_prompts(m, segment=cover)) == 1


def test_instances_on_a_noisy_map_are_found_and_the_noise_is_not():
    # two bumps (sigma 2 cells) on uniform noise of a tenth of their height, each mask a disc of
    # radius 6 cells around the positive point: two prompts, one on each
    rng = np.random.default_rng(0)
    m = 0.1 * rng.uniform(size=(30, 40)) + gaussian(30, 40, 8, 8, 2) + gaussian(30, 40, 20, 30, 2)

    def disc(p):
        x, y = p.coords[0] - 0.5
        return (gaussian(30, 40, y, x, 1) >= np.exp(-18)).astype(float)  # distance <= 6

    prompts = instance_prompts(m, segment=disc)
    assert sorted(p.coords[0].astype(int).tolist() for p in prompts) == [[8, 8], [30, 20]]


def test_instances_that_fill_most_of_the_view_are_not_taken_for_noise():
    # three touching 10 x 4 boxes cover 120 of 144 cells: the cells' median is the boxes' level,
    # so the median + MADs floor alone would stop the search after the first mask
    boxes = [np.zeros((12, 12)) for _ in range(3)]
    for k, (box, level) in enumerate(zip(boxes, [0.8, 1.0, 0.9])):
        box[1:11, 4 * k:4 * k + 4] = level
    m = sum(boxes)

    def segment(p):  # the box under the positive point, as the oracle SAM answers
        x, y = p.coords[0]
        return next(((b > 0).astype(float) for b in boxes if b[int(y), int(x)] > 0),
                    np.zeros((12, 12)))

    prompts = instance_prompts(m, segment=segment)
    assert sorted(int(p.coords[0][0]) // 4 for p in prompts) == [0, 1, 2]


def test_explaining_away_splits_touching_instances():
    # three touching instances of one name light up one area at the grid's resolution: cells
    # (2, 1..7) = 0.6 0.9 0.5 1.0 0.5 0.9 0.6, the shared cells holding two halves. The map
    # alone gives one area; each mask (its cells' coverage) explained away leaves the next
    m = np.zeros((5, 9))
    a = np.zeros((5, 9))
    a[2, 1:4] = [0.6, 0.9, 0.25]
    b = np.zeros((5, 9))
    b[2, 3:6] = [0.25, 1.0, 0.25]
    c = a[:, ::-1].copy()
    m = a + b + c
    assert len(instance_prompts(m)) == 1  # the positive area spans all three
    masks = [a, b, c]

    def segment(p):  # the instance under the positive point, as the oracle SAM answers
        x, y = p.coords[0]
        return next((k for k in masks if k[int(y), int(x)] > 0.5), np.zeros((5, 9)))

    prompts = instance_prompts(m, segment=segment)
    assert [p.coords[0].tolist()[0] // 1 for p in prompts] == [4.0, 2.0, 6.0]
    search = InstanceSearch(m)
    search.next_prompt()
    # b's level in the map: its peak 1.0 and the least-squares fit 1.25 / 1.125 (the shared
    # cells also hold a and c); the larger takes b away and a little of a and c
    search.explain(b)
    expected = a + c
    expected[2, [3, 5]] = 0.5 - 0.25 * 1.25 / 1.125
    np.testing.assert_allclose(search.residual, expected, atol=1e-12)
