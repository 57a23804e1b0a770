"""ModelPool: each model is loaded once per (kind, weights, device, dtype, options) and shared.

Nodes ask ``pool.get(kind, weights, device, dtype, loader, options)``; the first ask calls
``loader()``, later asks with the same key return the same object. With a memory budget, the least recently used models are
dropped to make room (their memory returns once no node holds them).
"""

from __future__ import annotations

import gc
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class ModelKey(NamedTuple):
    kind: str
    weights: str
    device: str
    dtype: str
    options: tuple = ()  # sorted (name, value) pairs, values made hashable by frozen()


def frozen(value: Any) -> Any:
    """A hashable stand-in for an option value: mappings become sorted (key, value) tuples,
    lists and tuples tuples, sets frozensets, recursively."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(frozen(v) for v in value)
    return value


def model_nbytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of a torch module, of a tuple/list/dict of
    them (e.g. ``(processor, model)``), or of a backend's ``model``; 0 for anything else."""
    if isinstance(obj, (tuple, list)):
        return sum(model_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(model_nbytes(o) for o in obj.values())
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):
        return sum(t.numel() * t.element_size() for t in [*obj.parameters(), *obj.buffers()])
    model = getattr(obj, "model", None)
    return 0 if model is None else model_nbytes(model)


class ModelPool:
    """Lazy, shared, LRU-evicted model cache. ``budget_bytes=None`` never evicts."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[ModelKey, tuple[Any, int]] = OrderedDict()
        self.loads = 0
        self.hits = 0
        self.evictions = 0

    def get(self, kind: str, weights: str, device: str, dtype: Any,
            loader: Callable[[], Any], options: Mapping[str, Any] | None = None) -> Any:
        key = ModelKey(kind, str(weights), str(device), str(dtype), frozen(options or {}))
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
