"""The node contract: typed ports, a batched ``run``, a device.

A node is a plain object. Its class declares input and output ports as ``{name: type}``; the
executor calls ``run`` with a list of items, each a dict of input values, and expects one dict of
output values back per item, in order. Port types are short strings (``"image"``,
``"detections"``, ...); ``"any"`` matches every type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

ANY = "any"


def types_match(produced: str, wanted: str) -> bool:
    """True when an output port of type ``produced`` may feed an input of type ``wanted``."""
    return produced == wanted or ANY in (produced, wanted)


class Node(ABC):
    """Base class of every pipeline node.

    Subclasses set ``inputs`` / ``outputs`` (port name -> type), list optional inputs in
    ``optional``, and implement ``run``. ``params`` are the node's settings from the pipeline file;
    ``device`` says where its models live. ``max_batch`` caps the items per ``run`` call.
    """

    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}
    optional: ClassVar[frozenset[str]] = frozenset()
    max_batch: ClassVar[int] = 64

    def __init__(self, name: str, *, device: str = "cpu", **params: Any) -> None:
        self.name = name
        self.device = device
        self.params = params
        self.pool = None  # set by the executor: the ModelPool shared by every node

    @abstractmethod
    def run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Map a list of input dicts to a list of output dicts of the same length."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


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
