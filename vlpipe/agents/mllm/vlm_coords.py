"""Boxes and points in MLLM answers -> pixels of the original image, per family's convention.

Each family writes positions in its own units, read from one place: a registered family's
:attr:`~.families.Family.boxes` (the units it was trained on, the same the answer prompt writes
boxes in), else the locator-only records :data:`~.families.LOCATORS`
(:func:`~.families.answer_units`):

* ``pixels`` — Qwen2.5-VL: absolute pixels of the image *as its processor resized it*
  (:attr:`~.families.Family.input_hw`), JSON ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}``
  and ``{"point_2d": [x, y], "label": ...}``;
* ``thousandths`` — Qwen2-VL (``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``), Qwen3-VL (the same
  JSON as Qwen2.5-VL) and Molmo 2 (``<points coords="IMAGE ID X Y ID X Y ...">label</points>``,
  video answers ``"T: ID X Y; T: ..."``): 0..1000 of the width and height;
* ``location_bins`` — Florence-2: ``label<loc_x1><loc_y1><loc_x2><loc_y2>`` (several boxes may
  follow one label), bins 0..999 whose centre is the coordinate, ``(bin + 0.5) · size / 1000``
  as transformers' ``Florence2PostProcessor.dequantize``;
* ``percent`` — Molmo: ``<point x="" y="">`` and ``<points x1="" y1="" x2="" ...>`` in 0..100;
* ``fractions`` — LLaVA: 0..1.

Boxes come back as ``sv.Detections`` (``xyxy`` float32 pixels of the original image,
``data["class_name"]``, confidence 1: the answer gives none); points as ``sv.KeyPoints`` with one
keypoint per object (``xy`` (N, 1, 2)) and ``data["class_name"]``. Answers are read leniently: code
fences, text around the JSON, a JSON list cut off by the token cap (every complete object before
the cut is kept), single quotes. An answer with no position in it gives no detections; an
answer in another family's format is read as nothing, never guessed.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable

import numpy as np
import supervision as sv

from ..detections import CLASS_NAME, empty_detections
from .families import answer_units

#: units -> how many of them span the width (and the height); ``pixels`` are of the resized input.
PER_SIDE = {"thousandths": 1000.0, "location_bins": 1000.0, "percent": 100.0, "fractions": 1.0}


class CoordinateError(ValueError):
    """An answer's positions cannot be mapped (a family without a convention, a missing size)."""


def scale_to_image(family: str, image_wh: tuple[int, int],
                   input_wh: tuple[int, int] | None = None) -> tuple[float, float]:
    """(sx, sy): pixels of the original (W, H) image per answer unit, x and y."""
    try:
        units = answer_units(family)
    except ValueError as e:
        raise CoordinateError(str(e)) from None
    w, h = image_wh
    if units == "pixels":
        if input_wh is None:
            raise CoordinateError(f"{family} answers in pixels of its resized input: its size "
                                  "(input_wh) is needed to map them to the image")
        return w / input_wh[0], h / input_wh[1]
    return w / PER_SIDE[units], h / PER_SIDE[units]


# -- JSON answers (Qwen-VL) ------------------------------------------------------------------
_FENCE = re.compile(r"```[a-zA-Z]*")


def json_objects(text: str) -> list[dict]:
    """Every JSON object of an answer, leniently: the whole answer (fences stripped) as a list or
    object, else each complete ``{...}`` in turn (a list cut off by the token cap, text around
    it), each as JSON or, failing that, a Python literal (single quotes)."""
    body = _FENCE.sub("", text).strip()
    start = min((i for i in (body.find("["), body.find("{")) if i >= 0), default=-1)
    if start < 0:
        return []
    try:
        whole = json.loads(body[start:])
        return [o for o in (whole if isinstance(whole, list) else [whole]) if isinstance(o, dict)]
    except json.JSONDecodeError:
        pass
    decoder, found, pos = json.JSONDecoder(), [], start
    while (pos := body.find("{", pos)) >= 0:
        obj, end = _one_object(decoder, body, pos)
        if isinstance(obj, dict):
            found.append(obj)
        pos = end
    return found


def _one_object(decoder: json.JSONDecoder, body: str, pos: int) -> tuple[object, int]:
    """(the object starting at ``pos`` or None, where to look next)."""
    try:
        return decoder.raw_decode(body, pos)
    except json.JSONDecodeError:
        close = body.find("}", pos)
        if close < 0:
            return None, len(body)
        try:
            return ast.literal_eval(body[pos:close + 1]), close + 1
        except (ValueError, SyntaxError):
            return None, pos + 1


def _labelled(objects: list[dict], key: str, size: int) -> tuple[np.ndarray, list[str]]:
    """(K, size) float values of ``key`` of the objects that have ``size`` numbers there, and their
    labels ("" when none)."""
    values, labels = [], []
    for o in objects:
        v = o.get(key)
        if isinstance(v, (list, tuple)) and len(v) == size and all(
                isinstance(x, (int, float)) for x in v):
            values.append([float(x) for x in v])
            labels.append(str(o.get("label", "")))
    return np.asarray(values, np.float64).reshape(-1, size), labels


def qwen_json_boxes(text: str, family: str, image_wh, input_wh=None) -> sv.Detections:
    """Qwen2.5-VL / Qwen3-VL ``bbox_2d`` JSON -> boxes of the original image (Qwen2.5-VL:
    ``input_wh`` is its resized input; Qwen3-VL: 0..1000). Read as ``sv.Detections.from_vlm``
    reads them (fences, a cut-off list), and also unlabelled boxes (empty name) and Python
    literals, which ``from_vlm`` drops."""
    sx, sy = scale_to_image(family, image_wh, input_wh)
    xyxy, labels = _labelled(json_objects(text), "bbox_2d", 4)
    return _boxes(xyxy * [sx, sy, sx, sy], labels)


def qwen_json_points(text: str, family: str, image_wh, input_wh=None) -> sv.KeyPoints:
    """Qwen2.5-VL / Qwen3-VL ``point_2d`` JSON -> points of the original image; without JSON
    points, Molmo-style ``<points x1="" y1="" ...>`` tags in the family's units (a Qwen3-VL
    answer in tests/data/answers/locations.jsonl)."""
    sx, sy = scale_to_image(family, image_wh, input_wh)
    xy, labels = _labelled(json_objects(text), "point_2d", 2)
    if not len(xy):  # Qwen3-VL has been seen answering in Molmo's tags, in its own units
        return molmo_points(text, family, image_wh, input_wh)
    return _points(xy * [sx, sy], labels)


# -- Qwen2-VL's special-token boxes ----------------------------------------------------------
_QWEN2_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>)?\s*(?:<\|box_start\|>)?"
    r"\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)\s*,\s*"
    r"\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)")


def qwen2_vl_boxes(text: str, family: str, image_wh, input_wh=None) -> sv.Detections:
    """Qwen2-VL ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)
    <|box_end|>`` (thousandths) -> boxes; a box without its own label takes the last one
    named (the special tokens may have been stripped: the label is then lost)."""
    sx, sy = scale_to_image(family, image_wh, input_wh)
    xyxy, labels, label = [], [], ""
    for m in _QWEN2_BOX.finditer(text):
        label = m.group("label").strip() if m.group("label") is not None else label
        xyxy.append([float(v) for v in m.groups()[1:]])
        labels.append(label)
    return _boxes(np.asarray(xyxy, np.float64).reshape(-1, 4) * [sx, sy, sx, sy], labels)


# -- Florence-2 location tokens --------------------------------------------------------------
_FLORENCE = re.compile(r"(?P<label>[^<]*)(?P<locs>(?:\s*<loc_\d+>){4,})")
_LOC = re.compile(r"<loc_(\d+)>")


def florence2_boxes(text: str, family: str, image_wh, input_wh=None) -> sv.Detections:
    """Florence-2 box tasks' text (``<OD>``, ``<CAPTION_TO_PHRASE_GROUNDING>``,
    ``<OPEN_VOCABULARY_DETECTION>``, ``<REGION_PROPOSAL>``; not the polygon tasks; ``</s>``,
    ``<s>``, ``<pad>`` may remain) -> boxes; each label's locations are read four at a time (a trailing partial
    box is dropped), every bin mapped to its centre, then through ``sv.Detections.from_vlm``."""
    sx, sy = scale_to_image(family, image_wh, input_wh)
    clean = re.sub(r"</?s>|<pad>", "", text)
    xyxy, labels = [], []
    for m in _FLORENCE.finditer(clean):
        bins = [int(b) for b in _LOC.findall(m.group("locs"))]
        for k in range(0, len(bins) - 3, 4):
            xyxy.append([(b + 0.5) for b in bins[k:k + 4]])
            labels.append(m.group("label").strip())
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4) * [sx, sy, sx, sy]
    parsed = sv.Detections.from_vlm(sv.VLM.FLORENCE_2,
                                    {"<OD>": {"bboxes": xyxy.tolist(), "labels": labels}},
                                    resolution_wh=tuple(image_wh))
    return _boxes(parsed.xyxy.reshape(-1, 4), list(parsed.data.get(CLASS_NAME, [])))


# -- Molmo points ----------------------------------------------------------------------------
_TAG = re.compile(r"<(?P<tag>points?)\b(?P<attrs>[^>]*)>(?P<label>.*?)(?:</(?P=tag)>|$)", re.S)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def molmo_points(text: str, family: str, image_wh, input_wh=None) -> sv.KeyPoints:
    """Molmo ``<point x y>`` / ``<points x1 y1 x2 y2 ...>`` (percent) and Molmo 2
    ``<points coords="IMAGE ID X Y ID X Y">`` (thousandths; video: ``"T: ID X Y; T: ..."``) ->
    points of the original image; label = the tag's text, else its ``alt``."""
    sx, sy = scale_to_image(family, image_wh, input_wh)
    xy, labels = [], []
    for m in _TAG.finditer(text):
        attrs = dict(_ATTR.findall(m.group("attrs")))
        label = m.group("label").strip() or attrs.get("alt", "")
        found = _molmo2_coords(attrs["coords"]) if "coords" in attrs else _molmo_xy(attrs)
        xy += found
        labels += [label] * len(found)
    return _points(np.asarray(xy, np.float64).reshape(-1, 2) * [sx, sy], labels)


def _molmo_xy(attrs: dict[str, str]) -> list[list[float]]:
    """x/y, or x1/y1, x2/y2, ... attributes -> [[x, y], ...] (pairs with a number each)."""
    keys = ([("x", "y")] if "x" in attrs else
            [(f"x{k}", f"y{k}") for k in range(1, len(attrs) + 1) if f"x{k}" in attrs])
    out = []
    for kx, ky in keys:
        try:
            out.append([float(attrs[kx]), float(attrs[ky])])
        except (KeyError, ValueError):
            continue
    return out


def _molmo2_coords(coords: str) -> list[list[float]]:
    """``"1 1 308 305 2 752 377"`` (image index, then id x y triplets) or video groups
    ``"0: 1 500 250; 1: 1 700 300"`` -> [[x, y], ...]."""
    out = []
    for group in re.split(r"[;\t]", coords):
        numbers = re.findall(r"\d+(?:\.\d+)?", group)[1:]  # the image / frame index first
        out += [[float(numbers[k + 1]), float(numbers[k + 2])]
                for k in range(0, len(numbers) - 2, 3)]
    return out


# -- results ---------------------------------------------------------------------------------
def _boxes(xyxy: np.ndarray, labels: list[str]) -> sv.Detections:
    if not len(xyxy):
        return empty_detections()
    xyxy = np.sort(xyxy.reshape(-1, 2, 2), axis=1).reshape(-1, 4)  # x1 > x2 written: swapped
    return sv.Detections(xyxy=xyxy.astype(np.float32), confidence=np.ones(len(xyxy), np.float32),
                         class_id=np.zeros(len(xyxy), int),
                         data={CLASS_NAME: np.array(labels, dtype=str)})


def _points(xy: np.ndarray, labels: list[str]) -> sv.KeyPoints:
    return sv.KeyPoints(xy=xy.astype(np.float32).reshape(-1, 1, 2),
                        keypoint_confidence=np.ones((len(xy), 1), np.float32),
                        data={CLASS_NAME: np.array(labels, dtype=str).reshape(-1)})


Parser = Callable[..., object]

#: family -> (box parser, point parser); None where the family has no such answers.
PARSERS: dict[str, tuple[Parser | None, Parser | None]] = {
    "qwen2_vl": (qwen2_vl_boxes, None),
    "qwen2_5_vl": (qwen_json_boxes, qwen_json_points),
    "qwen3_vl": (qwen_json_boxes, qwen_json_points),
    "molmo": (None, molmo_points),
    "molmo2": (None, molmo_points),
    "florence2": (florence2_boxes, None),
}


def parse_answer(text: str, family: str, kind: str, image_wh: tuple[int, int],
                 input_wh: tuple[int, int] | None = None):
    """``kind`` "boxes" -> ``sv.Detections``, "points" -> ``sv.KeyPoints`` of the original
    (W, H) image from one answer of ``family``; ``input_wh``: Qwen2.5-VL's resized input."""
    if kind not in ("boxes", "points"):
        raise ValueError(f"kind is boxes or points, not {kind!r}")
    parser = PARSERS.get(family, (None, None))[kind == "points"]
    if parser is None:
        raise CoordinateError(f"no {kind} parser for family {family!r} "
                              f"(families with {kind}: "
                              f"{', '.join(f for f, p in PARSERS.items() if p[kind == 'points'])})")
    return parser(text, family, image_wh, input_wh)
