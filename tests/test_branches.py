"""detect-branches (issue 27): fuse over several branches, the branch switch, points as maps for
SAM's refinement path, the locator's boxes mapped back to the image, the recipe end to end on
the tiny models (one image, a folder) and in the oracle world."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import supervision as sv
from typer.testing import CliRunner

from conftest import dets, import_bench
from vlpipe.agents.grounding.fusion import fuse
from vlpipe.agents.mllm.locate import BranchSwitchNode, PointMapsNode
from vlpipe.agents.mllm.model import Generation, Mllm
from vlpipe.agents.tiles.grid import Tile
from vlpipe.agents.views import View
from vlpipe.cli import app
from vlpipe.pipeline import GraphError, ModelPool, Pipeline, PipelineSpec


def test_an_unknown_locate_prompt_is_a_bad_param_named_when_the_pipeline_is_built():
    spec = PipelineSpec.model_validate({
        "name": "p", "inputs": {"image": "image", "phrases": "phrases"},
        "nodes": {"locate": {"type": "mllm_boxes", "params": {"model": "x", "prompt": "nope"},
                             "in": {"image": "input.image", "phrases": "input.phrases"}}},
        "outputs": {"detections": "locate.detections"}})
    with pytest.raises(GraphError, match=r"node 'locate' \(mllm_boxes\): bad params: no prompt "
                                         r"'nope' in .* \(known: .*locate_boxes"):
        spec.build()


def test_fuse_three_branches_ranks_by_agreement_then_evidence():
    attention = dets([[0, 0, 10, 10], [20, 0, 30, 10]], [0.4, 0.8], ["cup", "cup"])
    points = dets([[1, 0, 10, 10], [20, 0, 30, 10]], [0.3, 0.6], ["cups", "cup"])
    boxes = dets([[0, 0, 10, 10], [20, 0, 30, 10]], [0.5, 1.0], ["cup", "plate"])
    out = fuse({"attention": attention, "points": points, "boxes": boxes}, agreement=0.5)
    # calibrated c: attention 0.5, 1; points 0.5, 1; boxes 0.5, 1. The first cup: all three
    # branches (IoU 0.9 / 1 / 0.9), q = 1 - 0.5 * 0.5 * 0.5 = 0.875, score (2 + 0.875) / 3;
    # the second cup: attention and points agree, q = 1 - 0 * 0 = 1, (1 + 1) / 3; the plate
    # shares the box but not the name: 1 / 3
    np.testing.assert_allclose(out.confidence, [2.875 / 3, 2 / 3, 2.875 / 3, 2 / 3,
                                                2.875 / 3, 1 / 3], rtol=1e-6)
    assert list(out.data["branch"]) == ["attention"] * 2 + ["points"] * 2 + ["boxes"] * 2


def test_branch_switch_flags_and_rejects_unknown_names():
    (flags,) = BranchSwitchNode("pick", branches="boxes, grounding").run([{"image": None}])
    assert flags == {"attention": False, "points": False, "boxes": True, "grounding": True}
    with pytest.raises(ValueError, match="lasers"):
        BranchSwitchNode("pick", branches="attention,lasers")
    with pytest.raises(ValueError, match="none given"):
        BranchSwitchNode("pick", branches=" , ")


def test_point_maps_peak_at_each_point_in_every_view_holding_it():
    image = np.zeros((40, 64, 3), np.uint8)
    views = [View(image, Tile(0, 0, 64, 40), (40, 64)),
             View(image[:, 32:], Tile(32, 0, 64, 40), (40, 64))]
    points = sv.KeyPoints(xy=np.array([[[12.0, 20.0]], [[44.0, 4.0]], [[50.0, 30.0]]], np.float32),
                          data={"class_name": np.array(["cup", "cup", "fork"])})
    (out,) = PointMapsNode("pm", cell=8).run([{"views": views, "points": points}])
    got = [(m.name, m.view, tuple(m.map.shape), m.region) for m in out["maps"]]
    # full view: 64 x 40 px -> 8 x 5 cells of 8 px; the tile, 32 x 40 px -> 4 x 5 cells
    assert got == [("cup", 0, (5, 8), (0, 0, 64, 40)), ("fork", 0, (5, 8), (0, 0, 64, 40)),
                   ("cup", 1, (5, 4), (0, 0, 32, 40)), ("fork", 1, (5, 4), (0, 0, 32, 40))]
    cup = out["maps"][0].map.numpy()
    # (12, 20) lies in cell (row 2, col 1), 0.5 cell from its centre (1.5 + 0.5 = 12 / 8 + ...)
    # both axes: x = 1.5 cells (centre of col 1), y = 2.5 (centre of row 2): peak exactly 1
    assert cup[2, 1] == pytest.approx(1.0) and cup[0, 5] == pytest.approx(1.0)  # (44, 4): col 5
    # the second cup in the tile: x 44 - 32 = 12 -> col 1, y 4 -> row 0
    assert out["maps"][2].map.numpy()[0, 1] == pytest.approx(1.0)
    assert np.exp(-0.5) == pytest.approx(float(cup[2, 2]), rel=1e-5)  # one cell away, sigma 1


@pytest.fixture(scope="module")
def branches_spec(tiny_models) -> PipelineSpec:
    spec = PipelineSpec.load(tiny_models / "detect-branches.yaml")
    spec.outputs["located"] = "locate_boxes.detections"
    spec.outputs["fused"] = "fuse.detections"
    return spec


@pytest.mark.parametrize("family, expected", [
    # tiny Qwen2.5-VL resizes 200 x 100 to 128 x 64 (smart_resize: factor 16, at most 96² px:
    # beta = sqrt(20000 / 9216) = 1.473, floor(100 / 1.473 / 16) * 16 = 64, floor(200 / 1.473 /
    # 16) * 16 = 128): its [32, 16, 96, 48] there is [50, 25, 150, 75] in the image
    ("qwen2_5_vl", [50, 25, 150, 75]),
    # Qwen3-VL: thousandths of 200 x 100
    ("qwen3_vl", [6.4, 1.6, 19.2, 4.8]),
])
def test_locator_boxes_map_back_in_the_family_convention(branches_spec, tiny_models, monkeypatch,
                                                         family, expected):
    answer = '```json\n[{"bbox_2d": [32, 16, 96, 48], "label": "red cup"}]\n```'

    def generate(self, images, prompts, *args, **kw):
        return [Generation(np.zeros(0, int), answer, True) for _ in prompts]

    monkeypatch.setattr(Mllm, "generate", generate)
    monkeypatch.setattr("vlpipe.agents.grounding.fusion.ObjectNamesNode.run",
                        lambda self, batch: [{"phrases": ["cup"]} for _ in batch])
    image = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    pipe = Pipeline.from_spec(branches_spec, ModelPool(), branches="boxes",
                              locator=str(tiny_models / family))
    result = pipe.run(image=image)
    assert result.error is None, result.error
    located = result.outputs["located"]
    np.testing.assert_allclose(located.xyxy, [expected], atol=1e-4)
    assert list(located.data["class_name"]) == ["cup"]  # the name asked for, not the label
    assert set(result.outputs["fused"].data["branch"]) <= {"boxes"}


def test_florence2_locator_boxes_every_name_on_the_tiny_model(branches_spec, tiny_models,
                                                              monkeypatch):
    """detect-branches with --set locator=<tiny Florence-2>: its task prompts, its location
    tokens parsed (the tiny model says only location tokens: every answer has boxes), each box
    named by the phrase asked and inside the image; Florence-2 answers no points."""
    monkeypatch.setattr("vlpipe.agents.grounding.fusion.ObjectNamesNode.run",
                        lambda self, batch: [{"phrases": ["cup", "dog"]} for _ in batch])
    image = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    pipe = Pipeline.from_spec(branches_spec, ModelPool(), branches="boxes",
                              locator=str(tiny_models / "florence2"))
    result = pipe.run(image=image)
    assert result.error is None, result.error
    located = result.outputs["located"]
    names = list(located.data["class_name"])
    assert names.count("cup") >= 1 and names.count("dog") >= 1 and set(names) == {"cup", "dog"}
    assert (located.xyxy >= 0).all() and (located.xyxy[:, [2, 3]] <= [200, 100]).all()
    assert (located.xyxy[:, 2:] > located.xyxy[:, :2]).all()
    points = Pipeline.from_spec(branches_spec, ModelPool(), branches="points",
                                locator=str(tiny_models / "florence2")).run(image=image)
    assert "florence2 answers boxes, not points" in str(points.error)


def test_molmo2_locator_runs_the_points_branch_on_the_tiny_model(branches_spec, tiny_models,
                                                                monkeypatch):
    """detect-branches with --set locator=<tiny Molmo 2>: "Point to every X" in Molmo 2's chat
    template, its answers parsed as points (the tiny model says object words, no points: an empty
    set, the plumbing only; the parser's real Molmo 2 answers are in test_vlm_coords)."""
    from vlpipe.agents.mllm.locators import Molmo2
    from vlpipe.tiny.mllm import OBJECT_WORDS

    monkeypatch.setattr("vlpipe.agents.grounding.fusion.ObjectNamesNode.run",
                        lambda self, batch: [{"phrases": ["cup"]} for _ in batch])
    spec = copy.deepcopy(branches_spec)
    spec.outputs["points"] = "locate_points.points"
    image = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    result = Pipeline.from_spec(spec, ModelPool(), branches="points",
                                locator=str(tiny_models / "molmo2")).run(image=image)
    assert result.error is None, result.error
    assert result.outputs["points"].xy.shape[1:] == (1, 2)
    molmo = Molmo2.load(str(tiny_models / "molmo2"), "cpu", "float32")
    prompt = molmo.locate_prompt("points", "cup")
    assert prompt.startswith("<|im_start|>user\n<|image|>Point to every cup in the image.")
    (answer,) = molmo.generate([image], [prompt], 6)
    assert len(answer.answer_ids) == 6 and not answer.stopped  # the prompt cut off, 6 new
    assert set(answer.text.replace(",", " ").split()) <= set(OBJECT_WORDS)  # the tiny vocabulary
    with pytest.raises(ValueError, match="molmo2 answers points, not boxes"):
        molmo.locate_prompt("boxes", "cup")


def test_detect_branches_cli_on_a_folder(tiny_models, shared_images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("dog.jpg", "cat_dog.jpeg"):
        (folder / name).write_bytes((shared_images / name).read_bytes())
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["run", str(tiny_models / "detect-branches.yaml"), str(folder),
                                   "--out", str(out), "--branches", "attention,points,grounding"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in records) == ["cat_dog.jpeg", "dog.jpg"]
    assert all(r["error"] is None for r in records)
    bad = CliRunner().invoke(app, ["run", str(tiny_models / "detect-branches.yaml"), str(folder),
                                   "--out", str(tmp_path / "bad"), "--branches", "attention,x"])
    assert bad.exit_code != 0 and "pick from attention, points, boxes, grounding" in bad.output


def test_points_branch_segments_every_pointed_instance_in_the_oracle_world(tmp_path):
    """Three touching discs, the oracle locator's points (no misses, no jitter): the points
    branch alone gives each disc once, through SamNode's explain-away and refinement."""
    (oracle,) = import_bench("oracle")
    from vlpipe.testing import locate
    from vlpipe.io import load_image
    from vlpipe.synthetic import make_scenes

    gt = make_scenes(tmp_path / "scenes", 2, seed=3, kind="crowded")
    spec, params = oracle.spec_for(gt, None, recipe="detect-branches", branches="points",
                                   tiles="1x1", questions=1, rounds=2)
    spec.outputs["fused"] = "fuse.detections"
    data = json.loads(gt.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    miss, locate.MISS = locate.MISS, {k: dict.fromkeys(v, 0.0) for k, v in locate.MISS.items()}
    jitter, locate.POINT_JITTER, alarm, locate.FALSE_ALARM = locate.POINT_JITTER, 0.0, \
        locate.FALSE_ALARM, 0.0
    try:
        pipe = Pipeline.from_spec(spec, **params)
        image = data["images"][0]
        dets = pipe.run(image=load_image(gt.parent / image["file_name"])).outputs["detections"]
    finally:
        locate.MISS, locate.POINT_JITTER, locate.FALSE_ALARM = miss, jitter, alarm
    truth = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in truth], np.float32)
    iou = sv.box_iou_batch(boxes, dets.xyxy)
    assert len(dets) == len(truth)
    assert (iou.max(1) > 0.99).all()
    assert [names[a["category_id"]] for a in truth] == list(dets.data["class_name"][iou.argmax(1)])
