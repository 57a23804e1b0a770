"""Loading weights (devices, dtypes, errors that say how to get missing weights) and saving the
tiny random ones."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from ..pipeline import SetupError


HUB_PROBE_SECONDS = 3.0


class WeightsNotFound(SetupError):
    """The weights of a model are neither a local path nor in the Hugging Face cache (the run
    stops: no item could run)."""


def resolve_device(device: str | None) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``; others unchanged.
    ValueError (a node's bad params, before anything loads) for a name torch does not know.
    Whether this machine has the device is :func:`missing_device`'s question: a Ray run may
    name a device only its workers have."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    return device


def missing_device(device: str) -> str | None:
    """Why this machine cannot run on ``device`` (a name :func:`resolve_device` took), or None
    when it can."""
    kind = torch.device(resolve_device(device))
    gpus = torch.cuda.device_count() if kind.type == "cuda" else None
    if gpus == 0 or (kind.type == "mps" and not torch.backends.mps.is_available()):
        return f"device {device!r}: this machine has no {kind.type.upper()} device (use auto or cpu)"
    if gpus is not None and kind.index is not None and kind.index >= gpus:
        return f"device {device!r}: this machine has {gpus} CUDA GPU(s), numbered from 0"
    return None


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, check_dtype(dtype))


def check_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    """``dtype`` as given when it is ``"auto"`` (or None) or names a torch floating-point
    dtype; ValueError otherwise (a node's bad params, before anything loads)."""
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r} (use auto, float32, float16, bfloat16)")
    return dtype


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether huggingface_hub runs offline (``HF_HUB_OFFLINE``, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached, or None when it answers:
    one request with a short timeout and no retries (the hub client retries a dead network for
    minutes). Asked once per process."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any transport error of the HTTP client means "no"
        return f"{type(exc).__name__}: {exc}"
    return None


def fetch_hint(model: str, kind: str, unreachable: str | None = None) -> str:
    """The message for weights that could not be found."""
    from huggingface_hub import constants

    if hub_offline():
        why = " and HF_HUB_OFFLINE is set"
    elif unreachable is not None:
        why = f" and the hub ({constants.ENDPOINT}) cannot be reached ({unreachable})"
    else:
        why = ""
    return (f"cannot load the {kind} model {model!r}: it is not a local folder and it is not in "
            f"the Hugging Face cache ({hf_cache_dir()}){why}. Fetch it on a machine with "
            f"internet: `hf download {model}` (or `huggingface-cli download {model}`), or pass "
            "a local path.")


def from_pretrained(cls: Any, model: str, kind: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(model, **kwargs)`` with a clear error when weights are missing.

    When the hub cannot be reached (and the hub client is not offline already), only the cache
    is read, so a missing model fails in seconds instead of after minutes of retries.
    ``trust_remote_code`` is passed through only when the caller set it explicitly.
    """
    local = Path(model).expanduser()
    if local.exists():
        model = str(local)
    elif model.startswith((".", "/", "~")):
        raise WeightsNotFound(f"cannot load the {kind} model: no folder {str(local)!r}")
    unreachable = None if local.exists() or hub_offline() else hub_unreachable()
    if unreachable is not None:
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return cls.from_pretrained(model, **kwargs)
    except OSError as exc:  # transformers raises OSError for missing repos/files
        raise WeightsNotFound(fetch_hint(model, kind, unreachable) + f" ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0]})") from None


def save_seeded(model_cls: Any, config: Any, processor: Any, out: Path, seed: int) -> Path:
    """Build ``model_cls(config)`` with random weights from ``seed`` (the caller's RNG state is
    left as it was) and save it with ``processor`` to ``out``: the tiny test models."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
