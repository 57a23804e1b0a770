"""Grounding DINO backend on a tiny random model built offline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from vlpipe.agents.backends import GROUNDING_BACKENDS
from vlpipe.agents.grounding.crops import crop_boxes, fair_order
from vlpipe.agents.grounding.dino import GroundingDinoBackend, load_grounding_dino
from vlpipe.tiny.grounding import build_tiny_grounding_dino

IMAGES = Path(__file__).resolve().parent / "data" / "images"

WORDS = "dog cat person car truck sign text logo red blue tree house road window door table chair bed cup bottle".split()
MANY = [f"a {w}" for w in WORDS] + [f"the big {w}" for w in WORDS]  # 40 phrases


def load_rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES / name).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("tiny_gdino"))


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_grounding_dino(tiny_dir)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [load_rgb("dog.jpg"), load_rgb("cat_dog.jpeg")]


def test_tiny_model_reloads_offline(tiny_dir, monkeypatch):
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = GroundingDinoForObjectDetection.from_pretrained(tiny_dir)
    assert model.config.max_text_len == 32 and model.config.num_queries == 20
    ids = processor.tokenizer("a dog. a cat.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == 2


def test_detect_batched(loaded, images):
    backend = GroundingDinoBackend(*loaded, box_threshold=0.0)
    n_chunks = len(backend.chunk_phrases(MANY))
    assert n_chunks > 1
    dets = backend.detect(images, [["a dog"], MANY])
    assert backend.forward_calls == 1
    assert len(dets) == 2
    # threshold 0 keeps every query of every prompt: 20 per chunk, concatenated per image.
    assert len(dets[0]) == 20 and len(dets[1]) == 20 * n_chunks
    for d, img, phrases in zip(dets, images, [["a dog"], MANY]):
        assert isinstance(d, sv.Detections)
        h, w = img.shape[:2]
        assert d.xyxy.shape == (len(d), 4)
        assert (d.xyxy[:, [0, 2]] >= 0).all() and (d.xyxy[:, [0, 2]] <= w).all()
        assert (d.xyxy[:, [1, 3]] >= 0).all() and (d.xyxy[:, [1, 3]] <= h).all()
        assert (d.xyxy[:, 2] >= d.xyxy[:, 0]).all() and (d.xyxy[:, 3] >= d.xyxy[:, 1]).all()
        assert set(d.data["class_name"]) <= set(phrases)
        assert [phrases[i] for i in d.class_id] == list(d.data["class_name"])
        assert (np.diff(d.confidence) <= 0).all()  # sorted by score


def test_detect_batch_size(loaded, images):
    backend = GroundingDinoBackend(*loaded, box_threshold=0.0, batch_size=2)
    n_chunks = 1 + len(backend.chunk_phrases(MANY))
    full = GroundingDinoBackend(*loaded, box_threshold=0.0).detect(images, [["a dog"], MANY])
    dets = backend.detect(images, [["a dog"], MANY])
    assert backend.forward_calls == math.ceil(n_chunks / 2)
    for a, b in zip(full, dets):
        assert len(a) == len(b)
        np.testing.assert_allclose(np.sort(a.confidence), np.sort(b.confidence), atol=1e-4)


def test_chunks_fit_text_len(loaded):
    backend = GroundingDinoBackend(*loaded)
    chunks = backend.chunk_phrases(MANY + ["a dog", ""])  # duplicate and empty are dropped
    assert sorted(i for c in chunks for i in c.phrase_indices) == list(range(len(MANY)))
    for c in chunks:
        assert len(backend.tokenizer(c.text)["input_ids"]) <= backend.max_text_len
        assert c.text.endswith(".")


def test_no_phrases(loaded, images):
    backend = GroundingDinoBackend(*loaded)
    dets = backend.detect(images, [[], []])
    assert [len(d) for d in dets] == [0, 0] and backend.forward_calls == 0
    assert dets[0].data["class_name"].shape == (0,)
    backend.box_threshold = 1.1  # nothing passes: still well-formed empty results
    dets = backend.detect(images, [MANY, ["a dog"]])
    assert [len(d) for d in dets] == [0, 0] and "class_name" in dets[1].data


def test_backend_from_path_and_crops(tiny_dir, images):
    backend = GROUNDING_BACKENDS.build("grounding_dino", str(tiny_dir), "cpu", "auto",
                                       box_threshold=0.0)
    dets = backend.detect(images[:1], [["a dog", "a cat"]])[0]
    crops = crop_boxes(images[0], dets, max_crops=4, pad=0.1)
    assert 0 < len(crops) <= 4
    for crop in crops:
        pixels = crop.image
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
        assert 0 < pixels.shape[0] <= images[0].shape[0] and 0 < pixels.shape[1] <= images[0].shape[1]
        assert crop.name in {"a dog", "a cat"}
    # the first crop is the best box (padded), labelled with its phrase and unpadded box
    best = int(np.argmax(dets.confidence))
    x0, y0, x1, y1 = dets.xyxy[best]
    assert crops[0].name == dets.data["class_name"][best]
    np.testing.assert_allclose(crops[0].box, dets.xyxy[best])
    assert crops[0].image.shape[0] >= int(y1 - y0) - 1 and crops[0].image.shape[1] >= int(x1 - x0) - 1
    assert crop_boxes(images[0], sv.Detections.empty()) == []


def test_crops_are_shared_fairly_between_phrases():
    dets = sv.Detections(xyxy=np.tile(np.array([[0, 0, 4, 4]], np.float32), (5, 1)),
                         confidence=np.array([0.5, 0.9, 0.6, 0.8, 0.7], np.float32),
                         data={"class_name": np.array(["c", "a", "b", "a", "a"])})
    # by score: a .9 (1), a .8 (3), a .7 (4), b .6 (2), c .5 (0); phrases ranked a, b, c;
    # round one: 1, 2, 0; round two: 3; round three: 4
    assert fair_order(dets, 4) == [1, 2, 0, 3]
    assert fair_order(dets, 10) == [1, 2, 0, 3, 4]
    assert fair_order(dets, 0) == []
    image = np.zeros((8, 8, 3), np.uint8)
    assert [c.name for c in crop_boxes(image, dets, max_crops=4)] == ["a", "b", "c", "a"]


def test_rgba_is_composited_on_white_like_every_image_input(loaded, images):
    rgb = images[0]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:100] = 0  # a transparent band over black pixels
    on_white = rgb.copy()
    on_white[:100] = 255
    backend = GroundingDinoBackend(*loaded, box_threshold=0.0)
    got, want, alpha_dropped = (backend.detect([im], [["a dog"]])[0]
                                for im in (rgba, on_white, rgba[..., :3]))
    np.testing.assert_array_equal(got.xyxy, want.xyxy)
    np.testing.assert_array_equal(got.confidence, want.confidence)
    assert not np.array_equal(got.confidence, alpha_dropped.confidence)
