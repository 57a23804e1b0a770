"""OWLv2 grounding backend on the tiny random model from ``vlpipe models tiny``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlpipe.agents.grounding.node import GroundingNode
from vlpipe.agents.grounding.owlv2 import Owlv2Backend, load_owlv2
from vlpipe.io import load_image


@pytest.fixture(scope="module")
def loaded(tiny_models):
    return load_owlv2(tiny_models / "owlv2")


@pytest.fixture(scope="module")
def images(shared_images):
    return [load_image(shared_images / "dog.jpg"), load_image(shared_images / "en.jpg")]


def reference(processor, model, image, phrases):
    """The image alone, boxes worked out from the raw outputs by hand: (cx, cy, w, h) relative to
    the image padded to a square of side max(h, w) -> corners in pixels, clipped; every box kept
    with its best query; sorted by score."""
    inputs = processor(text=[phrases], images=[image], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    h, w = image.shape[:2]
    side = max(h, w)
    cx, cy, bw, bh = out.pred_boxes[0].double().numpy().T
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) * side
    xyxy = np.clip(xyxy, 0, [w, h, w, h])
    logits = out.logits[0].double().numpy()
    scores = 1 / (1 + np.exp(-logits.max(1)))
    order = np.argsort(-scores, kind="stable")
    return xyxy[order], scores[order], logits.argmax(1)[order]


def test_boxes_scores_and_phrases_match_a_worked_out_reference(loaded, images):
    backend = Owlv2Backend(*loaded, box_threshold=0.0)
    phrases = ["a dog", "a cat", "red car"]
    for image in images:  # landscape 800x534 and a wide strip: the square padding matters
        dets = backend.detect([image], [phrases])[0]
        xyxy, scores, labels = reference(*loaded, image, phrases)
        assert len(dets) == len(scores) == 16  # tiny model: 4x4 patches, one box each
        np.testing.assert_allclose(dets.xyxy, xyxy, atol=1e-3)
        np.testing.assert_allclose(dets.confidence, scores, atol=1e-6)
        assert dets.class_id.tolist() == labels.tolist()
        assert dets.data["class_name"].tolist() == [phrases[k] for k in labels]


def test_one_forward_for_a_batch_and_padded_queries_never_reported(loaded, images):
    backend = Owlv2Backend(*loaded, box_threshold=0.0)
    five = ["a dog", "a cat", "red car", "a tree", "the sign"]
    dets = backend.detect([images[0], images[1], images[0]], [["a tree"], five, []])
    assert backend.forward_calls == 1
    assert len(dets[2]) == 0 and "class_name" in dets[2].data
    assert set(dets[0].class_id.tolist()) == {0}  # the other four query slots are padding
    assert set(dets[0].data["class_name"]) == {"a tree"}
    # batching changes nothing: each image alone gives the same detections
    for image, phrases, batched in [(images[0], ["a tree"], dets[0]), (images[1], five, dets[1])]:
        alone = backend.detect([image], [phrases])[0]
        np.testing.assert_allclose(batched.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(batched.confidence, alone.confidence, atol=1e-5)
    # threshold: only boxes above it, and batch_size splits the forward passes
    cut = float(np.median(dets[1].confidence))
    strict = Owlv2Backend(*loaded, box_threshold=cut, batch_size=1)
    kept = strict.detect(images, [five, five])
    assert strict.forward_calls == 2
    assert len(kept[1]) == int((dets[1].confidence > cut).sum())


def test_ground_recipe_with_the_owlv2_backend(ground_cli):
    boxes = ground_cli("owlv2")
    assert len(boxes) == 16 and {b["name"] for b in boxes} <= {"a dog", "a cat"}
    with pytest.raises(ValueError,
                       match=r"unknown grounding backend 'owl' \(known: grounding_dino, .*owlv2"):
        GroundingNode("g", model="m", backend="owl")
