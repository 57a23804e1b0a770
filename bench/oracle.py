"""Detect in the oracle world: is the pipeline right when its experts are right?

    python bench/oracle.py [--gt GT.json --images DIR] [--family llava|llava_next|qwen2_vl]
                           [--tiles 2x2] [--questions K] [--scenes N] [--json]

Runs the detect recipe with the oracle experts of ``oracle_world.py`` (ground-truth names,
ground-truth attention maps through the family's real layout, a SAM that returns the true
instance under the point) over a COCO/LVIS dataset through the production batch runner,
writes ``results.json`` and prints ``vlpipe eval``'s figures. Without ``--gt`` it generates
crowded synthetic scenes (``vlpipe.synthetic``). Then an ablation table: each fix of the
oracle-world issue turned off on its own, and all of them together (the old defaults).
With ``--json`` the last line is ``{"bbox": {"AP", "AR"}, "segm": {...}, "images": N,
"ablation": [[row, box AP, mask AP], ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from oracle_world import FAMILIES, oracle_pipeline  # noqa: E402

from vlpipe.eval import evaluate  # noqa: E402
from vlpipe.runner import BatchRunner, list_inputs, write_results  # noqa: E402
from vlpipe.synthetic import make_scenes  # noqa: E402

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


def run_oracle(gt: Path, images: Path | None, out: Path, **options) -> dict:
    """Run the oracle detect over the dataset into ``out`` and evaluate it."""
    entries, data = list_inputs(gt, images)
    summary = BatchRunner(oracle_pipeline(gt, images, **options), out).run(entries)
    if summary.failed:
        raise RuntimeError(f"{summary.failed} images failed: {summary.errors[:3]}")
    results = json.loads(write_results(out, data).read_text())
    return evaluate(data, results)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gt", type=Path, help="COCO/LVIS annotation file (default: synthetic scenes)")
    ap.add_argument("--images", type=Path, help="image root (default: beside --gt)")
    ap.add_argument("--family", choices=FAMILIES, default="llava")
    ap.add_argument("--tiles", default="2x2")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=20, help="synthetic scenes without --gt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        gt = args.gt or make_scenes(Path(tmp) / "scenes", args.scenes, args.seed)
        base = {"family": args.family, "tiles": args.tiles, "questions": args.questions,
                "rounds": args.rounds}
        rows = ABLATION[:1] if args.no_ablation else ABLATION
        table = []
        for k, (label, change) in enumerate(rows):
            metrics = run_oracle(gt, args.images, Path(tmp) / f"run{k}", **{**base, **change})
            table.append((label, metrics))
            if k == 0:
                n_images = len(list_inputs(gt, args.images)[0])
                print(f"oracle detect, family {args.family}, tiles {args.tiles}, "
                      f"{args.questions} question(s), {args.rounds} round(s), {n_images} images")
                for iou_type, values in metrics.items():
                    print(f"  {iou_type}: " + "  ".join(f"{m} {v:.3f}" for m, v in values.items()))
        print(f"\n| {'setting':<56} | box AP | box AR | mask AP |")
        print(f"| {'-' * 56} | ------ | ------ | ------- |")
        for label, m in table:
            print(f"| {label:<56} | {m['bbox']['AP']:6.3f} | {m['bbox']['AR']:6.3f} | "
                  f"{m.get('segm', {}).get('AP', float('nan')):7.3f} |")
    if args.json:
        head = table[0][1]
        print(json.dumps({"bbox": {k: head["bbox"][k] for k in ("AP", "AR")},
                          "segm": {k: head["segm"][k] for k in ("AP", "AR")},
                          "images": n_images,
                          "ablation": [[label, m["bbox"]["AP"], m["segm"]["AP"]]
                                       for label, m in table]}))


if __name__ == "__main__":
    main()
