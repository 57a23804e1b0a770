"""SAM backends and the refinement loop, on tiny models of both backends."""

import numpy as np
import pytest
import torch

from vlpipe.agents.backends import SAM_BACKENDS
from vlpipe.agents.sam.masks import BoxMasks
from vlpipe.agents.sam.nodes import SamNode, mask_coverage
from vlpipe.agents.tiles.grid import Tile
from vlpipe.agents.views import ObjectMap, View
from vlpipe.io import load_image
from vlpipe.pipeline import ModelPool


@pytest.fixture(scope="module")
def image(shared_images):
    return load_image(shared_images / "truck.jpg")[::4, ::4].copy()  # 300 x 450


def backends(tiny_models):
    """Backend name -> a builder of it on the tiny model (the official one is segment-anything's
    variant ``tiny``, which building the tiny models registered)."""
    weights = {"hf": "sam_hf", "hf2": "sam_hf2", "official": "sam_official/sam_tiny.safetensors",
               "sam3": "sam3_tracker"}
    return {name: lambda name=name, path=path: SAM_BACKENDS.build(
                name, str(tiny_models / path), "cpu", "float32", variant="tiny")
            for name, path in weights.items()}


@pytest.fixture(scope="module", params=["hf", "hf2", "official", "sam3"])
def sam(request, tiny_models):
    return backends(tiny_models)[request.param]()


def test_masks_have_the_image_size_and_low_res_logits_feed_back(sam, image):
    h, w = image.shape[:2]
    sam.set_image(image)
    points = np.array([[[50, 40], [300, 200]], [[200, 100], [0, 0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])
    masks, iou, low = sam.predict(points, labels, None)
    assert isinstance(masks, BoxMasks)  # every backend: one mask type
    assert masks.to_dense().shape == (2, h, w) and masks.to_dense().dtype == bool
    assert iou.shape == (2,) and low.shape == (2, 1, 64, 64)
    masks2, _, _ = sam.predict(points, labels, low)
    assert masks2.to_dense().shape == (2, h, w)


def test_one_batched_call_equals_one_call_per_object(sam, image):
    sam.set_image(image)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 300, (5, 2, 2)).astype(np.float32)
    labels = np.tile([1, 0], (5, 1))
    masks, iou, low = sam.predict(points, labels, None)
    masks = masks.to_dense()
    for k in range(5):
        m1, i1, l1 = sam.predict(points[k:k + 1], labels[k:k + 1], None)
        assert (m1.to_dense()[0] == masks[k]).mean() > 0.999
        np.testing.assert_allclose(i1[0], iou[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(l1[0], low[k], rtol=1e-3, atol=1e-3)


def planted_maps(n: int, grid=(6, 9)) -> list[ObjectMap]:
    """n maps, each peaking on a different grid cell."""
    maps = []
    for k in range(n):
        m = torch.rand(grid, generator=torch.Generator().manual_seed(k)) * 0.1
        m[k % grid[0], (2 * k) % grid[1]] = 1.0
        maps.append(ObjectMap(f"obj{k}", 0, 0, m, (0.0, 0.0, 450.0, 300.0)))
    return maps


class Recorder:
    """Wraps a backend, recording every predict call's mask prompt and returned logits."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def set_image(self, image):
        self.inner.set_image(image)

    def predict(self, points, labels, mask_logits, boxes=None):
        out = self.inner.predict(points, labels, mask_logits)
        self.calls.append((points, mask_logits, out[2]))
        return out


@pytest.mark.parametrize("n_objects", [1, 7])
@pytest.mark.parametrize("backend", ["hf", "hf2", "official", "sam3"])
def test_decoder_calls_equal_rounds_and_each_round_gets_the_last_logits(
        tiny_models, image, backend, n_objects):
    node = SamNode("sam", model="unused", backend=backend, rounds=3, device="cpu")
    recorder = Recorder(backends(tiny_models)[backend]())
    view = View(image, Tile(0, 0, image.shape[1], image.shape[0]), image.shape[:2])
    recorder.set_image(image)
    dets = node.segment_view(recorder, view, planted_maps(n_objects))
    # one decoder call per round, whatever the object count: each map has one instance, so
    # round 1's explain-away search ends after its first step
    assert len(recorder.calls) == 3
    assert all(len(points) == n_objects for points, _, _ in recorder.calls)
    assert recorder.calls[0][1] is None
    assert torch.equal(recorder.calls[1][1], recorder.calls[0][2])  # round 1's logits
    assert recorder.calls[2][1] is recorder.calls[1][2]
    # round 2 reuses round 1's points; round 3 resamples inside round 2's masks
    np.testing.assert_array_equal(recorder.calls[0][0], recorder.calls[1][0])
    assert set(dets.data["round"]) <= {0, 1, 2}
    assert len(dets) <= 3 * n_objects
    h, w = image.shape[:2]
    assert dets.mask.shape[1:] == (h, w)
    assert (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all()


def test_first_points_sit_on_the_attention_peaks(tiny_models, image):
    node = SamNode("sam", model="unused", backend="hf", rounds=1, device="cpu")
    recorder = Recorder(backends(tiny_models)["hf"]())
    view = View(image, Tile(0, 0, 450, 300), (300, 450))
    recorder.set_image(image)
    node.segment_view(recorder, view, planted_maps(3))
    points = recorder.calls[0][0]
    # map cell (r, c) of a 6x9 grid over 450x300 px is the 50x50 px patch at (50c, 50r)
    for k in range(3):
        r, c = k % 6, (2 * k) % 9
        np.testing.assert_allclose(points[k, 0], [50 * c + 25, 50 * r + 25])


def test_sam_node_loads_through_the_pool_once(tiny_models, image):
    pool = ModelPool()
    nodes = [SamNode(f"s{k}", model=str(tiny_models / "sam_hf"), backend="hf", device="cpu")
             for k in range(2)]
    for node in nodes:
        node.pool = pool
    assert nodes[0].sam is nodes[1].sam and pool.loads == 1


def test_mask_coverage_by_hand():
    mask = np.zeros((40, 60), bool)
    mask[0:20, 30:60] = True  # the top-right quarter
    np.testing.assert_array_equal(mask_coverage(mask, (0, 0, 60, 40), (2, 2)), [[0, 1], [0, 0]])
    # region = the right half only: a 2x2 grid over it has its top row covered
    np.testing.assert_array_equal(mask_coverage(mask, (30, 0, 60, 40), (2, 2)), [[1, 1], [0, 0]])
    # a 5x4 px mask (under a cell) at x 28..33, y 10..14: 2x4 px in the left cell of 30x20 px,
    # 3x4 px in the right one; a crop at offset (28, 10) gives the same
    small = np.zeros((40, 60), bool)
    small[10:14, 28:33] = True
    expected = [[8 / 600, 12 / 600], [0, 0]]
    np.testing.assert_allclose(mask_coverage(small, (0, 0, 60, 40), (2, 2)), expected, rtol=1e-6)
    np.testing.assert_allclose(mask_coverage(small[10:14, 28:33], (0, 0, 60, 40), (2, 2),
                                             (28, 10)), expected, rtol=1e-6)


class StraySam:
    """A SAM that answers each prompt with a 20 x 20 px square centred on its first point and a
    stray pixel in the image's bottom-right corner."""

    def __init__(self, hw: tuple[int, int]) -> None:
        self.hw = hw

    def predict(self, points, labels, mask_logits, boxes=None):
        h, w = self.hw
        masks = np.zeros((len(points), h, w), bool)
        for k, (x, y) in enumerate(points[:, 0].astype(int)):
            masks[k, y - 10:y + 10, x - 10:x + 10] = True
            masks[k, h - 1, w - 1] = True
        return BoxMasks.from_dense(masks), np.ones(len(points), np.float32), torch.zeros(
            len(points), 1, 4, 4)


@pytest.mark.parametrize("largest_region", [False, True])
def test_largest_region_drops_a_masks_stray_pixel(largest_region):
    image = np.zeros((300, 450, 3), np.uint8)
    view = View(image, Tile(0, 0, 450, 300), (300, 450))
    node = SamNode("sam", model="-", rounds=1, largest_region=largest_region, device="cpu")
    dets = node.segment_view(StraySam((300, 450)), view, planted_maps(2))
    # first points on the 50 px cells' centres: (25, 25) and (125, 75)
    squares = [[15, 15, 35, 35], [115, 65, 135, 85]]
    if largest_region:
        np.testing.assert_array_equal(dets.xyxy, squares)
        assert dets.mask.to_dense().sum((1, 2)).tolist() == [400, 400]
    else:  # each box reaches the corner pixel
        np.testing.assert_array_equal(dets.xyxy, [[x0, y0, 450, 300] for x0, y0, _, _ in squares])
        assert dets.mask.to_dense().sum((1, 2)).tolist() == [401, 401]


def test_bad_backend_and_rounds_are_clear_errors():
    with pytest.raises(ValueError, match="unknown SAM backend 'sam9'"):
        SamNode("s", model="m", backend="sam9")
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        SamNode("s", model="m", rounds=0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        SamNode("s", model="m", batch_size=0)
    with pytest.raises(ValueError, match="largest_region must be true or false, got 'yes'"):
        SamNode("s", model="m", largest_region="yes")


def test_hf2_batched_call_matches_the_processor_path(tiny_models, image):
    """Pixel points scaled to SAM 2's square (x and y apart) equal the processor's prompts."""
    sam = backends(tiny_models)["hf2"]()
    sam.set_image(image)
    points = np.array([[[50, 40], [300, 200]], [[200, 100], [0, 0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])
    _, iou, low = sam.predict(points, labels, None)
    enc = sam.processor(images=image, input_points=points[None].tolist(),
                        input_labels=labels[None].tolist(), return_tensors="pt")
    with torch.inference_mode():
        ref = sam.model(**enc, multimask_output=False)  # K objects as one image's point batch
    np.testing.assert_allclose(iou, ref.iou_scores[0, :, 0].numpy(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low[:, 0], ref.pred_masks[0, :, 0].clamp(-32, 32),
                               rtol=1e-3, atol=1e-3)


def view_set(image) -> list[View]:
    """The full image and two quarter tiles of other sizes and aspect (300x450, 150x225,
    150x200)."""
    h, w = image.shape[:2]
    tiles = [Tile(0, 0, w, h), Tile(0, 0, w // 2, h // 2), Tile(250, 150, w, h)]
    return [View(image[t.y0:t.y1, t.x0:t.x1].copy(), t, (h, w)) for t in tiles]


def test_views_encoded_in_one_forward_decode_as_each_alone(sam, image):
    views = view_set(image)
    states = sam.encode([v.image for v in views])
    points = np.array([[[40, 30], [120, 90]], [[100, 60], [0, 0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])
    batched = []
    for state in states:
        sam.use(state)
        batched.append(sam.predict(points, labels, None))
    for view, (masks, iou, low) in zip(views, batched):
        sam.set_image(view.image)
        m1, i1, l1 = sam.predict(points, labels, None)
        assert masks.to_dense().shape == (2, *view.image.shape[:2])
        assert (m1.to_dense() == masks.to_dense()).mean() > 0.999
        np.testing.assert_allclose(i1, iou, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(l1, low, rtol=1e-3, atol=1e-3)


class CountingEncoder:
    """Wraps a backend, recording how many images each encoder forward takes."""

    def __init__(self, inner):
        self.inner, self.stacks = inner, []

    def encode(self, images):
        self.stacks.append(len(images))
        return self.inner.encode(images)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("backend", ["hf", "hf2", "official", "sam3"])
def test_sam_node_batches_the_views_and_detects_as_view_by_view(tiny_models, image, backend,
                                                                 monkeypatch):
    views = view_set(image)
    maps = [ObjectMap(m.name, v, 0, m.map, (0.0, 0.0, float(view.image.shape[1]),
                                               float(view.image.shape[0])))
            for v, view in enumerate(views) for m in planted_maps(2 + v)]
    maps = [m for m in maps if m.view != 1] + [m for m in maps if m.view == 1]  # any order
    results = {}
    for batch_size in (1, 2, 3):
        node = SamNode("sam", model="unused", backend=backend, batch_size=batch_size, device="cpu")
        counting = CountingEncoder(backends(tiny_models)[backend]())
        monkeypatch.setattr(SamNode, "sam", property(lambda self: counting))
        results[batch_size] = node.run([{"views": views, "maps": maps}])[0]["detections"]
        assert counting.stacks == {1: [1, 1, 1], 2: [2, 1], 3: [3]}[batch_size]
    one = results[1]
    assert len(one) > 0
    for dets in (results[2], results[3]):
        assert list(dets.data["class_name"]) == list(one.data["class_name"])
        np.testing.assert_array_equal(dets.data["view_box"], one.data["view_box"])
        np.testing.assert_allclose(dets.xyxy, one.xyxy, atol=2)
        np.testing.assert_allclose(dets.confidence, one.confidence, rtol=1e-3, atol=1e-4)
        assert (dets.mask.to_dense() == one.mask.to_dense()).mean() > 0.999


def test_views_without_maps_are_not_encoded(tiny_models, image, monkeypatch):
    views = view_set(image)
    node = SamNode("sam", model="unused", backend="hf", device="cpu")
    counting = CountingEncoder(backends(tiny_models)["hf"]())
    monkeypatch.setattr(SamNode, "sam", property(lambda self: counting))
    maps = [ObjectMap("cup", 2, 0, planted_maps(1)[0].map, (0.0, 0.0, 200.0, 150.0))]
    dets = node.run([{"views": views, "maps": maps}])[0]["detections"]
    assert counting.stacks == [1]
    assert (dets.data["view_box"] == [250, 150, 450, 300]).all()
    assert len(node.run([{"views": views, "maps": []}])[0]["detections"]) == 0
    assert counting.stacks == [1]


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (1, 4000), (4000, 1), (8, 4000)])
def test_one_pixel_and_thin_images_get_masks_of_their_size(sam, hw):
    h, w = hw
    rng = np.random.default_rng(0)
    sam.set_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    points = np.array([[[w / 2, h / 2]]], np.float32)
    masks, iou, _ = sam.predict(points, np.array([[1]]), None,
                                boxes=np.array([[0, 0, w, h]], np.float32))
    assert masks.to_dense().shape == (1, h, w) and np.isfinite(iou).all()


@pytest.mark.parametrize("backend", ["hf", "official"])
def test_a_thin_image_is_segmented_as_its_stretched_copy(tiny_models, backend):
    """Both resize the long side and keep the aspect: an 8 x 4000 strip is stretched to their
    limit (long / short side at most ``size / patch``, 1024 / 16 for the released models); the
    prompts, given in the strip's pixels, must land where the same prompts scaled by the
    stretch land on the stretched copy: the same low-res logits."""
    from vlpipe.agents.thin import stretch_thin

    sam = backends(tiny_models)[backend]()
    strip = np.random.default_rng(1).integers(0, 256, (8, 4000, 3), dtype=np.uint8)
    stretched = stretch_thin(strip, sam.max_aspect)
    sy = stretched.shape[0] / strip.shape[0]
    assert sy > 1 and stretched.shape[1] == 4000
    points = np.array([[[1000.0, 2.0], [3000.0, 6.0]]], np.float32)
    box = np.array([[500.0, 1.0, 2500.0, 7.0]], np.float32)
    labels = np.array([[1, 0]])
    sam.set_image(strip)
    masks, _, low = sam.predict(points, labels, None, boxes=box)
    sam.set_image(stretched)
    _, _, low_stretched = sam.predict(points * [1, sy], labels, None, boxes=box * [1, sy, 1, sy])
    torch.testing.assert_close(low, low_stretched)
    assert masks.to_dense().shape == (1, 8, 4000)
