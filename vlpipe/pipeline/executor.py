"""Runs a validated graph over items (one image, a list, or a stream).

The loop: for each node in topological order, gather the inputs of every live item, hand them to
``node.run`` in chunks of ``node.max_batch``, store the outputs. An item whose condition is falsy,
or whose required input was skipped, gets its outputs marked skipped. A node that raises is
retried item by item, so one bad item records its error and the others go on; a
:class:`SetupError` (a model that cannot load) stops the run instead, since every item would
record it.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .graph import INPUT, Graph, PortRef


class _Skipped:
    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = _Skipped()
"""Value of every output of a node that did not run on an item."""


class SetupError(RuntimeError):
    """A node cannot run on any item (its model cannot load): raised out of the executor, its
    message for the user as it is, rather than recorded as every item's error."""


@dataclass
class Result:
    """One item's outcome: ``outputs`` (None for skipped ports), or the ``error`` that stopped it."""

    outputs: dict[str, Any]
    error: str | None = None
    error_node: str | None = None
    skipped: list[str] = field(default_factory=list)


@dataclass
class NodeEvent:
    node: str
    start: float  # seconds, time.perf_counter
    seconds: float
    items: int
    rss_mb: float  # process peak resident memory (high-water mark) after the call
    gpu_peak_mb: float | None  # torch.cuda peak allocated during the call, when on CUDA
    failed: bool = False


class Trace:
    """Per-node timing and memory of every ``run`` call."""

    def __init__(self) -> None:
        self.events: list[NodeEvent] = []

    def summary(self) -> dict[str, dict[str, float]]:
        """Per node: calls, items, total seconds, max rss and GPU peak in MB."""
        out: dict[str, dict[str, float]] = {}
        for e in self.events:
            s = out.setdefault(e.node, {"calls": 0, "items": 0, "seconds": 0.0, "rss_mb": 0.0,
                                        "gpu_peak_mb": 0.0})
            s["calls"] += 1
            s["items"] += e.items
            s["seconds"] += e.seconds
            s["rss_mb"] = max(s["rss_mb"], e.rss_mb)
            s["gpu_peak_mb"] = max(s["gpu_peak_mb"], e.gpu_peak_mb or 0.0)
        return out

    def to_chrome(self) -> dict:
        """The trace as Chrome trace-event JSON (open in chrome://tracing or Perfetto)."""
        t0 = min((e.start for e in self.events), default=0.0)
        return {"traceEvents": [
            {"name": e.node, "ph": "X", "pid": 1, "tid": 1, "ts": (e.start - t0) * 1e6,
             "dur": e.seconds * 1e6,
             "args": {"items": e.items, "rss_mb": e.rss_mb, "gpu_peak_mb": e.gpu_peak_mb,
                      "failed": e.failed}}
            for e in self.events]}

    def save_chrome(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_chrome(), f)


def _cuda():
    """torch.cuda when torch is already imported and a GPU is present (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch.cuda if torch is not None and torch.cuda.is_available() else None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _record(result: Result, node: str, exc: BaseException) -> None:
    result.error = f"node {node!r} failed: {type(exc).__name__}: {exc}"
    result.error_node = node


class Executor:
    """Runs ``graph`` over items; each item is a dict of the graph's inputs."""

    def __init__(self, graph: Graph, pool=None) -> None:
        self.graph = graph
        self.plan = graph.plan()  # validates
        self.pool = pool
        self.trace = Trace()
        for node in graph.nodes.values():
            node.pool = pool

    # -- public ---------------------------------------------------------------------------------
    def run(self, **inputs: Any) -> Result:
        """Run one item."""
        return self.run_batch([inputs])[0]

    def stream(self, items: Iterable[dict[str, Any]], batch_size: int = 8) -> Iterator[Result]:
        """Run a stream of items in batches of ``batch_size``, yielding results in order."""
        batch: list[dict[str, Any]] = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                yield from self.run_batch(batch)
                batch = []
        if batch:
            yield from self.run_batch(batch)

    def run_batch(self, items: list[dict[str, Any]]) -> list[Result]:
        """Run a list of items through the whole plan. Each item must give exactly the graph's
        inputs (TypeError otherwise); a value that is not of its input's type (an image that is
        no image) is that item's error, and the other items go on."""
        results = [Result(outputs={}) for _ in items]
        values = [self._inputs(item, result) for item, result in zip(items, results)]
        for name in self.plan:
            ready = []
            for i, result in enumerate(results):
                if result.error is not None:
                    continue
                try:
                    inputs = self._gather(name, values[i])
                except ValueError as exc:  # a condition without a truth value
                    _record(result, name, exc)
                    continue
                if inputs is None:
                    result.skipped.append(name)
                    values[i].update({PortRef(name, p): SKIPPED
                                      for p in self.graph.nodes[name].outputs})
                else:
                    ready.append((i, inputs))
            self._run_node(name, ready, values, results)
        for i, result in enumerate(results):
            if result.error is None:
                result.outputs = {key: _unskip(values[i].get(ref))
                                  for key, ref in self.graph.outputs.items()}
        return results

    # -- internals ------------------------------------------------------------------------------
    def _inputs(self, item: dict[str, Any], result: Result) -> dict[PortRef, Any]:
        """An item's input values, checked against the graph's inputs (see :meth:`run_batch`)."""
        declared = self.graph.inputs
        problems = [f"{what} input(s) {', '.join(map(repr, names))}" for what, names in (
            ("missing", [k for k in declared if k not in item]),
            ("unknown", [k for k in item if k not in declared])) if names]
        if problems:
            raise TypeError(f"{'; '.join(problems)} (the graph's inputs: "
                            f"{', '.join(declared) or 'none'})")
        values = {}
        for key, value in item.items():
            try:
                values[PortRef(INPUT, key)] = _check_input(declared[key], value)
            except ValueError as exc:
                result.error = f"input {key!r}: {exc}"
        return values

    def _gather(self, name: str, values: dict[PortRef, Any]) -> dict[str, Any] | None:
        """The node's inputs for one item, or None when it must be skipped: its ``when`` port is
        falsy (Python's ``bool``) or skipped, or a required input is skipped. ValueError when the
        ``when`` value has no truth value (a NumPy array of several elements)."""
        cond = self.graph.when.get(name)
        if cond is not None and not _holds(cond, values.get(cond, SKIPPED)):
            return None
        node = self.graph.nodes[name]
        inputs = {}
        for port in node.inputs:
            ref = self.graph.bindings.get((name, port))
            value = SKIPPED if ref is None else values.get(ref, SKIPPED)
            if value is SKIPPED:
                if port not in node.optional:
                    return None
                value = None
            inputs[port] = value
        return inputs

    def _run_node(self, name, ready, values, results) -> None:
        node = self.graph.nodes[name]
        step = max(1, node.max_batch)
        for s in range(0, len(ready), step):
            chunk = ready[s:s + step]
            try:
                outs = self._call(node, [inputs for _, inputs in chunk])
            except SetupError:
                raise
            except Exception as exc:
                if len(chunk) == 1:
                    _record(results[chunk[0][0]], name, exc)
                    continue
                # isolate the failing item(s): run each alone
                outs = [self._run_alone(node, inputs, results[i]) for i, inputs in chunk]
            for (i, _), out in zip(chunk, outs):
                if out is not None:
                    values[i].update({PortRef(name, p): out[p] for p in node.outputs})

    def _run_alone(self, node, inputs: dict[str, Any], result: Result) -> dict[str, Any] | None:
        try:
            return self._call(node, [inputs])[0]
        except SetupError:
            raise
        except Exception as exc:
            _record(result, node.name, exc)
            return None

    def _call(self, node, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        cuda = _cuda() if str(node.device).startswith("cuda") else None
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        failed = True
        try:
            outs = node.run(batch)
            if len(outs) != len(batch):
                raise RuntimeError(f"returned {len(outs)} results for {len(batch)} items")
            for out in outs:
                missing = [p for p in node.outputs if p not in out]
                if missing:
                    raise RuntimeError(f"output ports missing from the result: {missing}")
            failed = False
            return outs
        finally:
            self.trace.events.append(NodeEvent(
                node.name, start, time.perf_counter() - start, len(batch), _rss_mb(),
                cuda.max_memory_allocated() / 2**20 if cuda is not None else None, failed))


def _check_input(kind: str, value: Any) -> Any:
    """A graph input in the form its type's nodes expect: images as (H, W, 3) uint8 RGB
    (:func:`vlpipe.io.as_rgb_image`), text as str; ValueError when it cannot be."""
    if kind == "image":
        from ..io import as_rgb_image

        return as_rgb_image(value)
    if kind == "text" and not isinstance(value, str):
        raise ValueError(f"expected text (str), got {type(value).__name__}")
    return value


def _holds(cond: PortRef, value: Any) -> bool:
    """Whether a ``when`` condition holds: its value is truthy and was not skipped."""
    if value is SKIPPED:
        return False
    try:
        return bool(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"condition 'when: {cond}' has no truth value "
                         f"({type(value).__name__}: {exc})") from None


def _unskip(value: Any) -> Any:
    return None if value is SKIPPED else value
