"""SAM 3 as a ``sam`` backend (the point-prompted tracker) and a ``grounding`` backend (concept
segmentation), on the tiny random models from ``vlpipe models tiny``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vlpipe.agents.grounding.sam3 import Sam3ConceptBackend, load_sam3
from vlpipe.agents.sam.sam3 import load_sam3_tracker
from vlpipe.cli import app
from vlpipe.io import load_image


@pytest.fixture(scope="module")
def images(shared_images):
    return [load_image(shared_images / "dog.jpg"), load_image(shared_images / "en.jpg")]


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_sam3(tiny_models / "sam3")


# -- sam: the tracker ---------------------------------------------------------------------------
def test_tracker_points_and_masks_match_the_processor_path(tiny_models, images):
    """Pixel points scaled to SAM 3's square input (x and y apart) and masks upscaled to the
    image equal what Sam3TrackerProcessor and post_process_masks give for the same prompts."""
    sam = load_sam3_tracker(str(tiny_models / "sam3_tracker"), "cpu", "float32")
    image = images[1]  # 709 x 132: x and y scale very differently
    sam.set_image(image)
    points = np.array([[[50, 40], [600, 100]], [[300, 20], [0, 0]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])
    masks, iou, low = sam.predict(points, labels, None)
    masks = masks.to_dense()  # computed inside each mask's box (BoxMasks)
    assert masks.shape == (2, 132, 709) and low.shape == (2, 1, 64, 64)
    enc = sam.processor(images=image, input_points=points[None].tolist(),
                        input_labels=labels[None].tolist(), return_tensors="pt")
    with torch.inference_mode():
        ref = sam.model(**enc, multimask_output=False)
    np.testing.assert_allclose(iou, ref.iou_scores[0, :, 0].numpy(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(low[:, 0], ref.pred_masks[0, :, 0].clamp(-32, 32),
                               rtol=1e-3, atol=1e-3)
    ref_masks = sam.processor.post_process_masks(ref.pred_masks, enc["original_sizes"])[0][:, 0]
    assert (masks == ref_masks.numpy()).mean() > 0.999


def test_detect_recipe_with_the_sam3_tracker(tiny_models, shared_images):
    res = CliRunner().invoke(app, ["run", str(tiny_models / "detect.yaml"),
                                   str(shared_images / "dog.jpg"),
                                   "--set", "sam_backend=sam3",
                                   "--set", f"sam={tiny_models / 'sam3_tracker'}",
                                   "--set", "tiles=1x1", "--set", "questions=1"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["error"] is None and out["detections"]
    for det in out["detections"]:
        x, y, w, h = det["bbox"]
        assert 0 <= x and x + w <= 800 and 0 <= y and y + h <= 534
        assert det["segmentation"]["size"] == [534, 800]


# -- grounding: concept segmentation ------------------------------------------------------------
def reference(processor, model, image, phrases, threshold):
    """Each phrase alone through the processor and the model, worked out from the raw outputs:
    score = sigmoid(query logit) * sigmoid(presence logit), boxes = xyxy fractions times
    (w, h, w, h); masks from the processor's own post-processing; all sorted by score.
    Returns scores (N,), boxes (N, 4), masks (N, H, W) bool, phrase indices (N,)."""
    h, w = image.shape[:2]
    rows = []
    for k, phrase in enumerate(phrases):
        inputs = processor(images=image, text=phrase, return_tensors="pt")
        with torch.inference_mode():
            out = model(**inputs)
        logits = out.pred_logits[0].double().numpy()
        presence = out.presence_logits[0, 0].double().item()
        scores = 1 / (1 + np.exp(-logits)) / (1 + np.exp(-presence))
        boxes = out.pred_boxes[0].double().numpy() * [w, h, w, h]
        masks = processor.post_process_instance_segmentation(
            out, threshold=threshold, target_sizes=[(h, w)])[0]["masks"].bool().numpy()
        keep = np.flatnonzero(scores > threshold)
        rows += [(scores[q], boxes[q], masks[j], k) for j, q in enumerate(keep)]
    rows.sort(key=lambda r: -r[0])
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]).reshape(-1, 4),
            np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))


def test_boxes_masks_scores_match_a_worked_out_reference(loaded, images):
    phrases = ["a dog", "a cat", "red car"]
    for image in images:  # landscape 800x534 and a 709x132 strip: no aspect ratio kept
        h, w = image.shape[:2]
        scores, boxes, masks, labels = reference(*loaded, image, phrases, 0.0)
        assert len(scores) == 3 * 10  # tiny model: 10 queries a phrase
        cut = float(np.median(scores))  # the threshold keeps the better half
        keep = scores > cut
        scores, boxes, masks, labels = scores[keep], boxes[keep], masks[keep], labels[keep]
        backend = Sam3ConceptBackend(*loaded, box_threshold=cut)
        dets = backend.detect([image], [phrases])[0]
        assert len(dets) == len(scores) == 15
        np.testing.assert_allclose(dets.confidence, scores, atol=1e-5)
        np.testing.assert_allclose(dets.xyxy, np.clip(boxes, 0, [w, h, w, h]), atol=1e-2)
        assert dets.class_id.tolist() == labels.tolist()
        assert dets.data["class_name"].tolist() == [phrases[k] for k in labels]
        dense = dets.mask.to_dense()
        assert dense.shape == (len(dets), h, w) and dense.any()
        assert (dense == masks).mean() > 0.999


def test_one_image_encoding_and_one_forward_for_a_batch(loaded, images):
    backend = Sam3ConceptBackend(*loaded, box_threshold=0.3)
    encodings = []
    hook = backend.model.vision_encoder.register_forward_hook(
        lambda module, args, out: encodings.append(args[0].shape[0]))
    five = ["a dog", "a cat", "red car", "a tree", "the sign"]
    try:
        dets = backend.detect([images[0], images[1], images[0]], [["a tree"], five, []])
    finally:
        hook.remove()
    assert encodings == [2] and backend.forward_calls == 1  # the phrase-less image is skipped
    assert len(dets[2]) == 0 and "class_name" in dets[2].data
    assert set(dets[0].data["class_name"]) <= {"a tree"}
    for image, phrases, batched in [(images[0], ["a tree"], dets[0]), (images[1], five, dets[1])]:
        alone = backend.detect([image], [phrases])[0]
        np.testing.assert_allclose(batched.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(batched.confidence, alone.confidence, atol=1e-5)
    split = Sam3ConceptBackend(*loaded, box_threshold=0.3, batch_size=2)
    again = split.detect([images[1]], [five])[0]
    assert split.forward_calls == 3
    np.testing.assert_allclose(again.confidence, dets[1].confidence, atol=1e-5)


def test_ground_recipe_with_the_sam3_backend(ground_cli):
    boxes = ground_cli("sam3")
    assert len(boxes) == 20 and {b["name"] for b in boxes} == {"a dog", "a cat"}
    assert all(b["segmentation"]["size"] == [901, 1200] for b in boxes)  # cat_dog.jpeg
