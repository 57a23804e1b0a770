"""Attention that feeds the VL-SAM flow without materialising a layer's (H, N, N) weights.

:func:`reduce_attention` computes one layer's attention output and its head-weighted
reduction ``mean_h W[h]·A[h]`` one head and one block of query rows at a time, so the extra
memory is one (N, N) float32 buffer plus one (rows, N) block, whatever H. The block's softmax
is computed once and serves both the output (``P @ V``, the numbers eager attention gives) and
the reduction, so the layer costs one ``Q @ Kᵀ`` as in eager attention.

:func:`flow_attention` is that computation registered in transformers' ``AttentionInterface``
(as ``"vlpipe_flow"``, with SDPA's mask): inside :func:`collect_flow`, the language-model
attention layers named there hand their reduction to a callback; every other attention call
(the vision tower, other models) runs plain SDPA.

A prompt prefix shared by several sequences (a view's image tokens) can run once: inside
:func:`record_prefix` the layers run SDPA and keep their queries, and a later
:func:`collect_flow` over the prefix's KV cache puts those queries back in front of the new
ones, so each layer's reduction still covers all N rows (the prefix rows' attention depends on
the prefix only, but the head weights average over every row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

NAME = "vlpipe_flow"
BLOCK_ELEMENTS = 1 << 20  # query rows per block: this many scores (4 MiB in float32)


@dataclass
class PrefixQueries:
    """Per attention layer (keyed by module id): the queries (H, P, d) of a cached prefix and
    the SDPA mask its rows had (None: causal, or (P, P) bool / additive float)."""

    layers: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Sink:
    modules: frozenset[int]
    reduced: Callable[[Tensor], None] | None  # None: record the prefix's queries
    head_weighting: bool
    prefix: PrefixQueries


_SINK: ContextVar[_Sink | None] = ContextVar("vlpipe_flow_sink", default=None)


def allowed_keys(mask: Tensor | None, rows: slice, q_len: int, kv_len: int,
                 device: torch.device) -> Tensor:
    """(rows, kv_len) bool: which keys each query row of the block may attend.

    ``mask`` is SDPA's: None (causal, queries are the last ``q_len`` positions), a bool
    (q_len, kv_len) (True: attend) or an additive float (q_len, kv_len) mask."""
    if mask is None:
        i = torch.arange(rows.start, rows.stop, device=device)[:, None] + (kv_len - q_len)
        return torch.arange(kv_len, device=device)[None, :] <= i
    block = mask[rows]
    return block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2


def prefixed_mask(prefix_mask: Tensor | None, mask: Tensor | None, prefix_len: int,
                  q_len: int, kv_len: int, device: torch.device) -> Tensor | None:
    """The mask of the cached prefix's P rows on top of the new queries' ``mask``: (P + q_len,
    kv_len) bool, or None (causal) when both are causal. Prefix rows see no key after P."""
    if prefix_len == 0 or (prefix_mask is None and mask is None):
        return mask
    top = allowed_keys(prefix_mask, slice(0, prefix_len), prefix_len, prefix_len, device)
    bottom = allowed_keys(mask, slice(0, q_len), q_len, kv_len, device)
    return torch.cat([torch.nn.functional.pad(top, (0, kv_len - prefix_len)), bottom])


def reduce_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                     scaling: float, head_weighting: bool = True,
                     block_elements: int = BLOCK_ELEMENTS,
                     out_from: int = 0) -> tuple[Tensor, Tensor]:
    """One sequence's attention output and its VL-SAM head reduction, block by block.

    Args:
        query: (H, Nq, d); key, value: (Hkv, N, d) with H a multiple of Hkv (grouped queries:
            head h reads key/value head h // (H / Hkv)); the queries are the last Nq positions.
        mask: None (causal), or (Nq, N) bool (True: attend) or additive float.
        head_weighting: W[h] = mean_i max_j A[h, i, j] (else W = 1).
        out_from: the first query row whose output is wanted (the rows before it, a cached
            prefix's, feed the reduction only).

    Returns:
        out (H, Nq - out_from, d) in ``query``'s dtype, equal to eager attention's
        ``softmax(QKᵀ·s) V``;
        S (Nq, N) float32 = mean_h W[h]·A[h] (softmax in float32, then ``query``'s dtype, as
        eager attention returns its weights).
    """
    heads, q_len, _ = query.shape
    kv_len = key.shape[1]
    group = heads // key.shape[0]
    rows_per_block = max(1, block_elements // kv_len)
    out = torch.empty_like(query[:, out_from:])
    reduced = torch.zeros(q_len, kv_len, dtype=torch.float32, device=query.device)
    layer = torch.empty_like(reduced) if head_weighting else reduced
    blocks = [slice(s, min(s + rows_per_block, q_len)) for s in range(0, q_len, rows_per_block)]
    for h in range(heads):
        k, v = key[h // group], value[h // group]
        row_max_sum = torch.zeros((), dtype=torch.float32, device=query.device)
        for rows in blocks:
            ok = allowed_keys(mask, rows, q_len, kv_len, query.device)
            scores = (query[h, rows] @ k.T * scaling).float()
            probs = scores.masked_fill_(~ok, torch.finfo(torch.float32).min).softmax(-1)
            probs = probs.to(query.dtype)
            first = max(rows.start, out_from)
            if first < rows.stop:
                out[h, first - out_from:rows.stop - out_from] = probs[first - rows.start:] @ v
            if head_weighting:
                row_max_sum += probs.amax(-1).float().sum()
                layer[rows] = probs
            else:
                layer[rows] += probs
        if head_weighting:
            reduced.add_(layer.mul_(row_max_sum / q_len))
    return out, reduced.div_(heads)


def flow_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                   attention_mask: Tensor | None, scaling: float | None = None,
                   dropout: float = 0.0, **kwargs) -> tuple[Tensor, None]:
    """``AttentionInterface`` function: (B, H, Nq, d) query, (B, Hkv, N, d) key/value ->
    ((B, Nq, H, d) output, None). Layers registered by :func:`collect_flow` (batch 1) also
    hand their (P + Nq, N) reduction to its callback, P the recorded prefix's length (0
    without one); under :func:`record_prefix` they keep their queries; any other call runs
    SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sink = _SINK.get()
    if sink is None or id(module) not in sink.modules:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"flow attention takes one sequence, got a batch of {query.shape[0]}")
    mask = None if attention_mask is None else attention_mask[0, 0]
    if sink.reduced is None:
        sink.prefix.layers[id(module)] = (query[0], mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    prefix_query, prefix_mask = sink.prefix.layers.get(id(module), (query[0, :, :0], None))
    p, q_len, kv_len = prefix_query.shape[1], query.shape[2], key.shape[2]
    out, reduced = reduce_attention(
        torch.cat([prefix_query, query[0]], 1), key[0], value[0],
        prefixed_mask(prefix_mask, mask, p, q_len, kv_len, query.device), scaling,
        sink.head_weighting, out_from=p)
    sink.reduced(reduced)
    return out.transpose(0, 1)[None], None


def register() -> None:
    """Register ``"vlpipe_flow"`` (attention and mask functions) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, flow_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


@contextmanager
def _sink(sink: _Sink):
    token = _SINK.set(sink)
    try:
        yield sink.prefix
    finally:
        _SINK.reset(token)


def collect_flow(modules: Iterable[torch.nn.Module], fn: Callable[[Tensor], None],
                 head_weighting: bool = True, prefix: PrefixQueries | None = None):
    """While active, each of ``modules`` calling :func:`flow_attention` passes its (N, N)
    reduction to ``fn``, in call order; with ``prefix`` (from :func:`record_prefix`, its keys
    and values in the model's cache) N counts the prefix's rows too."""
    return _sink(_Sink(frozenset(id(m) for m in modules), fn, head_weighting,
                       prefix or PrefixQueries()))


def record_prefix(modules: Iterable[torch.nn.Module]):
    """While active, each of ``modules`` calling :func:`flow_attention` runs SDPA and keeps its
    queries; yields the :class:`PrefixQueries` being filled."""
    return _sink(_Sink(frozenset(id(m) for m in modules), None, True, PrefixQueries()))
