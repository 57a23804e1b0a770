"""Pipeline files (YAML or JSON) -> validated :class:`Graph`.

A pipeline file::

    name: detect
    params: {questions: 10, device: auto}      # defaults, overridable from the CLI / Python
    inputs: {image: image}
    models:                                    # optional: each model declared once
      mllm: {model: llava-hf/llava-1.5-7b-hf, device: "${device}"}
    nodes:
      objects:
        type: mllm_objects                     # a registry name, never a Python path
        uses: mllm                             # the params of model 'mllm', then its own
        in: {views: tiles.views}
        params: {questions: "${questions}"}
        when: decide.objects                   # optional condition
    outputs: {detections: merge.detections}

``"${name}"`` as a whole value takes the param's value with its type; inside a longer string it
is interpolated. A node that ``uses`` a model takes that model's params and may not set them
again (nodes of one model cannot drift apart, so they share one loaded copy); a node without
``uses`` sets its model params itself. Files are read with ``yaml.safe_load``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import registry
from .graph import Graph, GraphError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: str
    inputs: dict[str, str] = Field(default_factory=dict, alias="in")
    params: dict[str, Any] = Field(default_factory=dict)
    when: str | None = None
    uses: str | None = None


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "pipeline"
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str]
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    nodes: dict[str, NodeSpec]
    outputs: dict[str, str]

    @classmethod
    def load(cls, path: str | Path) -> PipelineSpec:
        """Read and validate a YAML or JSON pipeline file; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise GraphError([f"cannot read pipeline file '{path}': {exc.strerror}"]) from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise GraphError([f"pipeline file '{path}' is not valid YAML/JSON: {exc}"]) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [f"{path}: {'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}"
                        for e in exc.errors()]
            raise GraphError(problems) from None

    def build(self, **overrides: Any) -> Graph:
        """Instantiate the nodes (no model is loaded yet) and return the validated graph."""
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise GraphError([f"pipeline {self.name!r} has no param {k!r} "
                              f"(params: {', '.join(self.params) or 'none'})" for k in unknown])
        params = {**self.params, **overrides}
        problems, nodes = [], {}
        for name, spec in self.nodes.items():
            node_params, found = self.node_params(name, spec)
            found += [f"node {name!r}: {e}" for e in _unknown_vars(node_params, params)]
            if not registry.has(spec.type):
                found.append(f"node {name!r}: unknown node type {spec.type!r} (known: "
                             f"{', '.join(registry.names())})")
            if not found:
                try:
                    nodes[name] = registry.get(spec.type)(name, **_substitute(node_params, params))
                except (TypeError, ValueError) as exc:  # the node's own check of its params
                    found.append(f"node {name!r} ({spec.type}): bad params: {exc}")
            problems += found
        if problems:
            raise GraphError(problems)
        graph = Graph(self.inputs)
        for name, spec in self.nodes.items():
            graph.add(nodes[name], when=spec.when, **spec.inputs)
        for key, ref in self.outputs.items():
            graph.output(key, ref)
        graph.validate()
        return graph

    def node_params(self, name: str, node: NodeSpec) -> tuple[dict[str, Any], list[str]]:
        """Node ``name``'s params before substitution: those of the model it ``uses``, then its
        own; and the problems (an unknown model, a param set both by the node and its model)."""
        if node.uses is None:
            return node.params, []
        if node.uses not in self.models:
            return node.params, [f"node {name!r}: unknown model {node.uses!r} (models: "
                                 f"{', '.join(self.models) or 'none declared'})"]
        model = self.models[node.uses]
        repeated = [key for key in node.params if key in model]
        if repeated:
            return node.params, [f"node {name!r}: {', '.join(repeated)} set both here and by "
                                 f"its model {node.uses!r}; declare it once, in the model"]
        return {**model, **node.params}, []


def _unknown_vars(value: Any, params: dict[str, Any]) -> list[str]:
    if isinstance(value, str):
        return [f"unknown variable ${{{v}}}" for v in _VAR.findall(value) if v not in params]
    if isinstance(value, dict):
        return [e for v in value.values() for e in _unknown_vars(v, params)]
    if isinstance(value, list):
        return [e for v in value for e in _unknown_vars(v, params)]
    return []


def _substitute(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            return params[whole.group(1)]
        return _VAR.sub(lambda m: str(params[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    return value
