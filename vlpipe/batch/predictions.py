"""``predictions.jsonl``: one JSON line per image, append-only and resumable.

Resume rule: an image whose ``file`` (and ``image_id``) already has a line is skipped, unless
that line says its file was missing and it is there now. Each line is written with one
``write`` on an append-mode file, flushed and fsynced; a torn last line left by a kill is cut
off when the run restarts, so nothing is lost but the image in flight and nothing is
duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import NOT_FOUND

if TYPE_CHECKING:
    from .inputs import Entry

PREDICTIONS = "predictions.jsonl"


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


def record_line(record: dict[str, Any]) -> str:
    """A record as its line of ``predictions.jsonl`` (JSON, non-ASCII kept as is, newline)."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def append_line(sink, line: str) -> None:
    """One line in one ``write``, flushed and fsynced."""
    sink.write(line)
    sink.flush()
    os.fsync(sink.fileno())
