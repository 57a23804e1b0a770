"""What :func:`vlpipe.batch.run` hands an engine: the :class:`Engine` protocol, the
:class:`Job`, the run's :class:`RunOptions`, and :func:`batch_pipeline`, the pipeline every
engine builds from the validated spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..pipeline import GraphError, ModelPool, Pipeline, PipelineSpec
from .inputs import Entry
from .local_engine import LocalEngine
from .records import Line
from .summary import Summary


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
                write: Callable[[Line], None]) -> None:
        """Run ``job`` on ``todo``, calling ``write(line)`` once per entry, in any order."""


@dataclass(frozen=True)
class RunOptions:
    """How a batch run goes. ``max_failures``: stop once that many images have failed;
    ``retry_failed``: run the entries recorded as failures again; ``pool``: the
    :class:`ModelPool` a local run loads its models through (share one to load them once across
    runs; Ray actors keep their own); ``threads``: the torch CPU threads each engine's process
    computes with (:func:`~vlpipe.batch.torch_threads`; results are byte-identical for one
    value)."""

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
