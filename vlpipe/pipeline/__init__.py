"""The engine: nodes, graphs, pipeline files, the executor and the model pool.

Nothing here imports torch or transformers; nodes with models live in :mod:`vlpipe.agents`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .executor import SKIPPED, Executor, Result, SetupError, Trace
from .graph import Graph, GraphError
from .models import ModelPool
from .node import FunctionNode, Node
from .spec import PipelineSpec

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

__all__ = ["SKIPPED", "Executor", "FunctionNode", "Graph", "GraphError", "ModelPool", "Node",
           "Pipeline", "PipelineSpec", "Result", "SetupError", "Trace", "recipe_names",
           "resolve_pipeline"]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_pipeline(name_or_path: str | Path) -> Path:
    """A built-in recipe name (``detect``) or a path to a pipeline file -> the file's path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    recipe = RECIPES_DIR / f"{name_or_path}.yaml"
    if recipe.is_file():
        return recipe
    raise GraphError([f"no pipeline file '{name_or_path}' and no built-in recipe of that name "
                      f"(recipes: {', '.join(recipe_names())})"])


class Pipeline:
    """A validated graph plus an executor and a model pool: the object users run.

    Built from a pipeline file (``Pipeline.load("detect", questions=5)``) or from a
    :class:`Graph` composed in Python (``Pipeline(graph)``): both give the same object.
    """

    def __init__(self, graph: Graph, pool: ModelPool | None = None, name: str = "pipeline"):
        self.name = name
        self.graph = graph
        self.pool = pool if pool is not None else ModelPool()
        self.executor = Executor(graph, self.pool)

    @classmethod
    def load(cls, name_or_path: str | Path, pool: ModelPool | None = None,
             **params: Any) -> Pipeline:
        return cls.from_spec(PipelineSpec.load(resolve_pipeline(name_or_path)), pool, **params)

    @classmethod
    def from_spec(cls, spec: PipelineSpec, pool: ModelPool | None = None,
                  **params: Any) -> Pipeline:
        """The pipeline of a validated spec with ``params`` (loads no model)."""
        return cls(spec.build(**params), pool, name=spec.name)

    @property
    def trace(self) -> Trace:
        return self.executor.trace

    def run(self, **inputs: Any) -> Result:
        return self.executor.run(**inputs)

    def run_batch(self, items: list[dict[str, Any]]) -> list[Result]:
        return self.executor.run_batch(items)

    def stream(self, items, batch_size: int = 8):
        return self.executor.stream(items, batch_size)

    def to_mermaid(self) -> str:
        return self.graph.to_mermaid()
