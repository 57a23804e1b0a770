"""The local engine: the pending images run in this process, decoded on a background thread
(:func:`prefetch`) while the pipeline runs ``batch_size`` of them at a time, with the run's
``threads`` torch CPU threads (:func:`torch_threads`)."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..pipeline import GraphError, Pipeline
from .inputs import Entry
from .records import Line, batch_lines, load_entry
from .summary import Summary

if TYPE_CHECKING:
    from .engine import Job


@dataclass(frozen=True)
class LocalEngine:
    """This process: images decoded on a background thread (``prefetch_depth`` ahead) while the
    pipeline runs ``batch_size`` of them at a time."""

    prefetch_depth: int = 8
    summary_type: ClassVar[type[Summary]] = Summary

    def check(self, pipeline: Pipeline) -> None:
        """:class:`GraphError` when a node's device is not on this machine (this process runs
        the pipeline)."""
        from ..agents.hub import missing_device

        problems = sorted({problem for node in pipeline.graph.nodes.values()
                           if (problem := missing_device(node.device)) is not None})
        if problems:
            raise GraphError(problems)

    def execute(self, job: Job, todo: list[Entry], summary: Summary,
                write: Callable[[Line], None]) -> None:
        summary.trace = job.pipeline.trace
        options = job.options
        loaded = prefetch(map(load_entry, todo), self.prefetch_depth)
        with torch_threads(options.threads):
            for batch in _chunks(loaded, options.batch_size):
                for line in batch_lines(job.pipeline, batch, job.out, options.save_vis,
                                        options.save_attention):
                    write(line)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


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


def prefetch(items: Iterable[Any], depth: int = 4) -> Iterator[Any]:
    """Iterate ``items`` on a background thread, keeping up to ``depth`` ready (e.g. decoded
    images) while the caller works. Exceptions raised by the iterator are re-raised here; when
    the caller stops early (break, exception, close), the thread stops too."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer
            put(exc)
        put(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
