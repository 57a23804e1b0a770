"""detect-fused: the names -> grounding -> SAM-box branch, the fusion of both branches, the
recipe end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import supervision as sv
import torch
from typer.testing import CliRunner

from conftest import dets
from vlpipe.agents.grounding.fusion import FuseNode, ObjectNamesNode, fuse
from vlpipe.agents.mllm.model import Generation
from vlpipe.agents.views import ObjectList
from vlpipe.agents.sam.backends import load_hf_sam
from vlpipe.agents.sam.masks import BoxMasks
from vlpipe.agents.sam.nodes import SamBoxNode
from vlpipe.cli import app
from vlpipe.io import load_image
from vlpipe.pipeline import ModelPool, Pipeline


def test_fuse_ranks_agreeing_pairs_first():
    attention = dets([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.3], ["dog", "cat"],
                     round=np.array([0, 2]))
    grounded = dets([[1, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0.4, 0.8, 0.2],
                    ["dogs", "dog", "cat"])
    out = fuse({"attention": attention, "grounding": grounded}, agreement=0.5)
    assert list(out.data["branch"]) == ["attention"] * 2 + ["grounding"] * 3
    assert set(out.data) == {"class_name", "view_box", "branch"}
    # calibrated: attention 0.6/0.6 = 1, 0.3/0.6 = 0.5; grounding 0.5, 1, 0.25. dog/dogs overlap
    # with IoU 0.9: both (1 + 1 - (1 - 1)(1 - 0.5)) / 2 = 1; the attention cat and the grounded
    # dog share a box but not a name: 0.5 / 2 and 1 / 2; the grounded cat alone: 0.25 / 2
    np.testing.assert_allclose(out.confidence, [1.0, 0.25, 1.0, 0.5, 0.125], rtol=1e-6)
    # one branch empty: the other calibrated, over N = 2 branches
    alone = fuse({"attention": sv.Detections.empty(), "grounding": grounded})
    np.testing.assert_allclose(alone.confidence, [0.25, 0.5, 0.125])
    assert len(fuse({"attention": sv.Detections.empty(), "grounding": sv.Detections.empty()})) == 0
    node = FuseNode("fuse", agreement=0.95)
    (res,) = node.run([{"attention": attention, "grounded": grounded}])
    np.testing.assert_allclose(res["detections"].confidence, [0.5, 0.25, 0.25, 0.5, 0.125])


def test_object_names_most_often_named_first():
    empty = torch.zeros(0, dtype=torch.long)
    gen = Generation(empty, "", True)
    lists = [ObjectList(0, 0, gen, "", [("cup", [1]), ("dog", [3])]),
             ObjectList(1, 0, gen, "", [("dog", [1]), ("tree", [2])]),
             ObjectList(1, 1, gen, "", [("tree", [1]), ("dog", [2])])]
    (out,) = ObjectNamesNode("names").run([{"objects": lists}])
    assert out["phrases"] == ["dog", "tree", "cup"]
    (top,) = ObjectNamesNode("names", max_names=1).run([{"objects": lists}])
    assert top["phrases"] == ["dog"]


class BoxSam:
    """A SAM that fills each prompt box (rounded to whole pixels) with predicted IoU 0.5."""

    def set_image(self, image):
        self.hw = image.shape[:2]

    def predict(self, points, labels, mask_logits, boxes=None):
        assert points.shape[1] == 0 and boxes is not None
        masks = np.zeros((len(boxes), *self.hw), bool)
        for k, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(int)):
            masks[k, y0:y1, x0:x1] = True
        return (BoxMasks.from_dense(masks), np.full(len(boxes), 0.5),
                torch.zeros(len(boxes), 1, 4, 4))


def test_sam_box_node_segments_each_box(monkeypatch):
    node = SamBoxNode("boxes", model="-", device="cpu")
    monkeypatch.setattr(SamBoxNode, "sam", property(lambda self: BoxSam()))
    grounded = sv.Detections(xyxy=np.array([[10.2, 5, 30, 25], [0, 0, 8, 4]], np.float32),
                             confidence=np.array([0.8, 0.4], np.float32),
                             data={"class_name": np.array(["dog", "cat"])})
    image = np.zeros((40, 50, 3), np.uint8)
    (out,) = node.run([{"image": image, "detections": grounded}])
    d = out["detections"]
    np.testing.assert_allclose(d.xyxy, [[10, 5, 30, 25], [0, 0, 8, 4]])
    np.testing.assert_allclose(d.confidence, [0.4, 0.2])  # confidence x predicted IoU
    assert list(d.data["class_name"]) == ["dog", "cat"]
    assert d.mask.to_dense()[0].sum() == 20 * 20
    np.testing.assert_array_equal(d.data["view_box"], [[0, 0, 50, 40]] * 2)


def test_box_prompts_reach_the_hf_sam_decoder(tiny_models, shared_images):
    """A box prompt through the tiny SamModel gives the same masks as the model called directly
    with the box scaled to its input frame: 534 x 800 resized to 171 x 256."""
    sam = load_hf_sam(str(tiny_models / "sam_hf"), "cpu", "float32")
    image = load_image(shared_images / "dog.jpg")
    sam.set_image(image)
    box = np.array([[100.0, 50.0, 500.0, 400.0]], np.float32)
    masks, iou, low = sam.predict(np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.int64),
                                  None, boxes=box)
    sx, sy = 256 / 800, 171 / 534
    with torch.no_grad():
        ref = sam.model(image_embeddings=sam.embedding,
                        input_boxes=torch.tensor([[[100 * sx, 50 * sy, 500 * sx, 400 * sy]]]),
                        multimask_output=False)
    torch.testing.assert_close(low, ref.pred_masks[:, 0])
    assert masks.to_dense().shape == (1, 534, 800)
    np.testing.assert_allclose(iou, ref.iou_scores[:, 0, 0].numpy(), rtol=1e-5)


def test_detect_fused_runs_on_tiny_models(tiny_models, shared_images):
    pipe = Pipeline.load(tiny_models / "detect-fused.yaml", ModelPool())
    result = pipe.run(image=load_image(shared_images / "dog.jpg"))
    assert result.error is None, result.error
    out = result.outputs["detections"]
    assert len(out) and set(out.data["branch"]) <= {"attention", "grounding"}
    # the MLLM loaded once for both of its nodes, SAM once for both branches
    kinds = [k.kind for k in pipe.pool.keys()]
    assert kinds.count("mllm-transformers") == 1 and kinds.count("sam-hf") == 1


def test_vlpipe_run_detect_fused(tiny_models, shared_images):
    out = CliRunner().invoke(app, ["run", str(tiny_models / "detect-fused.yaml"),
                                   str(shared_images / "dog.jpg")])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["error"] is None and record["detections"]
    assert set(record["detections"][0]) == {"name", "bbox", "score", "segmentation"}
