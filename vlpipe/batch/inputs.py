"""What batch runs read and write: the entries of an image, a folder or a COCO/LVIS annotation
file; ``predictions.jsonl`` (append-only, resumable), its records and pictures, the output
folder's lock, and ``results.json`` (:func:`vlpipe.batch.run` runs the pipeline).

Resume rule: an image whose ``file`` (and ``image_id``) already has a line in
``predictions.jsonl`` is skipped, unless that line says its file was missing and it is there
now. Each line is written with one ``write`` on an append-mode file and flushed; a torn last
line left by a kill is cut off when the run restarts, so nothing is lost but the image in flight
and nothing is duplicated. One run at a time writes to an output folder (``vlpipe.lock``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .io import IMAGE_SUFFIXES, NOT_FOUND, printable_name, safe_filename, scan_folder
from .results import annotate, heatmap_overlay, image_record

PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"
LOCK = "vlpipe.lock"


@dataclass(frozen=True)
class Entry:
    """One input image: ``file`` is its name in the results (relative to the input root, valid
    UTF-8); ``(file, image_id)`` identifies its record in ``predictions.jsonl``."""

    file: str
    path: Path
    image_id: int | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.file, self.image_id


@dataclass
class Inputs:
    """What an input names: the entries, the annotation dict (annotation-file inputs), and what
    a folder scan left out: files that are not images, earlier runs' output folders."""

    entries: list[Entry]
    gt: dict | None = None
    not_images: list[Path] = field(default_factory=list)
    output_folders: list[Path] = field(default_factory=list)


def collect_inputs(source: str | Path, images_root: str | Path | None = None,
                   out: str | Path | None = None) -> Inputs:
    """An image, a folder (recursive) or a COCO/LVIS json (+ ``images_root``) -> :class:`Inputs`.

    A folder scan leaves out ``out`` and every folder holding a vlpipe run's output, so outputs
    are never read back as inputs. ValueError / FileNotFoundError for an input that cannot be
    run at all (no images, duplicate image ids, no image under the root)."""
    source = Path(source)
    if source.is_dir():
        return _folder_inputs(source, out)
    if source.suffix.lower() == ".json":
        return _annotation_inputs(source, images_root)
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: '{source}'")
    if source.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"'{source}' is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "a folder, or a COCO/LVIS .json annotation file")
    return Inputs([Entry(printable_name(str(source)), source)])


def list_inputs(source: str | Path, images_root: str | Path | None = None
                ) -> tuple[list[Entry], dict | None]:
    """The entries of an input and its annotation dict (see :func:`collect_inputs`)."""
    inputs = collect_inputs(source, images_root)
    return inputs.entries, inputs.gt


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a vlpipe run's output (its lock file or predictions)."""
    return (folder / LOCK).is_file() or (folder / PREDICTIONS).is_file()


def _folder_inputs(source: Path, out: str | Path | None) -> Inputs:
    out_dir = Path(out).resolve() if out is not None else None
    scan = scan_folder(source, lambda d: d.resolve() == out_dir or is_output_folder(d))
    if not scan.images:
        others = f" ({len(scan.others)} other file(s), e.g. '{scan.others[0].name}')" \
            if scan.others else ""
        raise ValueError(f"no image files in folder '{source}'{others}; images are "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    entries = [Entry(printable_name(p.relative_to(source).as_posix()), p) for p in scan.images]
    return Inputs(entries, None, scan.others, scan.excluded)


def _annotation_inputs(source: Path, images_root: str | Path | None) -> Inputs:
    from .eval import load_gt

    gt = load_gt(source)
    root = Path(images_root) if images_root is not None else source.parent
    _check_unique_ids(source, gt["images"])
    entries = []
    for k, img in enumerate(gt["images"]):
        name = img.get("file_name") or _from_url(root, img.get("coco_url", ""))
        if not name:
            raise ValueError(f"{source}: image {img.get('id')} has no file_name or coco_url")
        entries.append(Entry(printable_name(name), _inside(root, name, source),
                             _image_id(source, k, img)))
    if entries and not any(e.path.is_file() for e in entries):
        raise ValueError(f"none of the {len(entries)} images of {source} is under the image "
                         f"root '{root}' (e.g. '{entries[0].path}'); pass the folder that holds "
                         "them with --images")
    return Inputs(entries, gt)


def _image_id(source: Path, k: int, image: dict) -> int:
    try:
        return int(image["id"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{source}: images[{k}] has no integer id") from None


def _check_unique_ids(source: Path, images: list[dict]) -> None:
    """ValueError naming the image ids listed more than once (their detections would merge)."""
    counts = Counter(img.get("id") for img in images)
    repeated = sorted((str(i) for i, n in counts.items() if n > 1))
    if repeated:
        raise ValueError(f"{source}: image id(s) listed more than once: "
                         f"{', '.join(repeated[:10])}{' ...' if len(repeated) > 10 else ''}")


def _from_url(root: Path, url: str) -> str:
    """The file of an image known by its ``coco_url`` only (LVIS): ``split/name`` (e.g.
    ``val2017/000000000139.jpg``; LVIS val mixes COCO's train and val images) when that exists
    under ``root``, else the bare name."""
    parts = [p for p in url.split("/") if p][-2:]
    if len(parts) == 2 and (root / parts[0] / parts[1]).is_file():
        return "/".join(parts)
    return parts[-1] if parts else ""


def _inside(root: Path, name: str, source: Path) -> Path:
    """root / name, refusing names that climb out of root (``..``, absolute). Checked on the
    names, not on resolved paths: an image root made of symbolic links is the user's choice."""
    climbs = os.path.normpath(name.replace("\\", "/"))
    if os.path.isabs(climbs) or climbs == ".." or climbs.startswith("../"):
        raise ValueError(f"{source}: file_name {name!r} points outside the image root")
    return root / os.path.normpath(name)


class PredictionsError(ValueError):
    """A line of ``predictions.jsonl`` that is not a record; the message names file and line."""


def read_predictions(path: Path, repair: bool = True) -> list[dict[str, Any]]:
    """One record per entry (``file``, ``image_id``) from a predictions file: the last complete
    line wins (a failure run again with ``retry_failed``); a torn last line (killed mid-write)
    is ignored and, with ``repair``, cut off. A damaged line elsewhere is a
    :class:`PredictionsError` naming its number."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    if repair and len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    latest: dict[tuple[str, int | None], dict[str, Any]] = {}
    for number, line in enumerate(good.splitlines(), 1):
        if line.strip():
            record = _parse_record(path, number, line)
            latest[record["file"], record.get("image_id")] = record
    return list(latest.values())


def _parse_record(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"'{path}' line {number} is not a JSON record ({exc}); "
                               "fix or delete that line and run again") from None
    if not isinstance(record, dict) or not {"file", "error", "detections"} <= set(record):
        raise PredictionsError(f"'{path}' line {number} is not a prediction record (it needs "
                               "file, error and detections); fix or delete that line")
    return record


def pending(entries: list[Entry], out_dir: str | Path,
            retry_failed: bool = False) -> tuple[list[Entry], int]:
    """Entries without a record in ``out_dir/predictions.jsonl``, those whose record says their
    file was missing when it is there now (a wrong image root, fixed), and with
    ``retry_failed`` every failure; and how many were skipped."""
    records = {(r["file"], r.get("image_id")): r
               for r in read_predictions(Path(out_dir) / PREDICTIONS)}

    def redo(entry: Entry) -> bool:
        error = records[entry.key]["error"]
        return error is not None and (retry_failed or (error.endswith(NOT_FOUND)
                                                       and entry.path.is_file()))

    todo = [e for e in entries if e.key not in records or redo(e)]
    return todo, len(entries) - len(todo)


class OutputError(RuntimeError):
    """The output folder cannot be used: not a folder, not writable, or another run holds it."""


_LOCKED: set[Path] = set()  # output folders this process holds


@contextmanager
def lock_output(out: str | Path) -> Iterator[Path]:
    """Create ``out`` if needed and hold its lock file (``out/vlpipe.lock``, flock: released
    when the process ends, even killed) for the ``with`` block; re-entrant in one process.
    Raises :class:`OutputError` when ``out`` is a file, is not writable, or another run holds
    it."""
    out = Path(out)
    if out.resolve() in _LOCKED:
        yield out
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a+", encoding="utf-8")
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"--out '{out}' is not a folder") from None
    except OSError as exc:
        raise OutputError(f"cannot write to --out '{out}': {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise OutputError(f"another vlpipe run is writing to '{out}' (pid "
                              f"{handle.read().strip() or '?'}); wait for it to finish or use "
                              "another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _LOCKED.add(out.resolve())
        try:
            yield out
        finally:
            _LOCKED.discard(out.resolve())


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
    save_pictures(out, file, image, outcome.outputs, save_vis, save_attention)
    return image_record(file, image_id, hw, outcome.outputs["detections"])


def save_pictures(out: Path, file: str, image: np.ndarray, outputs: dict[str, Any],
                  save_vis: bool, save_attention: bool) -> list[Path]:
    """The annotated image (``out/vis``) and attention overlays (``out/attention``) of entry
    ``file`` when asked and the outputs have them; returns the files written."""
    written = []
    if save_vis and outputs.get("detections") is not None:
        path = out / "vis" / output_name(file, ".jpg")
        save_image(path, annotate(image, outputs["detections"]))
        written.append(path)
    if save_attention and outputs.get("maps"):
        written += save_attention_maps(out / "attention", file, image, outputs["maps"])
    return written


def output_name(file: str, suffix: str) -> str:
    """A safe, collision-free flat file name for an output derived from entry ``file``: its
    file name plus a hash of the whole entry name (``val/a b.jpg`` -> ``a_b-<8 hex>.jpg``)."""
    digest = hashlib.sha1(file.encode("utf-8")).hexdigest()[:8]
    return f"{safe_filename(PurePath(file).stem)}-{digest}{suffix}"


def save_image(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)


def save_attention_maps(folder: Path, file: str, image: np.ndarray, maps) -> list[Path]:
    """One heat-map overlay per object map (full-image views only); returns the files."""
    from .agents.points import resize_map

    written = []
    for k, m in enumerate(x for x in maps if x.view == 0):
        heat = resize_map(m.map, m.region, image.shape[:2])
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else heat * 0
        path = folder / output_name(file, f"-{k:03d}-{safe_filename(m.name)}.jpg")
        save_image(path, heatmap_overlay(image, heat))
        written.append(path)
    return written


def write_results(out_dir: str | Path, gt: dict, clip: str | None = None, top_k: int = 1) -> Path:
    """``results.json`` (COCO/LVIS results) from ``predictions.jsonl``: names mapped to the
    annotation file's categories (exact/synonym match, then CLIP text similarity if ``clip``)."""
    from .agents.vocabulary import VocabularyMapper, clip_text_encoder
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
