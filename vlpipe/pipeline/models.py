"""ModelPool: each model is loaded once per (kind, weights, device, dtype) and shared.

Nodes ask ``pool.get(kind, weights, device, dtype, loader)``; the first ask calls ``loader()``,
later asks return the same object. With a memory budget, the least recently used models are
dropped to make room (their memory returns once no node holds them).
"""

from __future__ import annotations

import gc
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple


class ModelKey(NamedTuple):
    kind: str
    weights: str
    device: str
    dtype: str


def model_nbytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of a torch module (or a tuple/list/dict of
    them, e.g. ``(processor, model)``); 0 for anything else."""
    if isinstance(obj, (tuple, list)):
        return sum(model_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(model_nbytes(o) for o in obj.values())
    tensors = []
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):
        tensors = [*obj.parameters(), *obj.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class ModelPool:
    """Lazy, shared, LRU-evicted model cache. ``budget_bytes=None`` never evicts."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[ModelKey, tuple[Any, int]] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.evictions = 0

    def get(self, kind: str, weights: str, device: str, dtype: Any,
            loader: Callable[[], Any]) -> Any:
        key = ModelKey(kind, str(weights), str(device), str(dtype))
        if key in self._models:
            self._models.move_to_end(key)
            self.hits += 1
            return self._models[key][0]
        model = loader()
        size = model_nbytes(model)
        self._make_room(size)
        self._models[key] = (model, size)
        self.loads += 1
        return model

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._models.values())

    def keys(self) -> list[ModelKey]:
        return list(self._models)

    def _make_room(self, size: int) -> None:
        if self.budget_bytes is None:
            return
        while self._models and self.nbytes + size > self.budget_bytes:
            self._models.popitem(last=False)
            self.evictions += 1
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def clear(self) -> None:
        self._models.clear()
        self._make_room(0)
