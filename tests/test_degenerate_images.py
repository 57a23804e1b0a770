"""Degenerate images (issue 23): one pixel, one row or column, 2 x 2, 8 x 4000 strips, all black,
all white, through the five recipes on the tiny models. Each expert widens an image thinner than
its resize can take (:mod:`vlpipe.agents.thin`), so every image gets a result whose boxes, masks
and text lines lie inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpipe.agents.thin import is_thin, pad_thin, stretch_thin
from vlpipe.batch import PREDICTIONS, RunOptions, collect_inputs, read_predictions, run
from vlpipe.io import load_image
from vlpipe.pipeline import Pipeline
from vlpipe.results import decode_mask

SIZES = {"1x1": (1, 1), "1x4000": (1, 4000), "4000x1": (4000, 1), "2x2": (2, 2),
         "3x5": (3, 5), "8x4000": (8, 4000), "4000x8": (4000, 8)}
FAST = {"tiles": "2x2", "questions": 1, "rounds": 1}  # a 2x2 grid: tiles of a thin image
INPUTS = {"ask": {"question": "What is written here?"}, "ground": {"phrases": "a dog. a cat."}}


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory) -> Path:
    """Folder of degenerate PNGs: smooth gradients of each size (H x W), all black, all white."""
    folder = tmp_path_factory.mktemp("degenerate")
    for name, (h, w) in SIZES.items():
        yy, xx = np.mgrid[:h, :w]
        rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                        (xx + yy) % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{name}.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(folder / "white.png")
    return folder


def test_stretch_and_pad_widen_only_what_is_too_thin():
    strip = np.arange(8 * 4000 * 3, dtype=np.uint32).reshape(8, 4000, 3).astype(np.uint8)
    assert stretch_thin(strip, 500) is strip and pad_thin(strip, 500) is strip
    assert stretch_thin(strip, 100).shape == (40, 4000, 3)  # ceil(4000 / 100)
    assert stretch_thin(strip.transpose(1, 0, 2), 6).shape == (4000, 667, 3)
    padded = pad_thin(strip, 100)
    assert padded.shape == (40, 4000, 3)
    assert (padded[:8] == strip).all() and (padded[8:] == strip[-1]).all()  # the last row copied
    dot = np.full((1, 1, 3), 7, np.uint8)
    assert stretch_thin(dot, 2) is dot
    assert is_thin((8, 4000), 100) and is_thin((4000, 8), 100) and not is_thin((8, 4000), 500)


def test_ocr_pads_a_thin_image_with_rapidocr_unlimited_ratio():
    from vlpipe.agents.backends import OCR_BACKENDS

    ocr = OCR_BACKENDS.build("rapidocr", None, "cpu", None, width_height_ratio=-1)
    strip = np.full((8, 4000, 3), 255, np.uint8)
    assert ocr.read(strip) == []  # no text, and no error from a negative pad


@pytest.mark.parametrize("recipe", ["detect", "detect-fused"])
def test_batch_run_gives_every_degenerate_image_its_detections(tiny_models, degenerate,
                                                               tmp_path, recipe):
    out = tmp_path / "out"
    summary = run(tiny_models / f"{recipe}.yaml", FAST, collect_inputs(degenerate).entries, out,
                  RunOptions(batch_size=4))
    records = {r["file"]: r for r in read_predictions(out / PREDICTIONS)}
    assert set(records) == {p.name for p in degenerate.iterdir()}
    assert summary.failed == 0, summary.errors
    for file, rec in records.items():
        h, w = load_image(degenerate / file).shape[:2]
        assert rec["error"] is None and (rec["height"], rec["width"]) == (h, w)
        for det in rec["detections"]:
            x, y, bw, bh = det["bbox"]
            assert 0 <= x <= x + bw <= w and 0 <= y <= y + bh <= h, (file, det["bbox"])
            assert decode_mask(det["segmentation"]).shape == (h, w)


@pytest.mark.parametrize("recipe", ["ask", "ocr", "ground"])
def test_degenerate_images_get_answers_lines_and_boxes(tiny_models, degenerate, recipe):
    pipe = Pipeline.load(tiny_models / f"{recipe}.yaml")
    files = sorted(degenerate.iterdir())
    images = [load_image(f) for f in files]
    results = pipe.run_batch([{"image": im, **INPUTS.get(recipe, {})} for im in images])
    for file, image, result in zip(files, images, results):
        assert result.error is None, (file.name, result.error)
        h, w = image.shape[:2]
        outputs = result.outputs
        if recipe == "ask":
            assert isinstance(outputs["answer"], str)
        for line in outputs.get("lines") or []:
            assert (line.box >= 0).all() and (line.box <= [w, h]).all(), (file.name, line.box)
        dets = outputs.get("detections")
        if recipe == "ground":
            assert len(dets), file.name  # the random model boxes every phrase somewhere
        if dets is not None and len(dets):
            assert (dets.xyxy >= 0).all() and (dets.xyxy <= [w, h, w, h]).all(), file.name


@pytest.mark.parametrize("mllm", ["qwen2_vl", "llava_next"])
def test_other_mllm_families_take_thin_images(tiny_models, degenerate, mllm):
    """Qwen's processor refuses an aspect ratio above 200 (the image is stretched to it); a
    LLaVA-NeXT strip thinner than one token of the any-resolution grid maps its attention over
    the base view."""
    files = [degenerate / f"{name}.png" for name in ("1x4000", "4000x1", "8x4000", "1x1")]
    images = [load_image(f) for f in files]
    detect = Pipeline.load(tiny_models / "detect.yaml", mllm=str(tiny_models / mllm), **FAST)
    ask = Pipeline.load(tiny_models / "ask.yaml", mllm=str(tiny_models / mllm))
    for file, image, found, answered in zip(
            files, images, detect.run_batch([{"image": im} for im in images]),
            ask.run_batch([{"image": im, **INPUTS["ask"]} for im in images])):
        assert found.error is None and answered.error is None, (file.name, found.error,
                                                                answered.error)
        h, w = image.shape[:2]
        assert all(m.map.numel() > 0 for m in found.outputs["maps"]), file.name
        dets = found.outputs["detections"]
        assert (dets.xyxy >= 0).all() and (dets.xyxy <= [w, h, w, h]).all(), file.name
