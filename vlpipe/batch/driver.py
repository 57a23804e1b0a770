"""The batch API: :func:`run` a pipeline over image entries into an output folder.

``run(spec, params, entries, out, options)`` checks the pipeline (it must have a ``detections``
output) and the engine before anything is written, holds the output folder's lock, skips the
entries ``predictions.jsonl`` already holds (:func:`vlpipe.runner.pending`) and appends one line
per image; only this process writes them. An engine runs the pending images:
:class:`LocalEngine` in this process, :class:`vlpipe.ray_runner.RayEngine` on a pool of Ray
actors that each build the pipeline from the spec once. Both turn a batch of decoded images into
records with :func:`batch_records`: the executor isolates an image that a node fails on, and an
image that does not load is that image's failure.

An image's record is a function of the image, the pipeline and the weights alone: whatever the
batch size, the engine or the machine's load. The model nodes run each image on its own (no
padding or shapes shared with other images), and every engine computes with the run's
``threads`` torch CPU threads (:func:`torch_threads`), since a float sum split over n threads
rounds differently from one split over m.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from .io import load_image
from .pipeline import (GraphError, ModelPool, Pipeline, PipelineSpec, Trace, prefetch,
                       resolve_pipeline)
from .runner import PREDICTIONS, Entry, append_record, lock_output, make_record, pending

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called with 0 before the first pending image, then after each."""


@dataclass
class Summary:
    """What a run did; ``trace`` holds the node timings of a local run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    trace: Trace | None = None

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds else 0.0

    def add(self, record: dict[str, Any], max_failures: int | None = None) -> None:
        """Count one written record; raise :class:`MaxFailures` once ``max_failures`` images
        have failed."""
        if record["error"] is None:
            self.done += 1
            return
        self.failed += 1
        self.errors.append(f"{record['file']}: {record['error']}")
        if max_failures is not None and self.failed >= max_failures:
            raise MaxFailures(f"stopped after {self.failed} failed image(s) "
                              f"(--max-failures {max_failures})", self)


class MaxFailures(RuntimeError):
    """Raised by :func:`run` once ``max_failures`` images have failed; ``summary`` is the run
    so far."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class Loaded:
    """One entry, decoded: its (H, W, 3) uint8 RGB image, or the error that stopped loading."""

    file: str
    image_id: int | None
    image: np.ndarray | None
    error: str | None = None


def load_entry(entry: Entry) -> Loaded:
    try:
        return Loaded(entry.file, entry.image_id, load_image(entry.path))
    except (ValueError, OSError) as exc:
        return Loaded(entry.file, entry.image_id, None, str(exc))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` for the block, then restored. The bytes of a
    CPU result depend on it (each thread sums its own share of a reduction), never on the
    load: a busy machine makes the same ``n`` threads slower, not different."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batch_records(pipeline: Pipeline, batch: list[Loaded], out: Path, save_vis: bool = False,
                  save_attention: bool = False) -> list[dict[str, Any]]:
    """The JSON records of ``batch``, in order: the images that loaded go through the pipeline
    in one ``run_batch`` (pictures saved under ``out`` when asked); an image that did not load
    is recorded with its error."""
    images = [item.image for item in batch if item.error is None]
    results = iter(pipeline.run_batch([{"image": image} for image in images]) if images else [])
    return [make_record(item.file, item.image_id, item.image,
                        item.error if item.error is not None else next(results),
                        out, save_vis, save_attention) for item in batch]


def batch_pipeline(spec: PipelineSpec, params: dict[str, Any],
                   pool: ModelPool | None = None) -> Pipeline:
    """``spec`` built with ``params`` (no model loaded); :class:`GraphError` unless it takes one
    input, ``image``, and has a ``detections`` output: what every batch run gives and writes."""
    pipeline = Pipeline.from_spec(spec, pool, **params)
    graph, problems = pipeline.graph, []
    if graph.inputs != {"image": "image"}:
        problems.append(f"pipeline {spec.name!r} takes {', '.join(map(repr, graph.inputs))}: "
                        "batch runs give it one input, 'image'")
    if "detections" not in graph.outputs:
        problems.append(f"pipeline {spec.name!r} has no 'detections' output: batch runs need one")
    if problems:
        raise GraphError(problems)
    return pipeline


@dataclass(frozen=True)
class Job:
    """What an engine runs: the validated ``spec`` and ``params`` (Ray actors rebuild the
    pipeline from them), the ``pipeline`` built from them in this process, the output folder and
    the run's options."""

    spec: PipelineSpec
    params: dict[str, Any]
    pipeline: Pipeline
    out: Path
    options: RunOptions


class Engine(Protocol):
    summary_type: ClassVar[type[Summary]]

    def check(self, pipeline: Pipeline) -> None:
        """Raise when this engine cannot run ``pipeline`` here; called before anything is
        written."""

    def execute(self, job: Job, todo: list[Entry], summary: Summary,
                write: Callable[[dict[str, Any]], None]) -> None:
        """Run ``job`` on ``todo``, calling ``write(record)`` once per entry, in any order."""


@dataclass(frozen=True)
class LocalEngine:
    """This process: images decoded on a background thread (``prefetch_depth`` ahead) while the
    pipeline runs ``batch_size`` of them at a time."""

    prefetch_depth: int = 8
    summary_type: ClassVar[type[Summary]] = Summary

    def check(self, pipeline: Pipeline) -> None:
        """:class:`GraphError` when a node's device is not on this machine (this process runs
        the pipeline)."""
        from .agents.hub import missing_device

        problems = sorted({problem for node in pipeline.graph.nodes.values()
                           if (problem := missing_device(node.device)) is not None})
        if problems:
            raise GraphError(problems)

    def execute(self, job: Job, todo: list[Entry], summary: Summary,
                write: Callable[[dict[str, Any]], None]) -> None:
        summary.trace = job.pipeline.trace
        options = job.options
        loaded = prefetch(map(load_entry, todo), self.prefetch_depth)
        with torch_threads(options.threads):
            for batch in _chunks(loaded, options.batch_size):
                for record in batch_records(job.pipeline, batch, job.out, options.save_vis,
                                            options.save_attention):
                    write(record)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


@dataclass(frozen=True)
class RunOptions:
    """How a batch run goes. ``max_failures``: stop once that many images have failed;
    ``retry_failed``: run the entries recorded as failures again; ``pool``: the
    :class:`ModelPool` a local run loads its models through (share one to load them once across
    runs; Ray actors keep their own); ``threads``: the torch CPU threads each engine's process
    computes with (:func:`torch_threads`; results are byte-identical for one value)."""

    batch_size: int = 4
    max_failures: int | None = None
    save_vis: bool = False
    save_attention: bool = False
    retry_failed: bool = False
    engine: Engine = field(default_factory=LocalEngine)
    pool: ModelPool | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.max_failures is not None and self.max_failures < 1:
            raise ValueError(f"--max-failures must be at least 1, got {self.max_failures}")


def run(spec: PipelineSpec | str | Path, params: dict[str, Any], entries: list[Entry],
        out: str | Path, options: RunOptions | None = None,
        progress: Progress | None = None) -> Summary:
    """Run a detect-style pipeline (input ``image``, output ``detections``) over ``entries``
    into ``out/predictions.jsonl``; ``spec`` is a validated spec, a recipe name or a pipeline
    file, ``params`` its params.

    Before anything is written: :class:`GraphError` for a bad pipeline or params,
    :class:`vlpipe.ray_runner.RayNotInstalled` for a Ray engine without Ray. Then
    :class:`vlpipe.runner.OutputError` when ``out`` is not a writable folder or another run
    holds it, :class:`vlpipe.runner.PredictionsError` for a damaged predictions file. Returns the
    engine's :class:`Summary`; raises :class:`MaxFailures` once ``max_failures`` images have
    failed (what was finished is kept)."""
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

                def write(record: dict[str, Any]) -> None:
                    append_record(sink, record)
                    report(next(written), len(todo))
                    summary.add(record, options.max_failures)

                job = Job(spec, dict(params), pipeline, out, options)
                options.engine.execute(job, todo, summary, write)
        finally:
            summary.seconds = time.perf_counter() - start
    return summary
