"""Batch runs: images from a file, a folder or a COCO/LVIS annotation file, through a pipeline,
into ``predictions.jsonl`` (append-only, resumable) and ``results.json``.

Resume rule: an image whose ``file`` already has a line in ``predictions.jsonl`` is skipped. Each
line is written with one ``write`` on an append-mode file and flushed; a torn last line left by a
kill is cut off when the run restarts, so nothing is lost but the image in flight and nothing is
duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import IMAGE_SUFFIXES, iter_image_files, load_image, safe_filename
from .pipeline import Pipeline, prefetch
from .results import annotate, heatmap_overlay, image_record

PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"


@dataclass(frozen=True)
class Entry:
    """One input image: ``file`` is its key in the results (relative to the input root)."""

    file: str
    path: Path
    image_id: int | None = None


def list_inputs(source: str | Path, images_root: str | Path | None = None) -> tuple[list[Entry], dict | None]:
    """An image, a folder (recursive) or a COCO/LVIS json (+ ``images_root``) -> entries, and the
    annotation dict when the input was one."""
    source = Path(source)
    if source.is_dir():
        return [Entry(p.relative_to(source).as_posix(), p) for p in iter_image_files(source)], None
    if source.suffix.lower() == ".json":
        from .eval import load_gt

        gt = load_gt(source)
        root = Path(images_root) if images_root is not None else source.parent
        entries = []
        for img in gt["images"]:
            name = img.get("file_name") or _from_url(root, img.get("coco_url", ""))
            if not name:
                raise ValueError(f"{source}: image {img.get('id')} has no file_name or coco_url")
            entries.append(Entry(name, _inside(root, name, source), int(img["id"])))
        return entries, gt
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: '{source}'")
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"'{source}' is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "a folder, or a COCO/LVIS .json annotation file")
    return [Entry(str(source), source)], None


def _from_url(root: Path, url: str) -> str:
    """The file of an image known by its ``coco_url`` only (LVIS): ``split/name`` (e.g.
    ``val2017/000000000139.jpg``; LVIS val mixes COCO's train and val images) when that exists
    under ``root``, else the bare name."""
    parts = [p for p in url.split("/") if p][-2:]
    if len(parts) == 2 and (root / parts[0] / parts[1]).is_file():
        return "/".join(parts)
    return parts[-1] if parts else ""


def _inside(root: Path, name: str, source: Path) -> Path:
    """root / name, refusing names that climb out of root."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{source}: file_name {name!r} points outside the image root")
    return path


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """One record per file from a predictions file: the last complete line for a file wins (a
    failure run again with ``retry_failed``); a torn last line (killed mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    latest: dict[str, dict[str, Any]] = {}
    for line in good.splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["file"]] = record
    return list(latest.values())


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds else 0.0

    def add(self, record: dict[str, Any], max_failures: int | None = None) -> None:
        """Count one written record; raise :class:`MaxFailures` past ``max_failures``."""
        if record["error"] is None:
            self.done += 1
            return
        self.failed += 1
        self.errors.append(f"{record['file']}: {record['error']}")
        if max_failures is not None and self.failed > max_failures:
            raise MaxFailures(f"stopped after {self.failed} failures "
                              f"(--max-failures {max_failures})", self)


class MaxFailures(RuntimeError):
    """Raised by :meth:`BatchRunner.run` past ``max_failures``; ``summary`` is the run so far."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


class BatchRunner:
    """Runs a detect-style pipeline (input ``image``, output ``detections``) over entries."""

    def __init__(self, pipeline: Pipeline, out_dir: str | Path, *, batch_size: int = 4,
                 max_failures: int | None = None, save_vis: bool = False,
                 save_attention: bool = False, retry_failed: bool = False,
                 prefetch_depth: int = 8) -> None:
        self.pipeline = pipeline
        self.out = Path(out_dir)
        self.batch_size, self.max_failures = batch_size, max_failures
        self.save_vis, self.save_attention = save_vis, save_attention
        self.retry_failed = retry_failed
        self.prefetch_depth = prefetch_depth

    def run(self, entries: list[Entry], progress=None) -> Summary:
        """Process every pending entry; ``progress(n)`` is called after each image."""
        self.out.mkdir(parents=True, exist_ok=True)
        todo, skipped = pending(entries, self.out, self.retry_failed)
        summary = Summary(skipped=skipped)
        start = time.perf_counter()
        try:
            with open(self.out / PREDICTIONS, "a", encoding="utf-8") as sink:
                for entry, image, outcome in self._results(todo):
                    record = make_record(entry.file, entry.image_id, image, outcome, self.out,
                                         self.save_vis, self.save_attention)
                    append_record(sink, record)
                    if progress is not None:
                        progress(1)
                    summary.add(record, self.max_failures)
        finally:
            summary.seconds = time.perf_counter() - start
        return summary

    def _load(self, entries: list[Entry]) -> Iterator[tuple[Entry, np.ndarray | None, str | None]]:
        for entry in entries:
            try:
                yield entry, load_image(entry.path), None
            except (ValueError, OSError) as exc:
                yield entry, None, str(exc)

    def _results(self, entries: list[Entry]):
        """(entry, image, pipeline Result or load error) in input order, batched."""
        batch = []
        for loaded in prefetch(self._load(entries), self.prefetch_depth):
            batch.append(loaded)
            if len(batch) == self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        yield from self._run_batch(batch)

    def _run_batch(self, batch):
        ok = [(e, img) for e, img, err in batch if err is None]
        results = iter(self.pipeline.run_batch([{"image": img} for _, img in ok]) if ok else [])
        for entry, image, error in batch:
            yield entry, image, (error if error is not None else next(results))


def pending(entries: list[Entry], out_dir: str | Path,
            retry_failed: bool = False) -> tuple[list[Entry], int]:
    """Entries not yet in ``out_dir/predictions.jsonl`` (with ``retry_failed``, also those whose
    record is a failure), and how many were skipped."""
    done = {rec["file"] for rec in read_predictions(Path(out_dir) / PREDICTIONS)
            if not (retry_failed and rec["error"] is not None)}
    todo = [e for e in entries if e.file not in done]
    return todo, len(entries) - len(todo)


def append_record(sink, record: dict[str, Any]) -> None:
    """One JSON line in one ``write``, flushed and fsynced."""
    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    sink.flush()
    os.fsync(sink.fileno())


def make_record(file: str, image_id: int | None, image: np.ndarray | None, outcome,
                out: Path, save_vis: bool = False, save_attention: bool = False) -> dict[str, Any]:
    """The JSON line for one image from a pipeline Result or a load-error message; writes the
    annotated image / attention overlays when asked."""
    hw = None if image is None else image.shape[:2]
    if isinstance(outcome, str) or outcome.error is not None:
        error = outcome if isinstance(outcome, str) else outcome.error
        return image_record(file, image_id, hw, None, error)
    dets = outcome.outputs["detections"]
    if save_vis:
        save_image(out / "vis" / output_name(file, ".jpg"), annotate(image, dets))
    if save_attention and outcome.outputs.get("maps"):
        save_attention_maps(out / "attention", file, image, outcome.outputs["maps"])
    return image_record(file, image_id, hw, dets)


def output_name(file: str, suffix: str) -> str:
    """A safe, collision-free flat file name for an output derived from dataset entry ``file``:
    ``a/b.jpg`` -> ``a_b-<8 hex of the entry's hash>.jpg``."""
    digest = hashlib.sha1(file.encode("utf-8")).hexdigest()[:8]
    return f"{safe_filename(str(Path(file).with_suffix('')))}-{digest}{suffix}"


def save_image(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def save_attention_maps(folder: Path, file: str, image: np.ndarray, maps) -> None:
    """One heat-map overlay per object map (full-image views only)."""
    from .agents.points import resize_map

    for k, m in enumerate(x for x in maps if x.view == 0):
        heat = resize_map(m.map, m.region, image.shape[:2])
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else heat * 0
        save_image(folder / output_name(file, f"-{k:03d}-{safe_filename(m.name)}.jpg"),
                   heatmap_overlay(image, heat))


def write_results(out_dir: str | Path, gt: dict, clip: str | None = None, top_k: int = 1) -> Path:
    """``results.json`` (COCO/LVIS results) from ``predictions.jsonl``: names mapped to the
    annotation file's categories (exact/synonym match, then CLIP text similarity if ``clip``)."""
    from .agents.names import VocabularyMapper, clip_text_encoder
    from .results import coco_results

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
