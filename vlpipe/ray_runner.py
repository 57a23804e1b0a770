"""Batch runs on Ray (``vlpipe run PIPELINE INPUT --out DIR --engine ray``).

The pending images (the local runner's resume rule, :func:`vlpipe.runner.pending`: an image
already in ``predictions.jsonl`` is not sent again) become a Ray Dataset, with the output
folder's lock held by the driver; a map stage decodes them with
:func:`vlpipe.io.load_image`, and a pool of long-lived actors runs the pipeline on them, each actor
building the pipeline once (its own :class:`~vlpipe.pipeline.ModelPool`, so each model is loaded
once per actor, on the actor's GPU or on CPU). Each actor sends back finished JSON lines; the
driver appends them to ``predictions.jsonl`` exactly as :class:`~vlpipe.runner.BatchRunner` does
(one ``write`` per line, flushed and fsynced), so a killed run resumes without loss or duplicates,
and a Ray run and a local run can resume each other.

A bad image is recorded as a failure (``error`` set), as in the local runner. An actor that dies
(killed, out of memory, a crash in native code) is restarted by Ray and its batch retried, at
most ``max_retries`` times; past that the run stops with :class:`RayRunError`, and what was
finished is kept in ``predictions.jsonl`` for the next run to resume from.

Ray is an optional extra: ``pip install 'vlpipe[ray]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runner import (PREDICTIONS, Entry, MaxFailures, Summary, append_record,
                     check_run_options, lock_output, make_record, pending)

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
    """A :class:`~vlpipe.runner.Summary` plus start-up timings.

    ``first_result_seconds``: from the start of the run (Ray already up) to the first finished
    image: actor start, pipeline build, model loading, first batch. ``worker_init_seconds``: per
    actor (by process id), the time its constructor took (imports + pipeline build; models load
    lazily on the first batch, see ``worker_first_batch_seconds``). ``ray_init_seconds``: connecting
    to / starting Ray (0 when it was already initialised)."""

    ray_init_seconds: float = 0.0
    first_result_seconds: float | None = None
    worker_init_seconds: dict[int, float] = field(default_factory=dict)
    worker_first_batch_seconds: dict[int, float] = field(default_factory=dict)


# --- what runs inside Ray ------------------------------------------------------------------

_EMPTY = np.zeros((0, 0, 3), np.uint8)


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map: a pending entry -> its decoded RGB image, or the load error."""
    from .io import load_image

    try:
        image, error = load_image(os.fsdecode(row["path"])), ""
    except (ValueError, OSError) as exc:
        image, error = _EMPTY, str(exc)
    return {"idx": row["idx"], "file": row["file"], "image": image, "error": error}


class PipelineWorker:
    """A long-lived Ray Data actor: builds the pipeline once, then maps batches of decoded
    images to JSON lines (``record``, with ``image_id`` filled in by the driver)."""

    def __init__(self, pipeline: str, spec_text: str | None, params: dict[str, Any],
                 out_dir: str, save_vis: bool = False, save_attention: bool = False,
                 crash_marker: str | None = None) -> None:
        start = time.perf_counter()
        from .pipeline import Pipeline

        if spec_text is not None:  # a pipeline file: rebuilt from its text, wherever this runs
            digest = hashlib.sha256(spec_text.encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"vlpipe-ray-{digest}" / Path(pipeline).name
            if not path.is_file() or path.read_text() != spec_text:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(spec_text)
                tmp.replace(path)
            pipeline = str(path)
        self.pipeline = Pipeline.load(pipeline, **params)
        self.out = Path(out_dir)
        self.save_vis, self.save_attention = save_vis, save_attention
        self.crash_marker = crash_marker
        self.pid = os.getpid()
        self.init_seconds = time.perf_counter() - start
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        self._maybe_crash()
        idx, files, images, errors = batch["idx"], batch["file"], batch["image"], batch["error"]
        ok = [k for k in range(len(idx)) if not errors[k]]
        outcomes: dict[int, Any] = {k: str(errors[k]) for k in range(len(idx)) if errors[k]}
        if ok:
            try:
                results = self.pipeline.run_batch([{"image": images[k]} for k in ok])
            except Exception:  # noqa: BLE001 - one image's problem must not sink the batch
                results = [self._run_one(images[k]) for k in ok]
            outcomes.update(zip(ok, results))
        records = [json.dumps(make_record(str(files[k]), None,
                                          images[k] if images[k].size else None, outcomes[k],
                                          self.out, self.save_vis, self.save_attention),
                              ensure_ascii=False) for k in range(len(idx))]
        first = self.batches == 0
        self.batches += 1
        n = len(idx)
        return {"idx": np.asarray(idx), "record": np.array(records, dtype=object),
                "pid": np.full(n, self.pid), "init_s": np.full(n, self.init_seconds),
                "first_batch_s": np.full(n, time.perf_counter() - start if first else -1.0)}

    def _run_one(self, image):
        try:
            return self.pipeline.run_batch([{"image": image}])[0]
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"

    def _maybe_crash(self) -> None:
        """Testing only: the first actor to find ``crash_marker`` removes it and dies hard."""
        if self.crash_marker is None:
            return
        try:
            os.remove(self.crash_marker)
        except FileNotFoundError:
            return
        os._exit(1)


# --- the driver -----------------------------------------------------------------------------

def _spec_text(pipeline: str) -> str | None:
    """A pipeline file's text (sent to the actors, which may not share this file system); None
    for a built-in recipe name (resolved by the vlpipe installed on the worker)."""
    path = Path(pipeline)
    return path.read_text() if path.is_file() else None


def run_ray(pipeline: str, params: dict[str, Any], entries: list[Entry], out_dir: str | Path, *,
            address: str | None = None, workers: int = 2, num_gpus_per_worker: float = 0,
            num_cpus_per_worker: float = 0.5, batch_size: int = 4, max_retries: int = 2,
            max_failures: int | None = None, save_vis: bool = False,
            save_attention: bool = False, retry_failed: bool = False,
            progress: Callable[[int], None] | None = None,
            runtime_env: dict[str, Any] | None = None,
            _crash_marker: str | None = None) -> RaySummary:
    """Run a detect-style pipeline (recipe name or pipeline file + params) over ``entries`` on
    Ray, writing ``out_dir/predictions.jsonl`` as :class:`~vlpipe.runner.BatchRunner` does.

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None
    starts a local Ray instance unless one is already initialised in this process. ``workers``
    actors each take ``num_cpus_per_worker`` CPUs and ``num_gpus_per_worker`` GPUs (1 puts each on
    its own GPU). A dead actor is restarted and its batch retried up to ``max_retries`` times.
    ``retry_failed`` sends images whose record is a failure again, as the local runner does.
    Returns a :class:`RaySummary`; raises :class:`MaxFailures` once ``max_failures`` images have
    failed, :class:`RayRunError` when the run could not finish, :class:`RayNotInstalled`,
    :class:`~vlpipe.runner.OutputError` when another run holds ``out_dir``, ValueError for bad
    options."""
    ray = import_ray()
    from .pipeline import Pipeline

    check_run_options(batch_size, max_failures)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    probe = Pipeline.load(pipeline, **params)  # validates the file and params; loads no model
    if "detections" not in probe.graph.outputs:
        raise ValueError(f"pipeline {probe.name!r} has no 'detections' output: batch runs need one")
    spec_text = _spec_text(pipeline)
    out = Path(out_dir)
    with lock_output(out):
        todo, skipped = pending(entries, out, retry_failed)
        summary = RaySummary(skipped=skipped)
        if todo:
            _start_and_execute(ray, address, runtime_env, todo, out, summary,
                               pipeline=pipeline, spec_text=spec_text, params=params,
                               workers=workers, num_gpus=num_gpus_per_worker,
                               num_cpus=num_cpus_per_worker, batch_size=batch_size,
                               max_retries=max_retries, max_failures=max_failures,
                               save_vis=save_vis, save_attention=save_attention,
                               progress=progress, crash_marker=_crash_marker)
    return summary


def _start_and_execute(ray, address, runtime_env, todo, out, summary, **options) -> None:
    """:func:`_execute`, starting (and afterwards stopping) Ray unless it is initialised."""
    started_ray = False
    if not ray.is_initialized():
        t0 = time.perf_counter()
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=True)
        summary.ray_init_seconds = time.perf_counter() - t0
        started_ray = True
    try:
        _execute(ray, todo, out, summary, **options)
    finally:
        if started_ray:
            ray.shutdown()


def _execute(ray, todo: list[Entry], out: Path, summary: RaySummary, *, pipeline, spec_text,
             params, workers, num_gpus, num_cpus, batch_size, max_retries, max_failures,
             save_vis, save_attention, progress, crash_marker) -> None:
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    items = [{"idx": i, "file": e.file, "path": os.fsencode(e.path)}  # bytes: any file name
             for i, e in enumerate(todo)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
    ds = ds.map(_decode, num_cpus=min(1.0, num_cpus) if num_cpus else 1.0)
    with warnings.catch_warnings():  # Ray 2.5x deprecates **ray_remote_args, its only
        warnings.simplefilter("ignore")  # way to bound actor restarts
        ds = ds.map_batches(
            PipelineWorker, batch_size=batch_size, batch_format="numpy", zero_copy_batch=False,
            compute=ActorPoolStrategy(size=workers), num_cpus=num_cpus, num_gpus=num_gpus or None,
            fn_constructor_kwargs={"pipeline": pipeline, "spec_text": spec_text,
                                   "params": params, "out_dir": str(out.resolve()),
                                   "save_vis": save_vis, "save_attention": save_attention,
                                   "crash_marker": crash_marker},
            max_restarts=max_retries, max_task_retries=max_retries)

    seen: set[int] = set()
    start = time.perf_counter()
    try:
        with open(out / PREDICTIONS, "a", encoding="utf-8") as sink:
            for row in _rows(ds):
                i = int(row["idx"])
                if i in seen:  # a retried batch whose first try did finish: keep the first
                    continue
                seen.add(i)
                entry = todo[i]
                record = json.loads(row["record"])
                record["image_id"] = entry.image_id
                append_record(sink, record)
                if summary.first_result_seconds is None:
                    summary.first_result_seconds = time.perf_counter() - start
                pid = int(row["pid"])
                summary.worker_init_seconds.setdefault(pid, float(row["init_s"]))
                if float(row["first_batch_s"]) >= 0:
                    summary.worker_first_batch_seconds.setdefault(pid, float(row["first_batch_s"]))
                if progress is not None:
                    progress(1)
                summary.add(record, max_failures)
    except (MaxFailures, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker deaths in several types
        missing = len(todo) - len(seen)
        raise RayRunError(f"the Ray run stopped with {missing} image(s) unfinished "
                          f"({type(exc).__name__}: {_first_line(exc)}); finished images are in "
                          f"{out / PREDICTIONS}: run again to resume") from exc
    finally:
        summary.seconds = time.perf_counter() - start


def _rows(ds) -> Iterable[dict[str, Any]]:
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k in range(len(batch["idx"])):
            yield {key: col[k] for key, col in batch.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
