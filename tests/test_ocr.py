"""OCR backends on real images (RapidOCR ships its ONNX models in the wheel: runs offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpipe.agents.backends import OCR_BACKENDS
from vlpipe.agents.ocr.backends import PaddleOcrBackend, RapidOcrBackend, TextLine, format_lines, lines_prompt

IMAGES = Path(__file__).resolve().parent / "data" / "images"


def load_rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES / name).convert("RGB"))


@pytest.fixture(scope="module")
def ocr() -> RapidOcrBackend:
    return OCR_BACKENDS.build("rapidocr", None, "cpu", None)


@pytest.fixture(scope="module")
def ch_img() -> np.ndarray:
    return load_rgb("ch_en_num.jpg")


@pytest.fixture(scope="module")
def ch_lines(ocr, ch_img) -> list[TextLine]:
    return ocr.read(ch_img)


def test_ch_en_num_matches_rapidocr(ch_img, ch_lines):
    from rapidocr import RapidOCR

    ref = RapidOCR(params={"Global.log_level": "error"})(np.ascontiguousarray(ch_img[:, :, ::-1]))
    assert len(ch_lines) == len(ref.txts) >= 15
    assert ch_lines[0].text == "正品促销"
    assert [ln.text for ln in ch_lines] == list(ref.txts)
    line = ch_lines[0]
    assert line.box.shape == (4, 2) and line.box.dtype == np.float32
    assert 0.0 <= line.score <= 1.0
    x0, y0, x1, y1 = line.xyxy
    assert 0 <= x0 < x1 <= ch_img.shape[1] and 0 <= y0 < y1 <= ch_img.shape[0]
    js = line.to_json()
    assert js["text"] == "正品促销" and len(js["box"]) == 4 and len(js["box"][0]) == 2


def test_en_lines(ocr):
    lines = ocr.read(load_rgb("en.jpg"))
    texts = [ln.text for ln in lines if ln.text.strip()]
    assert texts
    assert any("shot" in t.lower() for t in texts)


def test_transparent_png(ocr):
    rgba = Image.open(IMAGES / "transparent_text.png").convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    lines = ocr.read(np.asarray(white.convert("RGB")))
    assert any(ln.text.strip() for ln in lines)


def test_read_full_image_box_equals_whole_read(ocr, ch_img, ch_lines):
    h, w = ch_img.shape[:2]
    boxed = ocr.read(ch_img, boxes=np.array([[0, 0, w, h]], dtype=np.float32))
    assert [ln.text for ln in boxed] == [ln.text for ln in ch_lines]
    np.testing.assert_allclose(np.stack([ln.box for ln in boxed]), np.stack([ln.box for ln in ch_lines]))


def test_read_inside_box_maps_to_full_image(ocr, ch_img, ch_lines):
    target = next(ln for ln in ch_lines if ln.text == "强力去污符合国标")
    margin = 20
    box = target.xyxy + np.array([-margin, -margin, margin, margin], dtype=np.float32)
    lines = ocr.read(ch_img, boxes=box[None])
    hit = [ln for ln in lines if ln.text == target.text]
    assert hit, [ln.text for ln in lines]
    # The detector sees the crop at another scale, so boxes agree to a few pixels only.
    assert np.abs(hit[0].xyxy - target.xyxy).max() <= 6
    # Coordinates are full-image ones, not crop ones.
    assert hit[0].xyxy[1] > margin + 100


@pytest.mark.parametrize("upside_down", [False, True])
def test_tight_crop_of_one_line_is_read(ocr, ch_img, ch_lines, upside_down):
    """What P2G hands OCR: the crop of one text line, in which the detector finds no box
    (this one read 0 lines before the recognizer-only fallback)."""
    line = next(ln for ln in ch_lines if ln.text == "强力去污符合国标")
    x0, y0, x1, y1 = np.rint(line.xyxy).astype(int)
    crop = ch_img[y0:y1, x0:x1]
    if upside_down:
        read = ocr.read(np.ascontiguousarray(crop[::-1, ::-1]))
        h, w = crop.shape[:2]
        assert [ln.text for ln in read] == [line.text] and read[0].score >= 0.5
        assert read[0].xyxy.tolist() == [0, 0, w, h]  # the whole crop is the line
    else:  # through read(boxes=...), as the OCR node reads inside detections
        read = ocr.read(ch_img, boxes=np.array([[x0, y0, x1, y1]]))
        assert [ln.text for ln in read] == [line.text]
        assert read[0].xyxy.tolist() == [x0, y0, x1, y1]  # full-image coordinates


def test_line_shaped_image_without_text_reads_nothing(ocr):
    assert ocr.read(np.full((30, 200, 3), 255, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (30, 200, 3), dtype=np.uint8)
    assert ocr.read(noise) == []  # recognition junk stays under the score threshold


def test_text_area_fraction(ocr, ch_img):
    frac = ocr.text_area_fraction(ch_img)
    assert 0.05 < frac < 1.0
    assert ocr.text_area_fraction(np.full((64, 64, 3), 255, np.uint8)) == 0.0
    # A detection-only call must not switch recognition off for later reads.
    assert ocr.read(ch_img)[0].text == "正品促销"


def test_format_lines_reading_order(ch_lines, ch_img):
    def line(text, x0, y0, x1, y1):
        return TextLine(text, 0.9, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32))

    lines = [line("right", 200, 12, 260, 30), line("below", 10, 60, 80, 80), line("left", 10, 10, 80, 30)]
    assert format_lines(lines, (100, 300)).splitlines() == [
        '"left" at [10, 10, 80, 30]',
        '"right" at [200, 12, 260, 30]',
        '"below" at [10, 60, 80, 80]',
    ]
    text = format_lines(ch_lines, ch_img.shape[:2])
    assert text.splitlines()[0].startswith('"正品促销" at [')
    assert len(text.splitlines()) == len(ch_lines)
    assert format_lines([], (10, 10)) == ""


def test_lines_prompt_heads_the_lines_and_writes_boxes_in_the_given_convention():
    line = TextLine("STOP", 0.9, np.array([[10, 20], [50, 20], [50, 40], [10, 40]], np.float32))
    tenths = lambda xyxy: str([v / 10 for v in xyxy])  # noqa: E731
    assert lines_prompt([line], (100, 200), tenths) == (
        'Text read in the image (OCR), with boxes:\n"STOP" at [1.0, 2.0, 5.0, 4.0]\n')
    assert lines_prompt([], (100, 200), tenths) == ""


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown OCR backend 'tesseract'") as exc:
        OCR_BACKENDS.build("tesseract", None, "cpu", None)
    assert "(known: paddleocr, rapidocr)" in str(exc.value)
    assert OCR_BACKENDS.names() == ["paddleocr", "rapidocr"]


@pytest.mark.skipif(importlib.util.find_spec("paddleocr") is not None, reason="paddleocr installed")
def test_paddle_missing_is_clear():
    backend = OCR_BACKENDS.build("paddleocr", None, "cpu", None)
    assert isinstance(backend, PaddleOcrBackend)
    with pytest.raises(RuntimeError, match=r'pip install "vlpipe\[paddle\]"'):
        backend.read(np.zeros((32, 32, 3), np.uint8))
