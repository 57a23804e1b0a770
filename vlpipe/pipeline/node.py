"""The node contract: typed ports, a batched ``run``, a device.

A node is a plain object. Its class declares input and output ports as ``{name: type}``; the
executor calls ``run`` with a list of items, each a dict of input values, and expects one dict of
output values back per item, in order. Port types are short strings (``"image"``,
``"detections"``, ...); ``"any"`` matches every type.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

ANY = "any"


def types_match(produced: str, wanted: str) -> bool:
    """True when an output port of type ``produced`` may feed an input of type ``wanted``."""
    return produced == wanted or ANY in (produced, wanted)


class Node(ABC):
    """Base class of every pipeline node.

    Subclasses set ``inputs`` / ``outputs`` (port name -> type), list optional inputs in
    ``optional``, and implement ``run``. A node's settings (a pipeline file's ``params``) are the
    keyword arguments of its ``__init__``; one it does not declare is an error naming it.
    ``device`` says where its models live. ``max_batch`` caps the items per ``run`` call.
    """

    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}
    optional: ClassVar[frozenset[str]] = frozenset()
    max_batch: ClassVar[int] = 64

    def __init__(self, name: str, *, device: str = "cpu", **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"unknown param{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, sorted(unknown)))} "
                            f"(known: {', '.join(known_params(type(self))) or 'none'})")
        self.name = name
        self.device = device
        self.pool = None  # set by the executor: the ModelPool shared by every node

    @abstractmethod
    def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Map a list of input dicts to a list of output dicts of the same length."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def known_params(cls: type[Node]) -> list[str]:
    """The keyword params a node class takes: every named keyword of the ``__init__`` of the
    class and its bases (subclasses hand the rest to their base's ``__init__``)."""
    names = []
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return sorted(names)


class FunctionNode(Node):
    """A node made from a plain function of one item: ``fn(**inputs) -> dict of outputs``.

    Handy for user code and tests::

        node = FunctionNode("double", lambda x: {"y": 2 * x}, inputs={"x": "any"}, outputs={"y": "any"})
    """

    def __init__(self, name: str, fn, *, inputs: dict[str, str], outputs: dict[str, str],
                 optional: frozenset[str] = frozenset(), device: str = "cpu") -> None:
        super().__init__(name, device=device)
        self.fn = fn
        self.inputs = dict(inputs)
        self.outputs = dict(outputs)
        self.optional = frozenset(optional)

    def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.fn(**item) for item in batch]
