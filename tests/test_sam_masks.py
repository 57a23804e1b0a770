"""Masks upscaled inside their boxes against SAM's full-image post-processing."""

import numpy as np
import pytest
import supervision as sv
import torch
import torch.nn.functional as F

from vlpipe.agents.sam.masks import (BoxMasks, MaskResize, largest_region, resize_matrix, rle_counts,
                                     upscale_in_boxes)


def full_upscale(low, pad, reshaped, original):
    """SAM 1's post-processing (transformers' post_process_masks, segment-anything's
    postprocess_masks): to the padded square, crop, to the image, > 0."""
    x = F.interpolate(low, (pad, pad), mode="bilinear", align_corners=False)
    x = x[..., :reshaped[0], :reshaped[1]]
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0], x[:, 0] > 0


def blobs(k=6, m=32, seed=0):
    """(k, 1, m, m) logits: one gaussian bump each (positive in a disc), negative elsewhere;
    the last one all negative (an empty mask)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    out = []
    for i in range(k):
        cy, cx = torch.randint(0, m, (2,), generator=g).tolist()
        r = 1 + 6 * torch.rand((), generator=g).item()
        out.append(8 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) - 3)
    out[-1] = -torch.ones(m, m)
    return torch.stack(out)[:, None]


def test_resize_matrix_is_interpolate():
    x = torch.randn(3, 7)
    torch.testing.assert_close(resize_matrix(7, 19, "cpu") @ x.T,
                               F.interpolate(x[None], size=19, mode="linear", align_corners=False)[0].T)


@pytest.mark.parametrize("original", [(300, 450), (450, 300), (97, 61)])
def test_boxed_masks_equal_full_post_processing(original):
    low = blobs()
    H, W = original
    scale = 128 / max(H, W)
    reshaped = (int(H * scale + 0.5), int(W * scale + 0.5))
    logits, reference = full_upscale(low, 128, reshaped, original)
    resize = MaskResize.chain(32, [(128, reshaped[0]), (H, H)], [(128, reshaped[1]), (W, W)], "cpu")
    masks = upscale_in_boxes(low, resize)
    dense = masks.to_dense()
    assert dense.shape == reference.shape
    differ = dense != reference.numpy()
    # the matrix product may round differently from interpolate only where the logit is ~0
    assert (logits.abs().numpy()[differ] < 1e-4).all()
    assert not masks.nonempty()[-1] and masks.nonempty()[:-1].all()
    for k in np.flatnonzero(masks.nonempty()):
        ys, xs = dense[k].any(1).nonzero()[0], dense[k].any(0).nonzero()[0]
        assert masks.boxes[k].tolist() == [xs[0], ys[0], xs[-1], ys[-1]]


def test_from_dense_and_compact_round_trip():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 3:9] = True
    masks[2, 10:20, 0:1] = True
    boxed = BoxMasks.from_dense(masks)
    assert boxed.boxes.tolist() == [[3, 2, 8, 4], [-1, -1, -1, -1], [0, 10, 0, 19]]
    np.testing.assert_array_equal(boxed.to_dense(), masks)
    np.testing.assert_array_equal(boxed.to_compact().to_dense(), masks[[0, 2]])


def test_largest_region_counts_diagonal_neighbours_and_breaks_ties_by_first_pixel():
    mask = np.zeros((6, 8), bool)
    mask[0, 5:8] = True  # 3 pixels, first in row-major order
    mask[3, 0], mask[4, 1], mask[5, 2] = True, True, True  # 3 pixels, joined at the corners
    mask[5, 7] = True  # 1 pixel
    expected = np.zeros_like(mask)
    expected[0, 5:8] = True
    np.testing.assert_array_equal(largest_region(mask), expected)
    mask[2, 0] = True  # the diagonal region grows to 4 pixels
    expected = np.zeros_like(mask)
    expected[2:4, 0], expected[4, 1], expected[5, 2] = True, True, True
    np.testing.assert_array_equal(largest_region(mask), expected)
    one = np.zeros((3, 3), bool)
    one[1, 1] = True
    assert largest_region(one) is one


def test_largest_regions_tighten_each_box_to_its_region():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 3:9] = True  # one region: unchanged
    masks[1, 10:14, 20:26] = True  # 24 pixels at x 20-25, y 10-13 ...
    masks[1, 1, 2] = True  # ... and a stray pixel far up-left
    boxed = BoxMasks.from_dense(masks).largest_regions()
    assert boxed.boxes.tolist() == [[3, 2, 8, 4], [20, 10, 25, 13], [-1, -1, -1, -1]]
    expected = masks.copy()
    expected[1, 1, 2] = False
    np.testing.assert_array_equal(boxed.to_dense(), expected)
    assert [c.shape for c in boxed.crops] == [(3, 6), (4, 6), (0, 0)]


def test_rle_counts_equal_supervisions_encoder_crop_by_crop():
    from supervision.detection.utils.converters import _mask_to_rle_counts

    rng = np.random.default_rng(0)
    crops = [rng.random((h, w)) < p for h, w, p in
             [(1, 1, 1.0), (1, 1, 0.0), (3, 5, 0.5), (7, 2, 1.0), (40, 33, 0.1), (1, 9, 0.5)]]
    crops.append(np.ascontiguousarray((rng.random((6, 11)) < 0.5).T).T)  # column-major view
    for crop, counts in zip(crops, rle_counts(crops), strict=True):
        assert counts.dtype == np.int32
        np.testing.assert_array_equal(counts, _mask_to_rle_counts(crop))


def test_compact_masks_equal_supervisions_from_dense():
    masks = blobs(k=5, m=24, seed=3)
    resize = MaskResize.chain(24, [(96, 96), (150, 150)], [(96, 64), (100, 100)], "cpu")
    boxed = upscale_in_boxes(masks, resize)
    dense = boxed.to_dense()[boxed.nonempty()]
    compact = boxed.to_compact()
    reference = sv.CompactMask.from_dense(dense, boxed.boxes[boxed.nonempty()], (150, 100))
    assert len(compact) == len(reference) == 4
    np.testing.assert_array_equal(compact.to_dense(), dense)
    np.testing.assert_array_equal(compact.bbox_xyxy, reference.bbox_xyxy)
    np.testing.assert_array_equal(compact.area, reference.area)
    assert len(BoxMasks.from_dense(np.zeros((2, 5, 5), bool)).to_compact()) == 0


def test_windows_copied_to_the_host_one_by_one_give_the_same_masks(monkeypatch):
    from vlpipe.agents.sam import masks as sam_masks

    resize = MaskResize.chain(32, [(128, 128), (90, 90)], [(128, 100), (70, 70)], "cpu")
    together = upscale_in_boxes(blobs(), resize)
    monkeypatch.setattr(sam_masks, "HOST_COPY_PIXELS", 1)
    alone = upscale_in_boxes(blobs(), resize)
    np.testing.assert_array_equal(alone.boxes, together.boxes)
    np.testing.assert_array_equal(alone.to_dense(), together.to_dense())
    assert together.nonempty().sum() == 5
