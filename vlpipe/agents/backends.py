"""Expert backends by kind and name, as timm's ``register_model`` or segment-anything's
``sam_model_registry``: ``name -> builder(weights, device, dtype, **options) -> backend``.

Adding a backend is one decorated function next to its class::

    @SAM_BACKENDS.register("hf")
    def load_hf_sam(weights: str, device: str, dtype: str) -> HfSam: ...

A builder declares the options it takes as keyword parameters (``**options`` takes every one);
a node's options that a builder does not declare are not passed to it and not part of its pool
key (SAM's ``variant`` matters to ``official`` only, ``text_threshold`` to ``grounding_dino``
only). Nodes get their backends through :meth:`BackendRegistry.load`, that is through the
:class:`~vlpipe.pipeline.ModelPool`, with those options in the key. The built-in backends
register when their module is imported; a registry imports its modules on first use.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

Builder = Callable[..., Any]


class BackendRegistry:
    """The backends of one expert kind (``"sam"``, ``"grounding"``, ...)."""

    def __init__(self, kind: str, label: str, modules: tuple[str, ...]) -> None:
        self.kind, self.label = kind, label  # label: the kind as error messages name it
        self._modules = modules
        self._builders: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        """Decorator: make ``builder(weights, device, dtype, **options)`` the backend ``name``."""
        def add(builder: Builder) -> Builder:
            self._builders[name] = builder
            return builder
        return add

    def names(self) -> list[str]:
        for module in self._modules:
            importlib.import_module(module)
        return sorted(self._builders)

    def check(self, name: str) -> None:
        """Raise a ValueError listing the known backends unless ``name`` is one."""
        if name not in self.names():
            raise ValueError(f"unknown {self.label} backend {name!r} "
                             f"(known: {', '.join(self.names())})")

    def options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """The ``options`` that backend ``name``'s builder takes."""
        self.check(name)
        params = inspect.signature(self._builders[name]).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return dict(options)
        taken = {p.name for p in params if p.kind == p.KEYWORD_ONLY}
        return {k: v for k, v in options.items() if k in taken}

    def build(self, name: str, weights: str | None, device: str, dtype: Any,
              **options: Any) -> Any:
        """A new backend ``name`` (outside any pool: tests, benches, scripts)."""
        taken = self.options(name, options)
        return self._builders[name](weights, device, dtype, **taken)

    def load(self, pool, name: str, weights: str | None, device: str, dtype: Any,
             **options: Any) -> Any:
        """Backend ``name`` from ``pool``: built on the first ask for these weights, device,
        dtype and options, shared and LRU-evicted after."""
        taken = self.options(name, options)
        return pool.get(f"{self.kind}-{name}", weights, device, dtype,
                        lambda: self._builders[name](weights, device, dtype, **taken),
                        options=taken)


SAM_BACKENDS = BackendRegistry("sam", "SAM", ("vlpipe.agents.sam.backends", "vlpipe.agents.sam.sam3"))
GROUNDING_BACKENDS = BackendRegistry(
    "grounding", "grounding",
    ("vlpipe.agents.grounding.dino", "vlpipe.agents.grounding.owlv2",
     "vlpipe.agents.grounding.sam3"))
OCR_BACKENDS = BackendRegistry("ocr", "OCR", ("vlpipe.agents.ocr.backends",))
MLLM_BACKENDS = BackendRegistry("mllm", "MLLM",
                                ("vlpipe.agents.mllm.model", "vlpipe.agents.mllm.served",
                                 "vlpipe.agents.mllm.locators"))
