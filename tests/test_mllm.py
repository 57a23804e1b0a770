"""The MLLM agent on tiny LLaVA and Qwen2-VL: generation, token spans, streamed attention maps."""

import json

import numpy as np
import pytest
import torch

from vlpipe.agents.mllm.attention import attention_flow, object_map
from vlpipe.agents.mllm.layouts import _center_crop_region
from vlpipe.agents.mllm.families import FAMILIES
from vlpipe.agents.mllm.model import Generation, Mllm, _strip_special, token_spans
from vlpipe.agents.mllm.nodes import AttentionMapNode, ObjectListNode
from vlpipe.agents.tiles.node import TilesNode
from vlpipe.io import load_image
from vlpipe.pipeline import ModelPool, Pipeline

GRIDS = {"llava": (8, 8), "llava_next": (6, 8), "qwen2_vl": (4, 7), "qwen2_5_vl": (4, 7),
         "qwen3_vl": (4, 7)}  # dog.jpg, 534 x 800


@pytest.fixture(scope="module")
def image(shared_images):
    return load_image(shared_images / "dog.jpg")


@pytest.fixture(scope="module", params=list(FAMILIES))
def mllm(request, tiny_models):
    return request.param, Mllm.load(str(tiny_models / request.param), "cpu", "float32")


def test_generation_is_batched_and_names_map_to_their_tokens(mllm, image):
    family, m = mllm
    prompt = m.prompt("List every object in this image, separated by commas.")
    gens = m.generate([image, image[:100, :200]], [prompt, prompt], max_new_tokens=8)
    assert len(gens) == 2
    for gen in gens:
        assert gen.text and len(gen.answer_ids) <= 8
        # each word of the answer maps back to exactly the token that spelled it
        words = gen.text.replace(",", " ,").split()
        starts = [gen.text.index(w) for w in words[:1]]
        spans = token_spans(gen.answer_ids, m.tokenizer, [(starts[0], starts[0] + len(words[0]))])
        assert m.tokenizer.decode(gen.answer_ids[spans[0]]) == words[0]


def test_streamed_flow_equals_flow_over_eager_attentions(mllm, image):
    """The hook-based, layer-by-layer flow must equal attention_flow over the full stack of
    attentions that transformers returns with output_attentions=True (eager)."""
    family, m = mllm
    prompt = m.prompt("List every object in this image, separated by commas.")
    gen = m.generate([image], [prompt], max_new_tokens=6)[0]
    one = m.flow(image, prompt, gen.answer_ids)
    R, positions, grid, prompt_len = one.flow, one.positions, one.grid, one.prompt_length
    n = prompt_len + len(gen.answer_ids)
    assert R.shape == (n, n) and R.dtype == torch.float32
    assert len(positions) == grid[0] * grid[1]
    # reference: one eager forward returning every layer's attention
    inputs = m.encode([image], [prompt])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], gen.answer_ids[None]], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:
        pad = torch.zeros_like(gen.answer_ids[None])
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], pad], 1)
    m.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = m.model(**inputs, output_attentions=True)
    finally:
        m.model.set_attn_implementation("sdpa")
    text_layers = m.model.config.text_config.num_hidden_layers
    attns = [a[0] for a in out.attentions]
    assert len(attns) == text_layers
    assert all(a.shape[-1] == n for a in attns)
    torch.testing.assert_close(R, attention_flow(attns), rtol=1e-5, atol=1e-5)
    # generation afterwards still uses the fast implementation
    assert m.model.config._attn_implementation == "sdpa"


def test_image_token_layout_per_family(mllm, image):
    family, m = mllm
    h, w = image.shape[:2]  # 534 x 800
    prompt = m.prompt("List every object.")
    _, positions, grid, region, _ = m.flow(image, prompt, torch.tensor([], dtype=torch.long))
    all_image = (m.encode([image], [prompt])["input_ids"][0] == m.image_token_id).nonzero()[:, 0]
    steps = (positions[1:] - positions[:-1]).tolist()
    assert grid == GRIDS[family]
    if family == "llava":
        # padded to an 800x800 square (133 rows of mean colour above, 133 below), then CLIP:
        # shortest edge to 64, centre crop 64x64 (all of it), patch 8 -> 8x8
        assert region == (0.0, -133.0, 800.0, 667.0)
        assert positions.tolist() == all_image.tolist() and set(steps) == {1}
        # the processor's own behaviour: the centre crop covers the central 534x534 square
        _, _, _, native, _ = m.flow(image, prompt, torch.tensor([], dtype=torch.long),
                                    fit="native")
        assert native == pytest.approx(((800 - 534) / 2, 0, (800 + 534) / 2, 534), abs=1.0)
    elif family == "llava_next":
        # base view 32 px -> 4x4 = 16 tokens; then tiles of 32 px on the 64x64 pinpoint (2x2
        # tiles -> 8x8 patches), unpadded to the 534:800 aspect -> 6 rows of 8, each row closed
        # by a newline token: 16 + 6 * 9 = 70 image tokens, the map skips base and newlines
        assert len(all_image) == 16 + 6 * 9
        assert region == (0.0, 0.0, float(w), float(h))
        assert positions[0] == all_image[16]
        assert steps == ([1] * 7 + [2]) * 5 + [1] * 7
    else:
        # Qwen2-VL: whole image, resized within 96x96 px to multiples of 16 -> 64x112 px,
        # patches 8x14, merged 2x2 -> 4x7
        assert region == (0.0, 0.0, float(w), float(h))
        assert positions.tolist() == all_image.tolist() and set(steps) == {1}


def test_center_crop_region_by_hand():
    # 600x400 (h x w), crop 200: scale 0.5 -> 300x200, top offset 50 px resized = 100 px original
    assert _center_crop_region((600, 400), 200) == (0.0, 100.0, 400.0, 500.0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_map_per_parsed_object_end_to_end(tiny_models, image, family):
    pipe = Pipeline.load(tiny_models / "detect.yaml", mllm=str(tiny_models / family),
                         tiles="1x1", questions=2)
    graph_nodes = pipe.graph.nodes
    views = TilesNode("v", tiles="1x1").run([{"image": image}])[0]["views"]
    objects = graph_nodes["objects"]
    objects.pool = graph_nodes["maps"].pool = ModelPool()
    lists = objects.run([{"views": views}])[0]["objects"]
    maps = graph_nodes["maps"].run([{"views": views, "objects": lists}])[0]["maps"]
    names = [name for obj in lists for name, _ in obj.names]
    assert names and [m.name for m in maps] == names
    grid = GRIDS[family]
    assert all(tuple(m.map.shape) == grid and torch.isfinite(m.map).all() for m in maps)
    # the model was loaded once and shared by both MLLM nodes
    assert objects.pool.loads == 1


def test_preceding_read_out_takes_the_row_before_the_name(tiny_models, image):
    pipe = Pipeline.load(tiny_models / "detect.yaml", mllm=str(tiny_models / "llava"),
                         tiles="1x1", questions=1)
    views = TilesNode("v", tiles="1x1").run([{"image": image}])[0]["views"]
    objects, maps = pipe.graph.nodes["objects"], pipe.graph.nodes["maps"]
    objects.pool = maps.pool = ModelPool()
    lists = objects.run([{"views": views}])[0]["objects"]
    maps.read = "preceding"
    out = maps.run([{"views": views, "objects": lists}])[0]["maps"]
    obj = next(o for o in lists if o.names)
    R, positions, grid, _, prompt_len = maps.mllm.flow(
        image, obj.prompt, obj.generation.answer_ids, maps.head_weighting, maps.regularize)
    first_tokens = obj.names[0][1]
    row = R[prompt_len + first_tokens[0] - 1, positions].reshape(grid)
    torch.testing.assert_close(out[0].map, row)
    with pytest.raises(ValueError, match="read"):
        AttentionMapNode("maps", model="unused", read="next")


def test_object_map_matches_manual_read_out(mllm, image):
    family, m = mllm
    prompt = m.prompt("List every object.")
    gen = m.generate([image], [prompt], max_new_tokens=4)[0]
    R, positions, grid, _, prompt_len = m.flow(image, prompt, gen.answer_ids)
    rows = [prompt_len, prompt_len + 1][: len(gen.answer_ids)]
    manual = R[rows][:, positions].mean(0).reshape(grid)
    torch.testing.assert_close(object_map(R, rows, positions, grid), manual)
    assert np.isfinite(manual.numpy()).all()


def test_strip_special_tells_whether_an_end_of_sequence_came():
    ids, stopped = _strip_special(torch.tensor([5, 7, 2, 0, 0]), {0, 2})
    assert ids.tolist() == [5, 7] and stopped
    ids, stopped = _strip_special(torch.tensor([5, 7]), {0, 2})
    assert ids.tolist() == [5, 7] and not stopped


@pytest.mark.parametrize("stopped, names", [(True, ["dog", "cat", "tree"]), (False, ["dog", "cat"])])
def test_object_list_drops_the_last_name_of_a_cut_answer(tiny_models, image, monkeypatch,
                                                         stopped, names):
    """An answer cut at max_new_tokens may end inside a name ("tree" could be "tree house"):
    without an end-of-sequence token the open last name is dropped; spans stay exact."""
    node = ObjectListNode("objects", model=str(tiny_models / "llava"), device="cpu",
                          dtype="float32", questions=1)
    node.pool = ModelPool()
    tok = node.mllm.tokenizer
    answer_ids = torch.tensor(tok("dog , cat , tree", add_special_tokens=False)["input_ids"])
    gen = Generation(answer_ids, tok.decode(answer_ids), stopped)
    monkeypatch.setattr(node.mllm, "generate", lambda images, prompts, n, fit: [gen] * len(prompts))
    views = TilesNode("v", tiles="1x1").run([{"image": image}])[0]["views"]
    (lst,) = node.run([{"views": views}])[0]["objects"]
    # "dog , cat , tree": tokens 0 "dog", 1 ",", 2 "cat", 3 ",", 4 "tree"
    assert lst.names == [("dog", [0]), ("cat", [2]), ("tree", [4])][: len(names)]


def test_object_list_reads_a_dataset_vocabulary(tmp_path):
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"categories": [
        {"id": 1, "name": "red_apple", "synonyms": ["crab_apple"]}]}))
    node = ObjectListNode("objects", model="unused", device="cpu", vocabulary=str(ann))
    assert "red apple" in node.gazetteer and "crab apple" in node.gazetteer
    assert "red apple" not in ObjectListNode("objects", model="unused", device="cpu").gazetteer


@pytest.mark.parametrize("value", ["false", "yes", 0])
def test_trust_remote_code_takes_only_a_bool(value):
    """A string "false" is truthy: passed through the Python API it would let hub code run."""
    with pytest.raises(ValueError, match=r"trust_remote_code must be true or false, got "):
        ObjectListNode("objects", model="x", trust_remote_code=value)
    assert ObjectListNode("objects", model="x", trust_remote_code=False).trust_remote_code is False
