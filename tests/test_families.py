"""Every registered MLLM family has all its parts (issue 26): a layout that places the tiny
model's image tokens, box units, a tiny builder whose model is of that family, the released
model's processor for the oracle; and a family that lacks one is refused when registered.
Every family whose answers vlpipe parses for positions has its units in one place (issue 27)."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest

from vlpipe.agents.backends import MLLM_BACKENDS
from vlpipe.agents.mllm.families import (FAMILIES, LOCATORS, Family, answer_units,
                                         locator_backend, register_family, token_grid)
from vlpipe.agents.mllm.layouts import llava_layout
from vlpipe.agents.mllm.model import Mllm
from vlpipe.agents.mllm.vlm_coords import PARSERS, PER_SIDE
from vlpipe.io import load_image


@pytest.fixture(scope="module")
def image(shared_images):
    return load_image(shared_images / "dog.jpg")


def test_the_families_vlpipe_supports():
    assert list(FAMILIES) == ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
    assert {name: f.boxes for name, f in FAMILIES.items()} == {
        "llava": "fractions", "llava_next": "fractions", "qwen2_vl": "thousandths",
        "qwen2_5_vl": "pixels", "qwen3_vl": "thousandths"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_tiny_model_is_of_its_family_and_its_layout_places_every_token(tiny_models, image, name):
    family = FAMILIES[name]
    module, _, function = family.tiny.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    mllm = Mllm.load(str(tiny_models / name), "cpu", "float32")  # built by build_all
    assert mllm.model.config.model_type == name == mllm.family
    fitted, offset = mllm.fit(image)
    inputs = mllm.encode([fitted], [mllm.prompt("what is this")], "native")
    tokens = int((inputs["input_ids"][0] == mllm.image_token_id).sum())
    order, (gh, gw), (x0, y0, x1, y1) = token_grid(name, mllm.processor, inputs, 0,
                                                   fitted.shape[:2], offset)
    assert len(order) == gh * gw and len(set(order.tolist())) == gh * gw
    assert 0 <= int(order.min()) and int(order.max()) < tokens
    assert x1 > x0 and y1 > y0
    sentence, box = mllm.box_convention(image)
    assert sentence.startswith("The first image is 800x534 pixels")
    assert box([0, 0, 800, 534]).startswith("[0")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_released_processor_gives_a_grid_over_the_image(name):
    processor = FAMILIES[name].released()
    assert processor.patch_size in (14, 16)
    view = np.zeros((300, 500, 3), np.uint8)
    inputs = processor.image_processor(images=view, return_tensors="pt")
    _, (gh, gw), region = token_grid(name, processor, inputs, 0, (300, 500), (0, 0))
    assert gh > 1 and gw > 1 and region[2] > region[0]


def _part(**change) -> dict:
    parts = dict(name="new_family", layout=llava_layout, boxes="fractions",
                 tiny="vlpipe.tiny.mllm:build_llava",
                 released=lambda: SimpleNamespace(image_processor=None, patch_size=14))
    return {**parts, **change}


@pytest.mark.parametrize("missing", ["layout", "boxes", "tiny", "released"])
def test_a_family_without_a_part_cannot_be_made(missing):
    parts = _part()
    del parts[missing]
    with pytest.raises(TypeError, match=missing):
        Family(**parts)


@pytest.mark.parametrize("change, error", [
    ({"boxes": "inches"}, "boxes 'inches' is none of fractions, thousandths, pixels"),
    ({"boxes": "pixels"}, "need input_hw"),
    ({"boxes": "pixels", "input_hw": lambda p, hw: hw, "square_pad": True}, "not padded"),
    ({"tiny": "vlpipe.tiny.mllm"}, "tiny is 'module:function'"),
    ({"layout": None}, "layout and released must be callables"),
])
def test_a_family_with_a_bad_part_is_refused(change, error):
    with pytest.raises(ValueError, match=error):
        Family(**_part(**change))


def test_a_family_registers_once():
    with pytest.raises(ValueError, match="'llava' is registered already"):
        register_family(FAMILIES["llava"])


def test_every_family_with_a_position_parser_has_its_units_in_one_place():
    """A family vlpipe parses positions of is registered (its boxes' units) or locator-only
    (LOCATORS), not both; every locator-only family has a parser."""
    assert set(FAMILIES).isdisjoint(LOCATORS)
    assert set(LOCATORS) <= set(PARSERS)
    units = {name: answer_units(name) for name in PARSERS}
    assert units == {"qwen2_vl": "thousandths", "qwen2_5_vl": "pixels", "qwen3_vl": "thousandths",
                     "molmo": "percent", "molmo2": "thousandths", "florence2": "location_bins"}
    assert set(units.values()) <= {*PER_SIDE, "pixels"}
    with pytest.raises(ValueError, match="no coordinate convention for family 'gpt'"):
        answer_units("gpt")


def test_a_locator_only_family_cannot_also_be_registered():
    with pytest.raises(ValueError, match="'molmo2' is registered already"):
        register_family(Family(**_part(name="molmo2")))


@pytest.mark.parametrize("name", [n for n, loc in LOCATORS.items() if loc.backend])
def test_a_drivable_locator_has_a_tiny_model_of_its_family_its_backend_loads(tiny_models, name):
    locator = LOCATORS[name]
    assert locator.tiny and locator_backend(name) == locator.backend
    model = MLLM_BACKENDS.build(locator.backend, str(tiny_models / name), "cpu", "float32")
    assert model.family == model.model.config.model_type == name


def test_locators_without_a_backend_are_refused_by_name():
    assert locator_backend("qwen2_5_vl") == "transformers"
    with pytest.raises(ValueError, match="no backend drives 'molmo'.*florence2, molmo2"):
        locator_backend("molmo")
