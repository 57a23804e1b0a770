"""``results.json``: a run's predictions as COCO/LVIS results, names mapped to the annotation
file's categories."""

from __future__ import annotations

import json
from pathlib import Path

from .predictions import PREDICTIONS, read_predictions

RESULTS = "results.json"


def write_results(out_dir: str | Path, gt: dict, clip: str | None = None, top_k: int = 1) -> Path:
    """``results.json`` (COCO/LVIS results) from ``predictions.jsonl``: names mapped to the
    annotation file's categories (exact/synonym match, then CLIP text similarity if ``clip``)."""
    from ..agents.names.vocabulary import VocabularyMapper, clip_text_encoder
    from ..results import coco_results

    out = Path(out_dir)
    records = read_predictions(out / PREDICTIONS)
    names = sorted({d["name"] for rec in records for d in rec["detections"]})
    encoder = clip_text_encoder(clip) if clip else None
    mapper = VocabularyMapper(gt["categories"], text_encoder=encoder, top_k=top_k)
    mapping = dict(zip(names, mapper.map(names))) if names else {}
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text(json.dumps(coco_results(records, mapping)))
    tmp.replace(out / RESULTS)
    return out / RESULTS
