"""The Ray engine of :func:`vlpipe.batch.run` (``vlpipe run PIPELINE INPUT --out DIR --engine ray``).

:func:`~vlpipe.batch.run` holds the output folder's lock and picks the pending images; here they
become a Ray Dataset: a map stage decodes them (:func:`~vlpipe.batch.load_entry`), and a pool of
long-lived actors runs the pipeline on them, each actor building it once from the validated spec
it receives (its own :class:`~vlpipe.pipeline.ModelPool`, so each model is loaded once per
actor, on the actor's GPU or on CPU). Each item carries its file and image id from the start,
and each actor sends back finished JSON lines; the driver appends them to ``predictions.jsonl``
unchanged, as the local engine does (one ``write`` per line, flushed and fsynced), so a killed
run resumes without loss or duplicates, and a Ray run and a local run can resume each other.

A bad image is recorded as a failure (``error`` set), as in the local engine. An actor that dies
(killed, out of memory, a crash in native code) is restarted by Ray and its batch retried, at
most ``max_retries`` times; past that the run stops with :class:`RayRunError`, and what was
finished is kept in ``predictions.jsonl`` for the next run to resume from.

Ray is an optional extra: ``pip install 'vlpipe[ray]'``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..pipeline import PipelineSpec
from .engine import Job, batch_pipeline
from .inputs import Entry
from .predictions import PREDICTIONS
from .records import Line, Loaded, batch_lines, load_entry
from .summary import MaxFailures, Summary

INSTALL_HINT = "the Ray engine needs Ray: pip install 'vlpipe[ray]'"


class RayNotInstalled(ImportError):
    """``--engine ray`` without the ``ray`` extra; the message says how to install it."""


class RayRunError(RuntimeError):
    """The Ray run stopped (workers kept dying, or the cluster failed); finished images are kept
    in predictions.jsonl and a rerun resumes after them."""


def import_ray():
    """``ray`` (and ``ray.data``), or :class:`RayNotInstalled` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalled(f"{INSTALL_HINT} ({exc})") from None
    return ray


@dataclass
class RaySummary(Summary):
    """A :class:`~vlpipe.batch.Summary` plus start-up timings.

    ``first_result_seconds``: from the start of the run to the first finished image: actor
    start, pipeline build, model loading, first batch. ``worker_init_seconds``: per actor (by
    process id), the time its constructor took (imports + pipeline build; models load lazily on
    the first batch, see ``worker_first_batch_seconds``)."""

    first_result_seconds: float | None = None
    worker_init_seconds: dict[int, float] = field(default_factory=dict)
    worker_first_batch_seconds: dict[int, float] = field(default_factory=dict)


# --- what runs inside Ray ------------------------------------------------------------------

_EMPTY = np.zeros((0, 0, 3), np.uint8)


def _item(idx: int, entry: Entry) -> dict[str, Any]:
    """A pending entry as a Ray Data row: its index in the run, file, path (bytes: any file
    name) and image id (``has_image_id`` False for none: a column of one type)."""
    return {"idx": idx, "file": entry.file, "path": os.fsencode(entry.path),
            "image_id": entry.image_id or 0, "has_image_id": entry.image_id is not None}


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map: a pending entry -> its decoded RGB image, or the load error."""
    loaded = load_entry(Entry(row["file"], Path(os.fsdecode(row["path"]))))
    return {"idx": row["idx"], "file": row["file"], "image_id": row["image_id"],
            "has_image_id": row["has_image_id"],
            "image": _EMPTY if loaded.image is None else loaded.image,
            "error": loaded.error or ""}


class PipelineWorker:
    """A long-lived Ray Data actor: builds the pipeline once from the validated spec, then maps
    batches of decoded images to finished JSON lines (``text``, with the ``error`` the run's
    summary counts; ``failed`` False for none). Its process computes with the run's ``threads`` torch CPU threads, as the local
    engine does (Ray would give it one per CPU it reserves), so both write the same bytes."""

    def __init__(self, spec: PipelineSpec, params: dict[str, Any], out_dir: str,
                 save_vis: bool = False, save_attention: bool = False, threads: int = 1) -> None:
        import torch

        start = time.perf_counter()
        torch.set_num_threads(threads)
        self.pipeline = batch_pipeline(spec, params)
        self.out = Path(out_dir)
        self.save_vis, self.save_attention = save_vis, save_attention
        self.pid = os.getpid()
        self.init_seconds = time.perf_counter() - start
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        idx, errors = batch["idx"], batch["error"]
        loaded = [Loaded(str(batch["file"][k]),
                         int(batch["image_id"][k]) if batch["has_image_id"][k] else None,
                         batch["image"][k] if not errors[k] else None, str(errors[k]) or None)
                  for k in range(len(idx))]
        lines = batch_lines(self.pipeline, loaded, self.out, self.save_vis, self.save_attention)
        first = self.batches == 0
        self.batches += 1
        n = len(idx)
        return {"idx": np.asarray(idx), "file": np.array([x.file for x in lines], dtype=object),
                "text": np.array([x.text for x in lines], dtype=object),
                "error": np.array([x.error or "" for x in lines], dtype=object),
                "failed": np.array([x.error is not None for x in lines]),
                "pid": np.full(n, self.pid), "init_s": np.full(n, self.init_seconds),
                "first_batch_s": np.full(n, time.perf_counter() - start if first else -1.0)}


# --- the driver -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RayEngine:
    """Runs a batch on Ray. ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``); None starts a local Ray for the run unless one is already initialised in
    this process (``runtime_env`` goes to that ``ray.init``). ``workers`` actors each take
    ``num_cpus_per_worker`` CPUs and ``num_gpus_per_worker`` GPUs (1 puts each on its own GPU).
    A dead actor is restarted and its batch retried up to ``max_retries`` times."""

    address: str | None = None
    workers: int = 2
    num_gpus_per_worker: float = 0
    num_cpus_per_worker: float = 0.5
    max_retries: int = 2
    runtime_env: dict[str, Any] | None = None
    summary_type: ClassVar[type[Summary]] = RaySummary

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.num_gpus_per_worker < 0:
            raise ValueError("--num-gpus-per-worker cannot be negative, got "
                             f"{self.num_gpus_per_worker}")

    def check(self, pipeline) -> None:
        """:class:`RayNotInstalled` without Ray (the workers check their devices)."""
        import_ray()

    def execute(self, job: Job, todo: list[Entry], summary: RaySummary,
                write: Callable[[Line], None]) -> None:
        """:meth:`_execute`, starting (and afterwards stopping) Ray unless it is initialised;
        nothing without images to run."""
        if not todo:
            return
        ray = import_ray()
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(address=self.address, runtime_env=self.runtime_env,
                     include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        try:
            self._execute(ray, job, todo, summary, write)
        finally:
            if started_ray:
                ray.shutdown()

    def _execute(self, ray, job: Job, todo: list[Entry], summary: RaySummary,
                 write: Callable[[Line], None]) -> None:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        items = [_item(i, entry) for i, entry in enumerate(todo)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
        num_cpus = self.num_cpus_per_worker
        ds = ds.map(_decode, num_cpus=min(1.0, num_cpus) if num_cpus else 1.0)
        with warnings.catch_warnings():  # Ray 2.5x deprecates **ray_remote_args, its only
            warnings.simplefilter("ignore")  # way to bound actor restarts
            ds = ds.map_batches(
                PipelineWorker, batch_size=job.options.batch_size, batch_format="numpy",
                zero_copy_batch=False, compute=ActorPoolStrategy(size=self.workers),
                num_cpus=num_cpus, num_gpus=self.num_gpus_per_worker or None,
                fn_constructor_kwargs={"spec": job.spec, "params": job.params,
                                       "out_dir": str(job.out.resolve()),
                                       "save_vis": job.options.save_vis,
                                       "save_attention": job.options.save_attention,
                                       "threads": job.options.threads},
                max_restarts=self.max_retries, max_task_retries=self.max_retries)
        seen: set[int] = set()
        start = time.perf_counter()
        try:
            for row in _rows(ds):
                i = int(row["idx"])
                if i in seen:  # a retried batch whose first try did finish: keep the first
                    continue
                seen.add(i)
                _time_start_up(summary, row, time.perf_counter() - start)
                write(Line(str(row["file"]), str(row["error"]) if row["failed"] else None,
                           str(row["text"])))
        except (MaxFailures, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray wraps worker deaths in several types
            missing = len(todo) - len(seen)
            raise RayRunError(f"the Ray run stopped with {missing} image(s) unfinished "
                              f"({type(exc).__name__}: {_first_line(exc)}); finished images are "
                              f"in {job.out / PREDICTIONS}: run again to resume") from exc


def _time_start_up(summary: RaySummary, row: dict[str, Any], since_start: float) -> None:
    """Note the first result's time and each actor's start-up times."""
    if summary.first_result_seconds is None:
        summary.first_result_seconds = since_start
    pid = int(row["pid"])
    summary.worker_init_seconds.setdefault(pid, float(row["init_s"]))
    if float(row["first_batch_s"]) >= 0:
        summary.worker_first_batch_seconds.setdefault(pid, float(row["first_batch_s"]))


def _rows(ds) -> Iterable[dict[str, Any]]:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k in range(len(batch["idx"])):
            yield {key: col[k] for key, col in batch.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
