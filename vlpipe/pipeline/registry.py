"""Node type names -> node classes.

Built-in types are listed as ``"module:Class"`` strings and imported on first use, so naming a
type never imports torch. Third-party packages add types through the ``vlpipe.nodes`` entry-point
group (``name = "package.module:NodeClass"``), or at run time with :func:`register`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .node import Node

ENTRY_POINT_GROUP = "vlpipe.nodes"

_TYPES: dict[str, str | type[Node]] = {
    "tiles": "vlpipe.agents.tiles.node:TilesNode",
    "mllm_objects": "vlpipe.agents.mllm.nodes:ObjectListNode",
    "attention_maps": "vlpipe.agents.mllm.nodes:AttentionMapNode",
    "mllm_answer": "vlpipe.agents.mllm.nodes:AnswerNode",
    "mllm_phrases": "vlpipe.agents.mllm.nodes:PhrasesNode",
    "need_tool": "vlpipe.agents.mllm.need_tool:NeedToolNode",
    "sam": "vlpipe.agents.sam.nodes:SamNode",
    "sam_boxes": "vlpipe.agents.sam.nodes:SamBoxNode",
    "object_names": "vlpipe.agents.grounding.fusion:ObjectNamesNode",
    "fuse": "vlpipe.agents.grounding.fusion:FuseNode",
    "branch_switch": "vlpipe.agents.mllm.locate:BranchSwitchNode",
    "mllm_boxes": "vlpipe.agents.mllm.locate:LocateBoxesNode",
    "mllm_points": "vlpipe.agents.mllm.locate:LocatePointsNode",
    "point_maps": "vlpipe.agents.mllm.locate:PointMapsNode",
    "merge": "vlpipe.agents.merge.node:MergeNode",
    "grounding": "vlpipe.agents.grounding.node:GroundingNode",
    "ocr": "vlpipe.agents.ocr.node:OcrNode",
}
_entry_points_loaded = False


class UnknownNodeType(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def register(name: str, cls: type[Node] | str) -> None:
    """Make ``name`` usable as a node ``type`` in pipeline files."""
    _TYPES[name] = cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if not _entry_points_loaded:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _TYPES.setdefault(ep.name, ep.value)
        _entry_points_loaded = True


def names() -> list[str]:
    _load_entry_points()
    return sorted(_TYPES)


def has(name: str) -> bool:
    _load_entry_points()
    return name in _TYPES


def get(name: str) -> type[Node]:
    """The node class registered as ``name``; imports it on first use."""
    _load_entry_points()
    if name not in _TYPES:
        raise UnknownNodeType(f"unknown node type {name!r} (known: {', '.join(sorted(_TYPES))})")
    target = _TYPES[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
        _TYPES[name] = target
    return target
