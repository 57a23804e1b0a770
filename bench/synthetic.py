"""VL-SAM's scale model measured: a tiny LLaVA and a tiny SAM, both trained on synthetic scenes.

    python bench/synthetic.py [--mllm tests/data/tiny_llava_shapes]
                              [--sam tests/data/tiny_sam_shapes/sam_tiny.safetensors | oracle]
                              [--sam-variant tiny_512_deep]
                              [--scenes 20] [--seed 0] [--questions 10] [--read preceding] [--json]

On held-apart scenes of :mod:`vlpipe.synthetic` (``make_scenes`` with ``--seed``; both models
were trained on scenes of other random streams, ``bench/train_tiny.py`` and
``bench/train_tiny_sam.py``), the detect recipe runs with the trained MLLM — its own answers,
its own attention maps through the production ``mllm_objects`` / ``attention_maps`` nodes — and
the trained SAM through the ``official`` backend (``--sam-variant``; ``--sam oracle``: the
oracle SAM of :mod:`vlpipe.testing.oracle`, the true instance under the positive point), through
the production batch runner, results and ``vlpipe eval``. First the SAM alone:
``train_tiny_sam.interactive_ious`` (one point, its mask fed back, a negative point on a spill,
corrective rounds, the ceiling its input size sets). Then the MLLM's own ``where`` task
(``where_answers``: "where is the disc ?" for each category of each full image, the first box of
the answer against the category's instances), which tells a model that does not locate what it
names from a read-out that misses.
Then it prints

* pointing accuracy: the share of named objects (one per map: a name in one view's answer)
  whose first positive point (the SAM node's, among the map's cells inside the view) falls
  inside an instance of that name, against chance (that name's share of the view's area; 0
  for a name with no instance there);
* name recall: the share of (view, question, category visible in the view) named in the answer
  (visible: as the training labels, ``train_tiny.view_names``), and name precision;
* the mean row offset of those points from the nearest instance of their name (in view heights,
  > 0: below it), which shows a pull towards the last image rows;
* box / mask AP (LVIS) and the VL-SAM ablation chain, each step adding one part to the last,
  with the maps read from the flow's rows given by ``--read`` (``attention_maps``' ``read``:
  the name's tokens or the token before it, which predicted the name); then the recipe once
  more with the other read-out, and once with each SAM mask cut to its largest region
  (``largest_region``, a switch of the recipe that it leaves off).

With ``--json`` the last line is ``{"pointing", "chance", "name_recall", "name_precision",
"bbox": {"AP", "AR"}, "segm": {...}, "ablation": [[step, box AP], ...], "table": [[step,
pointing, chance, row offset, box AP, mask AP], ...], "sam": {...}, "where": {"questions",
"mean_iou", "iou50", "distinct"}}``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import supervision as sv

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_tiny import GRID, POINTS, WHERE, view_names  # noqa: E402
# (importing it registers segment-anything's tiny variants: vlpipe.tiny.sam)
from train_tiny_sam import (MODEL as SAM_MODEL, VARIANT as SAM_VARIANT,  # noqa: E402
                            VARIANTS as SAM_VARIANTS, interactive_ious, load_trained)

from vlpipe.agents.mllm.families import get_family  # noqa: E402
from vlpipe.agents.mllm.model import Mllm  # noqa: E402
from vlpipe.agents.mllm.nodes import AttentionMapNode, ObjectListNode  # noqa: E402
from vlpipe.agents.sam.points import (inside_cells, instance_prompts,  # noqa: E402
                                      points_to_image)
from vlpipe.batch import list_inputs, run, write_results  # noqa: E402
from vlpipe.eval import evaluate  # noqa: E402
from vlpipe.io import load_image  # noqa: E402
from vlpipe.pipeline import PipelineSpec, registry, resolve_pipeline  # noqa: E402
from vlpipe.results import decode_mask  # noqa: E402
from vlpipe.synthetic import make_scenes  # noqa: E402
from vlpipe.testing.oracle import OracleWorld  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_llava_shapes"
# VL-SAM's ablation on CODA (paper, Table 3): AP after each step; "flow" there is without
# regularization (0.1), "+ regularization" 10.1.
PAPER = {"last-layer mean attention": 2.2, "+ head weights": None, "+ flow": 0.1,
         "+ regularization": 10.1, "+ negative points": 12.3, "+ iterative refinement": 14.1,
         "+ tiles": 27.3, "+ question ensemble": 40.1}
READ_OTHER = {"name": "preceding", "preceding": "name", "both": "name"}


def chain(questions: int, read: str) -> list[tuple[str, dict]]:
    """The VL-SAM ablation chain with the maps read from ``read`` rows: each step's full
    settings (the last is the recipe's), then the recipe with the other read-out, and with each
    SAM mask cut to its largest region (``largest_region``, off in the recipe)."""
    steps = [("last-layer mean attention", {}), ("+ head weights", {"head_weighting": True}),
             ("+ flow", {"flow": True}), ("+ regularization", {"regularize": True}),
             ("+ negative points", {"n_negative": 1}), ("+ iterative refinement", {"rounds": 3}),
             ("+ tiles", {"tiles": "2x2"}), ("+ question ensemble", {"questions": questions})]
    settings = {"head_weighting": False, "flow": False, "regularize": False, "n_negative": 0,
                "rounds": 1, "tiles": "1x1", "questions": 1, "read": read}
    out = []
    for label, change in steps:
        settings = {**settings, **change}
        out.append((label, settings))
    other = READ_OTHER[read]
    return out + [(f"the recipe, read: {other}", {**settings, "read": other}),
                  ("the recipe, largest region", {**settings, "largest_region": True})]


@dataclass
class Pointing:
    """What the scoring nodes saw: per map whether its point hit and its chance; per answer the
    names against the visible categories."""

    hits: list[bool] = field(default_factory=list)
    chance: list[float] = field(default_factory=list)
    row_offset: list[float] = field(default_factory=list)
    named_visible: int = 0
    visible: int = 0
    named: int = 0

    def summary(self) -> dict:
        return {"pointing": float(np.mean(self.hits)) if self.hits else 0.0,
                "chance": float(np.mean(self.chance)) if self.chance else 0.0,
                "name_recall": self.named_visible / max(1, self.visible),
                "name_precision": self.named_visible / max(1, self.named), "maps": len(self.hits),
                "row_offset": float(np.mean(self.row_offset)) if self.row_offset else 0.0}


RECORDS: dict[str, Pointing] = {}


class RegisteredObjectListNode(ObjectListNode):
    """The production ``mllm_objects`` node that first makes every view known to the oracle
    world (so the oracle SAM finds its ground truth) and records name recall."""

    def __init__(self, name: str, *, gt: str, record: str, **kw) -> None:
        super().__init__(name, **kw)
        self.world, self.record = OracleWorld.open(gt), record

    def run(self, batch):
        for item in batch:
            self.world.register(item["views"])
        out = super().run(batch)
        rec = RECORDS.setdefault(self.record, Pointing())
        for item, result in zip(batch, out):
            for obj in result["objects"]:
                view = item["views"][obj.view]
                visible = set(view_names(self.world.instances(view.image),
                                         max(view.image.shape[:2])))
                named = {n for n, _ in obj.names}
                rec.visible += len(visible)
                rec.named += len(named)
                rec.named_visible += len(visible & named)
        return out


class PointingMapsNode(AttentionMapNode):
    """The production ``attention_maps`` node, scoring each map's first positive point (the
    SAM node's first prompt for it) against the ground truth of its view."""

    def __init__(self, name: str, *, gt: str, record: str, **kw) -> None:
        super().__init__(name, **kw)
        self.world, self.record = OracleWorld.open(gt), record

    def run(self, batch):
        out = super().run(batch)
        rec = RECORDS.setdefault(self.record, Pointing())
        for item, result in zip(batch, out):
            for m in result["maps"]:
                view = item["views"][m.view].image
                hit, chance, dy = point_hit(m, self.world.instances(view), view.shape[:2])
                rec.hits.append(hit)
                rec.chance.append(chance)
                if dy is not None:
                    rec.row_offset.append(dy)
        return out


def point_hit(m, instances: list[tuple[str, np.ndarray]], hw: tuple[int, int]
              ) -> tuple[bool, float, float | None]:
    """(the map's first positive point, as the SAM node prompts it (among the cells inside the
    view), lies in an instance of its name, that name's share of the view's area, the point's
    row minus the nearest such instance's centroid row in view heights: > 0 below it; None
    without an instance)."""
    mine = [mask for name, mask in instances if name == m.name]
    if not mine:
        return False, 0.0, None
    union = np.logical_or.reduce(mine)
    grid = tuple(m.map.shape)
    prompt = instance_prompts(m.map, valid=inside_cells(grid, m.region, hw))[0]
    x, y = points_to_image(prompt, grid, m.region)[0]
    h, w = hw
    inside = 0 <= x < w and 0 <= y < h and bool(union[int(y), int(x)])
    centroids = [np.argwhere(mask).mean(0) + 0.5 for mask in mine]  # (row, col) pixel centres
    nearest = min(centroids, key=lambda c: (c[0] - y) ** 2 + (c[1] - x) ** 2)
    return inside, float(union.mean()), float((y - nearest[0]) / h)


registry.register("registered_mllm_objects", RegisteredObjectListNode)
registry.register("pointing_attention_maps", PointingMapsNode)


def synthetic_spec(gt: Path, mllm: str | Path, record: str, *, sam: str | Path = SAM_MODEL,
                   sam_variant: str = SAM_VARIANT, head_weighting: bool = True, flow: bool = True,
                   regularize: bool = True, n_negative: int = 1, rounds: int = 3,
                   tiles: str = "2x2", questions: int = 10, read: str = "name",
                   largest_region: bool = False) -> tuple[PipelineSpec, dict]:
    """The detect recipe's spec, and its params, with the trained MLLM (recording pointing and
    names under ``record``) and the SAM checkpoint ``sam`` (``official`` backend, variant
    ``sam_variant``; "oracle": the oracle SAM); the other keyword arguments are the ablation
    chain's switches."""
    OracleWorld.open(gt)
    spec = PipelineSpec.load(resolve_pipeline("detect"))
    objects, maps, sam_node = spec.nodes["objects"], spec.nodes["maps"], spec.nodes["sam"]
    objects.type, maps.type = "registered_mllm_objects", "pointing_attention_maps"
    objects.params.update(gt=str(gt), record=record)
    maps.params.update(gt=str(gt), record=record, head_weighting=head_weighting, flow=flow,
                       regularize=regularize, read=read)
    sam_node.params["n_negative"] = n_negative
    spec.name = "detect-synthetic"
    segmenter = (dict(sam=str(Path(gt).resolve()), sam_backend="oracle") if str(sam) == "oracle"
                 else dict(sam=str(sam), sam_backend="official", sam_variant=sam_variant))
    return spec, dict(mllm=str(mllm), **segmenter, tiles=tiles, questions=questions,
                      rounds=rounds, largest_region=largest_region, max_new_tokens=24,
                      device="cpu", dtype="float32")


# the first box of an answer as train_tiny.box_text writes it: LLaVA "[0.12, 0.30, 0.45, 0.78]",
# Qwen2-VL "(120,300),(450,780)" (spaces dropped first)
FIRST_BOX = {"fractions": (re.compile(r"\[(\d\.\d+),(\d\.\d+),(\d\.\d+),(\d\.\d+)\]"), 1.0),
             "thousandths": (re.compile(r"\((\d+),(\d+)\),\((\d+),(\d+)\)"), 1000.0)}


def best_iou(box: np.ndarray, boxes: list[np.ndarray]) -> float:
    """The highest IoU of an x0, y0, x1, y1 ``box`` with any of ``boxes``."""
    return float(sv.box_iou_batch(np.asarray([box], np.float64), np.stack(boxes)).max())


def first_box(text: str, units: str, frame_wh: tuple[int, int], offset: tuple[int, int]
              ) -> np.ndarray | None:
    """The first box of an answer written as ``train_tiny.box_text`` writes it, in ``units``
    ("fractions" or "thousandths") of a (w, h) frame in which the image lies at ``offset``
    (x, y) -> x0, y0, x1, y1 in the image's pixels; None without a box."""
    pattern, scale = FIRST_BOX[units]
    found = pattern.search(text.replace(" ", ""))
    if found is None:
        return None
    (dx, dy), frame = offset, np.array(frame_wh * 2) / scale
    return np.array([float(v) for v in found.groups()]) * frame - [dx, dy, dx, dy]


def images_with_instances(gt: Path) -> Iterator[tuple[np.ndarray, dict[str, list[dict]]]]:
    """(image (h, w, 3) uint8, {name: its instances' COCO annotations}) of each image of the
    COCO file ``gt``."""
    data = json.loads(Path(gt).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    for image_info in data["images"]:
        instances: dict[str, list[dict]] = {}
        for a in data["annotations"]:
            if a["image_id"] == image_info["id"]:
                instances.setdefault(names[a["category_id"]], []).append(a)
        yield load_image(Path(gt).parent / image_info["file_name"]), instances


def where_answers(gt: Path, mllm: str | Path) -> dict:
    """The ``where`` task the MLLM was trained on, asked on the held-apart full images: "where is
    the disc ?" for each category of each image; the answer's first box (in the family's units of
    its input frame: LLaVA's padded square, Qwen2-VL's image) against that category's instances.

    Returns {"questions", "mean_iou" (with the best-matching instance; 0 for an answer without
    a box), "iou50" (share with IoU >= 0.5), "distinct" (distinct first boxes: 1 when the model
    answers every question with the same box)}."""
    model = Mllm.load(str(mllm), "cpu", "float32")
    units = get_family(model.family).boxes
    ious, answers = [], set()
    for image, instances in images_with_instances(gt):
        boxes = {name: [np.array([x, y, x + w, y + h]) for x, y, w, h in (a["bbox"] for a in found)]
                 for name, found in instances.items()}
        fitted, offset = model.fit(image)
        questions = sorted(boxes)
        gens = model.generate([image] * len(questions),
                              [model.prompt(WHERE.format(n)) for n in questions], 32)
        for name, gen in zip(questions, gens):
            box = first_box(gen.text, units, (fitted.shape[1], fitted.shape[0]), offset)
            if box is not None:
                answers.add(tuple(box))
            ious.append(0.0 if box is None else best_iou(box, boxes[name]))
    return {"questions": len(ious), "mean_iou": float(np.mean(ious)),
            "iou50": float(np.mean(np.array(ious) >= 0.5)), "distinct": len(answers)}


def answer_cells(text: str) -> list[tuple[str, int, int]]:
    """(name, row, column) of each "name 37" of an answer to ``POINTS``: the cell of row 3,
    column 7 of a ``GRID`` x ``GRID`` grid over the model's frame."""
    return [(name, int(row), int(col))
            for name, row, col in re.findall(r"([a-z]+) (\d)(\d)\b", text)]


def cells_on(mask: np.ndarray, frame_wh: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """(GRID, GRID) bool: the cells of the grid over the model's (w, h) frame that hold a pixel
    of ``mask`` (h, w), the image lying at ``offset`` in the frame."""
    (fw, fh), (ox, oy) = frame_wh, offset
    ys, xs = np.nonzero(mask)
    on = np.zeros((GRID, GRID), bool)
    rows, cols = (ys + oy) * GRID // fh, (xs + ox) * GRID // fw
    on[rows.clip(0, GRID - 1), cols.clip(0, GRID - 1)] = True
    return on


def point_answers(gt: Path, mllm: str | Path) -> dict | None:
    """The ``points`` task, for a model trained on it (its vocabulary has "point"), asked on
    the held-apart full images: "point to the objects ." Each answered cell against the
    instances of its name.

    Returns {"images", "points", "hits" (share of the cells that hold a pixel of an instance of
    their name), "chance" (the mean share of the image's cells that do), "distinct" (distinct
    answers)}, or None for a model without the task."""
    model = Mllm.load(str(mllm), "cpu", "float32")
    if "point" not in model.tokenizer.get_vocab():
        return None
    hits, chance, answers, images = [], [], set(), 0
    for image, instances in images_with_instances(gt):
        images += 1
        fitted, offset = model.fit(image)
        frame = (fitted.shape[1], fitted.shape[0])
        on = {name: np.logical_or.reduce([cells_on(decode_mask(a["segmentation"]), frame, offset)
                                          for a in found]) for name, found in instances.items()}
        image_cells = cells_on(np.ones(image.shape[:2], bool), frame, offset)
        text = model.generate([image], [model.prompt(POINTS)], 64)[0].text
        answers.add(text)
        for name, row, col in answer_cells(text):
            named = on.get(name, np.zeros((GRID, GRID), bool))
            hits.append(bool(named[row, col]))
            chance.append(named.sum() / image_cells.sum())
    return {"images": images, "points": len(hits),
            "hits": float(np.mean(hits)) if hits else 0.0,
            "chance": float(np.mean(chance)) if chance else 0.0, "distinct": len(answers)}


def run_synthetic(gt: Path, out: Path, mllm: str | Path, **settings) -> tuple[dict, dict]:
    """(vlpipe eval's metrics, pointing summary) of one run over the dataset into ``out``."""
    entries, data = list_inputs(gt)
    record = str(out)
    RECORDS.pop(record, None)
    summary = run(*synthetic_spec(gt, mllm, record, **settings), entries, out)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} images failed: {summary.errors[:3]}")
    results = json.loads(write_results(out, data).read_text())
    return evaluate(data, results), RECORDS[record].summary()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mllm", default=str(MODEL), help="the trained model (bench/train_tiny.py)")
    ap.add_argument("--sam", default=str(SAM_MODEL),
                    help="the trained SAM checkpoint (bench/train_tiny_sam.py), or 'oracle'")
    ap.add_argument("--sam-variant", default=SAM_VARIANT,
                    help=f"its architecture: {', '.join(SAM_VARIANTS)}")
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--read", default="preceding", choices=sorted(READ_OTHER),
                    help="the flow's rows that make a name's map (attention_maps' read)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    rows, sam_ious = [], None
    with tempfile.TemporaryDirectory() as tmp:
        gt = make_scenes(Path(tmp) / "scenes", args.scenes, args.seed)
        if args.sam != "oracle":
            sam_ious = interactive_ious(load_trained(args.sam, args.sam_variant), gt)
            neg, boxes = sam_ious["negative_point"], sam_ious["one_point_boxes"]
            print(f"trained SAM alone, {sam_ious['instances']} instances: one point mIoU "
                  f"{sam_ious['one_point']:.3f}, its mask fed back "
                  f"{sam_ious['mask_feedback']:.3f}; "
                  f"a negative point on {neg['instances']} spilling masks "
                  + (f"{neg['before']:.3f} -> {neg['after']:.3f}" if neg["instances"] else "-")
                  + "; corrective rounds "
                  + " -> ".join(f"{v:.3f}" for v in sam_ious["corrective"])
                  + f"; no mask of its input size passes {sam_ious['ceiling']:.3f}; one point's "
                  f"boxes: IoU {boxes['box_iou']:.3f}, {boxes['fragmented']} masks in pieces, "
                  f"their largest region alone {boxes['largest_region']:.3f}", flush=True)
        where = where_answers(gt, args.mllm)
        print(f"its where task on the full images: {where['questions']} questions, first box's "
              f"mean IoU {where['mean_iou']:.3f}, IoU >= 0.5 for {where['iou50']:.3f}, "
              f"{where['distinct']} distinct first boxes", flush=True)
        points = point_answers(gt, args.mllm)
        if points is not None:
            print(f"its points task on the full images: {points['points']} points, "
                  f"{points['hits']:.3f} in a cell of an instance of their name (chance "
                  f"{points['chance']:.3f}), {points['distinct']} distinct answers of "
                  f"{points['images']}", flush=True)
        for k, (label, settings) in enumerate(chain(args.questions, args.read)):
            metrics, pointing = run_synthetic(gt, Path(tmp) / f"run{k}", args.mllm,
                                              sam=args.sam, sam_variant=args.sam_variant,
                                              **settings)
            rows.append((label, metrics, pointing))
            print(f"{label}: box AP {metrics['bbox']['AP']:.3f}, pointing "
                  f"{pointing['pointing']:.3f} (chance {pointing['chance']:.3f})", flush=True)
    label, full, pointing = rows[len(PAPER) - 1]  # the recipe, read as --read says
    segmenter = "oracle SAM" if args.sam == "oracle" else "trained SAM"
    print(f"\ntrained tiny MLLM ({Path(args.mllm).name}) + {segmenter}, {args.scenes} scenes "
          f"(seed {args.seed}), "
          f"tiles 2x2, {args.questions} questions, 3 rounds, read: {args.read}")
    print(f"  pointing accuracy {pointing['pointing']:.3f} vs chance {pointing['chance']:.3f} "
          f"({pointing['maps']} maps); name recall {pointing['name_recall']:.3f}, "
          f"precision {pointing['name_precision']:.3f}")
    for iou_type, values in full.items():
        print(f"  {iou_type}: " + "  ".join(f"{m} {v:.3f}" for m, v in values.items()))
    print(f"\n| {'step':<26} | pointing (chance) | row offset | box AP | mask AP "
          "| paper (CODA AP) |")
    print(f"| {'-' * 26} | ----------------- | ---------- | ------ | ------- | --------------- |")
    for label, m, p in rows:
        paper = "-" if PAPER.get(label) is None else f"{PAPER[label]:.1f}"
        print(f"| {label:<26} | {p['pointing']:.3f} ({p['chance']:.3f}) {'':<3}| "
              f"{p['row_offset']:+10.3f} | {m['bbox']['AP']:6.3f} | {m['segm']['AP']:7.3f} | "
              f"{paper:>15} |")
    if args.json:
        print(json.dumps({**{k: pointing[k] for k in ("pointing", "chance", "name_recall",
                                                      "name_precision")},
                          "bbox": {k: full["bbox"][k] for k in ("AP", "AR")},
                          "segm": {k: full["segm"][k] for k in ("AP", "AR")},
                          "ablation": [[label, m["bbox"]["AP"]]
                                       for label, m, _ in rows[:len(PAPER)]],
                          "table": [[label, p["pointing"], p["chance"], p["row_offset"],
                                     m["bbox"]["AP"], m["segm"]["AP"]] for label, m, p in rows],
                          "sam": sam_ious, "where": where, "points": points}))


if __name__ == "__main__":
    main()
