""":func:`run`: a pipeline over image entries into an output folder's ``predictions.jsonl``.

It checks the pipeline (it must have a ``detections`` output) and the engine before anything is
written, holds the output folder's lock, skips the entries ``predictions.jsonl`` already holds
(:func:`~vlpipe.batch.predictions.pending`) and appends one line per image; only this process
writes them. An engine runs the pending images: :class:`~vlpipe.batch.LocalEngine` in this
process, :class:`~vlpipe.batch.RayEngine` on a pool of Ray actors that each build the pipeline
from the spec once. Both turn a batch of decoded images into lines with
:func:`~vlpipe.batch.records.batch_lines`: the executor isolates an image that a node fails on,
and an image that does not load is that image's failure.

An image's record is a function of the image, the pipeline and the weights alone: whatever the
batch size, the engine or the machine's load. The model nodes run each image on its own (no
padding or shapes shared with other images), and every engine computes with the run's
``threads`` torch CPU threads (:func:`~vlpipe.batch.torch_threads`), since a float sum split
over n threads rounds differently from one split over m.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from ..pipeline import PipelineSpec, resolve_pipeline
from .engine import Job, RunOptions, batch_pipeline
from .inputs import Entry
from .lock import lock_output
from .predictions import PREDICTIONS, append_line, pending
from .records import Line
from .summary import Progress, Summary


def run(spec: PipelineSpec | str | Path, params: dict[str, Any], entries: list[Entry],
        out: str | Path, options: RunOptions | None = None,
        progress: Progress | None = None) -> Summary:
    """Run a detect-style pipeline (input ``image``, output ``detections``) over ``entries``
    into ``out/predictions.jsonl``; ``spec`` is a validated spec, a recipe name or a pipeline
    file, ``params`` its params.

    Before anything is written: :class:`GraphError` for a bad pipeline or params,
    :class:`~vlpipe.batch.RayNotInstalled` for a Ray engine without Ray. Then
    :class:`~vlpipe.batch.OutputError` when ``out`` is not a writable folder or another run
    holds it, :class:`~vlpipe.batch.PredictionsError` for a damaged predictions file. Returns
    the engine's :class:`Summary`; raises :class:`~vlpipe.batch.MaxFailures` once
    ``max_failures`` images have failed (what was finished is kept)."""
    options = options if options is not None else RunOptions()
    if not isinstance(spec, PipelineSpec):
        spec = PipelineSpec.load(resolve_pipeline(spec))
    pipeline = batch_pipeline(spec, params, options.pool)
    options.engine.check(pipeline)
    out = Path(out)
    with lock_output(out):
        todo, skipped = pending(entries, out, options.retry_failed)
        summary = options.engine.summary_type(skipped=skipped)
        report = progress if progress is not None else (lambda done, total: None)
        report(0, len(todo))
        written = itertools.count(1)
        start = time.perf_counter()
        try:
            with open(out / PREDICTIONS, "a", encoding="utf-8") as sink:

                def write(line: Line) -> None:
                    append_line(sink, line.text)
                    report(next(written), len(todo))
                    summary.add(line, options.max_failures)

                job = Job(spec, dict(params), pipeline, out, options)
                options.engine.execute(job, todo, summary, write)
        finally:
            summary.seconds = time.perf_counter() - start
    return summary
