"""Detect in the oracle world: is the pipeline right when its experts are right?

    python bench/oracle.py [--gt GT.json --images DIR] [--family FAMILY]  # any registered family
                           [--recipe detect|detect-fused|detect-branches] [--tiles 2x2]
                           [--questions K] [--scenes N] [--seed S] [--locate-seed S]
                           [--kinds default,crowded] [--json]

Runs the detect recipe with the oracle experts of ``vlpipe/testing/oracle.py`` (ground-truth names,
ground-truth attention maps through the family's real layout, a SAM that returns the true
instance under the point and honours negative points) over a COCO/LVIS dataset through the
production batch runner, writes ``results.json`` and prints ``vlpipe eval``'s figures. Without
``--gt`` it generates synthetic scenes (``vlpipe.synthetic``) of each of ``--kinds`` and
reports each kind on its own: ``default`` (spaced rows, border and small objects) and
``crowded`` (touching rows, occlusion). Then an ablation table: each fix of the oracle-world
issue turned off on its own, and all of them together (the old defaults); for detect-fused,
which branch found each ground-truth instance. detect-branches (the MLLM's own points and boxes
from the oracle locator of ``vlpipe/testing/locate.py``, with misses and jitter) replaces the ablation
table by each branch alone against the fused branches, and counts per size which branches found
each instance.
With ``--json`` the last line is ``{KIND: {"bbox": {"AP", "AR"}, "segm": {...}, "images": N,
"ablation": [[row, box AP, mask AP], ...]}, ...}`` (KIND ``gt`` with ``--gt``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import supervision as sv  # noqa: E402

from vlpipe.agents.mllm.families import FAMILIES  # noqa: E402
from vlpipe.batch import list_inputs, run, write_results  # noqa: E402
from vlpipe.eval import evaluate  # noqa: E402
from vlpipe.agents.mllm.locate import BRANCHES  # noqa: E402
from vlpipe.io import load_image  # noqa: E402
from vlpipe.pipeline import Pipeline  # noqa: E402
from vlpipe.synthetic import SCENE_KINDS, make_scenes  # noqa: E402
from vlpipe.testing.locate import branches_spec  # noqa: E402
from vlpipe.testing.oracle import oracle_spec  # noqa: E402

OLD_MERGE = {"method": "nmm", "metric": "ios", "threshold": 0.5, "drop_fragments": False}
NEW_MERGE_NO_FRAGMENTS = {"method": "nms", "metric": "iou", "threshold": 0.5,
                          "drop_fragments": False}
ABLATION = [
    ("defaults", {}),
    ("centre crop, as the processor does (image_fit=native)", {"image_fit": "native"}),
    ("one instance per name (max_instances=1)", {"max_instances": 1}),
    ("merge NMM + IoS (old default)", {"merge": OLD_MERGE}),
    ("NMS without dropping tile fragments", {"merge": NEW_MERGE_NO_FRAGMENTS}),
    ("full image only (tiles=1x1)", {"tiles": "1x1"}),
    ("all fixes off (the old defaults)",
     {"image_fit": "native", "max_instances": 1, "merge": OLD_MERGE}),
]


BRANCH_ROWS = [("all four branches, fused", {"branches": ",".join(BRANCHES)}),
               *((f"{b} only", {"branches": b}) for b in BRANCHES),
               ("attention + grounding (as detect-fused)", {"branches": "attention,grounding"}),
               ("points + boxes + grounding", {"branches": "points,boxes,grounding"})]


def spec_for(gt: Path, images: Path | None, *, branches: str | None = None, locate_seed: int = 0,
             **options):
    """The oracle spec and params of ``options["recipe"]``; detect-branches takes ``branches``
    (comma-separated) and the oracle locator's seed."""
    if options.get("recipe") != "detect-branches":
        return oracle_spec(gt, images, **options)
    spec, params = branches_spec(gt, images, locate_seed=locate_seed,
                                 **{k: v for k, v in options.items() if k != "recipe"})
    return spec, {**params, "branches": branches or ",".join(BRANCHES)}


def run_oracle(gt: Path, images: Path | None, out: Path, **options) -> dict:
    """Run the oracle detect over the dataset into ``out`` and evaluate it."""
    entries, data = list_inputs(gt, images)
    summary = run(*spec_for(gt, images, **options), entries, out)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} images failed: {summary.errors[:3]}")
    results = json.loads(write_results(out, data).read_text())
    return evaluate(data, results)


def branch_report(gt: Path, images: Path | None, recipe: str = "detect-fused",
                  **options) -> dict[str, dict[str, int]]:
    """The fused recipe in the oracle world: for each ground-truth instance, which branch found
    it before the merge (a same-category detection with box IoU >= 0.5), by COCO size range.
    detect-fused: columns :data:`WHO`; detect-branches: :func:`branch_columns`."""
    spec, params = spec_for(gt, images, recipe=recipe, **options)
    pipe = Pipeline.from_spec(spec, **params)
    branches = BRANCHES if recipe == "detect-branches" else ("attention", "grounding")
    entries, data = list_inputs(gt, images)
    names = {c["id"]: c["name"] for c in data["categories"]}
    table: dict[str, dict[str, int]] = {}
    for entry in entries:
        fused = pipe.run(image=load_image(entry.path)).outputs["fused"]
        for a in (a for a in data["annotations"] if a["image_id"] == entry.image_id):
            x, y, w, h = a["bbox"]
            found = []
            for branch in branches:
                mine = fused[(fused.data["branch"] == branch)
                             & (fused.data["class_name"] == names[a["category_id"]])]
                iou = sv.box_iou_batch(np.array([[x, y, x + w, y + h]], np.float32), mine.xyxy)
                found.append(bool(len(mine)) and iou.max() >= 0.5)
            size = "small" if a["area"] < 32 ** 2 else "medium" if a["area"] < 96 ** 2 else "large"
            columns = (branch_columns(branches, found) if recipe == "detect-branches" else
                       [{(True, True): "both", (True, False): "attention only",
                         (False, True): "grounding only", (False, False): "neither"}[tuple(found)]])
            row = table.setdefault(size, dict.fromkeys(who_columns(recipe), 0))
            for column in columns:
                row[column] += 1
    return table


WHO = ("both", "attention only", "grounding only", "neither")


def who_columns(recipe: str) -> tuple[str, ...]:
    if recipe != "detect-branches":
        return WHO
    return (*BRANCHES, *(f"{b} alone" for b in BRANCHES), "2+ branches", "none")


def branch_columns(branches, found: list[bool]) -> list[str]:
    """The detect-branches columns one instance counts in: each branch that found it, "B alone"
    when only B did, "2+ branches", or "none"."""
    hits = [b for b, f in zip(branches, found) if f]
    return hits + ([f"{hits[0]} alone"] if len(hits) == 1 else
                   ["2+ branches"] if hits else ["none"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gt", type=Path, help="COCO/LVIS annotation file (default: synthetic scenes)")
    ap.add_argument("--images", type=Path, help="image root (default: beside --gt)")
    ap.add_argument("--family", choices=FAMILIES, default="llava")
    ap.add_argument("--recipe", choices=["detect", "detect-fused", "detect-branches"],
                    default="detect")
    ap.add_argument("--locate-seed", type=int, default=0,
                    help="detect-branches: seed of the oracle locator's misses and jitter")
    ap.add_argument("--tiles", default="2x2")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=20, help="synthetic scenes without --gt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(SCENE_KINDS),
                    help="synthetic scene kinds without --gt, comma-separated")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    kinds = ["gt"] if args.gt else args.kinds.split(",")
    for kind in kinds:
        if kind not in (*SCENE_KINDS, "gt"):
            ap.error(f"unknown scene kind {kind!r} (known: {', '.join(SCENE_KINDS)})")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            gt = args.gt or make_scenes(Path(tmp) / kind, args.scenes, args.seed, kind)
            report[kind] = report_scenes(args, kind, gt, Path(tmp) / f"{kind}-runs")
    if args.json:
        print(json.dumps(report))


def report_scenes(args, kind: str, gt: Path, tmp: Path) -> dict:
    """Run and print the defaults, the ablation table and (detect-fused) the branches on one
    dataset; returns its JSON summary."""
    base = {"family": args.family, "tiles": args.tiles, "questions": args.questions,
            "rounds": args.rounds, "recipe": args.recipe}
    if args.recipe == "detect-branches":
        base["locate_seed"] = args.locate_seed
        rows = BRANCH_ROWS[:1] if args.no_ablation else BRANCH_ROWS
    else:
        rows = ABLATION[:1] if args.no_ablation else ABLATION
    table = []
    for k, (label, change) in enumerate(rows):
        metrics = run_oracle(gt, args.images, tmp / f"run{k}", **{**base, **change})
        table.append((label, metrics))
        if k == 0:
            n_images = len(list_inputs(gt, args.images)[0])
            scenes = "" if kind == "gt" else f"{kind} scenes (seed {args.seed}), "
            print(f"\noracle {args.recipe}, family {args.family}, {scenes}tiles {args.tiles}, "
                  f"{args.questions} question(s), {args.rounds} round(s), {n_images} images")
            for iou_type, values in metrics.items():
                print(f"  {iou_type}: " + "  ".join(f"{m} {v:.3f}" for m, v in values.items()))
    print(f"\n| {'setting':<56} | box AP | box AR | mask AP |")
    print(f"| {'-' * 56} | ------ | ------ | ------- |")
    for label, m in table:
        print(f"| {label:<56} | {m['bbox']['AP']:6.3f} | {m['bbox']['AR']:6.3f} | "
              f"{m.get('segm', {}).get('AP', float('nan')):7.3f} |")
    branches = None
    if args.recipe != "detect":
        branches = branch_report(gt, args.images, **base)
        who = who_columns(args.recipe)
        print(f"\nwho found each ground-truth instance (before the merge):\n"
              f"| size   | {' | '.join(who)} |\n| ------ |{'|'.join('-' * (len(w) + 2) for w in who)}|")
        for size in ("small", "medium", "large"):
            if size in branches:
                print(f"| {size:<6} | " + " | ".join(f"{branches[size][w]:>{len(w)}}"
                                                     for w in who) + " |")
    head = table[0][1]
    return {"bbox": {k: head["bbox"][k] for k in ("AP", "AR")},
            "segm": {k: head["segm"][k] for k in ("AP", "AR")},
            "images": n_images,
            "ablation": [[label, m["bbox"]["AP"], m["segm"]["AP"]] for label, m in table],
            **({"branches": branches} if branches else {})}


if __name__ == "__main__":
    main()
