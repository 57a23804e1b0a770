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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

NAME = "vlpipe_flow"
BLOCK_ELEMENTS = 1 << 20  # query rows per block: this many scores (4 MiB in float32)

_SINK: ContextVar[tuple[frozenset[int], Callable[[Tensor], None], bool] | None] = ContextVar(
    "vlpipe_flow_sink", default=None)


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


def reduce_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                     scaling: float, head_weighting: bool = True,
                     block_elements: int = BLOCK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """One sequence's attention output and its VL-SAM head reduction, block by block.

    Args:
        query: (H, Nq, d); key, value: (Hkv, N, d) with H a multiple of Hkv (grouped queries:
            head h reads key/value head h // (H / Hkv)); the queries are the last Nq positions.
        mask: None (causal), or (Nq, N) bool (True: attend) or additive float.
        head_weighting: W[h] = mean_i max_j A[h, i, j] (else W = 1).

    Returns:
        out (H, Nq, d) in ``query``'s dtype, equal to eager attention's ``softmax(QKᵀ·s) V``;
        S (Nq, N) float32 = mean_h W[h]·A[h] (softmax in float32, then ``query``'s dtype, as
        eager attention returns its weights).
    """
    heads, q_len, _ = query.shape
    kv_len = key.shape[1]
    group = heads // key.shape[0]
    rows_per_block = max(1, block_elements // kv_len)
    out = torch.empty_like(query)
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
            out[h, rows] = probs @ v
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
    hand their (Nq, N) reduction to its callback; any other call runs SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sink = _SINK.get()
    if sink is None or id(module) not in sink[0]:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"flow attention takes one sequence, got a batch of {query.shape[0]}")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    mask = None if attention_mask is None else attention_mask[0, 0]
    out, reduced = reduce_attention(query[0], key[0], value[0], mask, scaling, sink[2])
    sink[1](reduced)
    return out.transpose(0, 1)[None], None


def register() -> None:
    """Register ``"vlpipe_flow"`` (attention and mask functions) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, flow_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


@contextmanager
def collect_flow(modules: Iterable[torch.nn.Module], fn: Callable[[Tensor], None],
                 head_weighting: bool = True):
    """While active, each of ``modules`` calling :func:`flow_attention` passes its (Nq, N)
    reduction to ``fn``, in call order."""
    token = _SINK.set((frozenset(id(m) for m in modules), fn, head_weighting))
    try:
        yield
    finally:
        _SINK.reset(token)
