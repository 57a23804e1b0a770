"""VL-SAM attention maps: head mean-max weighting, regularized attention flow, object maps.

Pure torch. Attention is reduced layer by layer, so the extra memory is O(N^2) whatever the
number of layers and heads: a layer's (H, N, N) attention is turned into one (N, N) matrix as soon
as it arrives and folded into the running flow R.

Notation (as in VL-SAM, arXiv 2410.05963): ``A[h, i, j]`` is the causal, softmaxed
attention of query token ``i`` to key token ``j`` in head ``h`` of one layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def head_weights(attn: Tensor) -> Tensor:
    """Mean-max head weights of one layer.

    Args:
        attn: (H, N, N) softmaxed causal attention, query i, key j.

    Returns:
        (H,) float32: ``W[h] = mean_i max_j attn[h, i, j]``.
    """
    return attn.amax(dim=-1).float().mean(dim=-1)


class AttentionFlow:
    """Streaming VL-SAM attention flow.

    Each :meth:`update` takes one layer, bottom layer first, and reduces it at once to

        S'_l = mean_h(W[h] * A[h])       (or mean_h(A[h]) without head weighting)
        S'_l[:, j] *= (j + 1) / N        (with regularization: 1 - (L0_j - 1)/N, L0_j = N - j)
        R_l = (I + S'_l) @ (I + R_{l-1}),  R_0 = 0

    Only R (N, N) float32 is kept; layers are never stored. With ``flow=False`` the result is the
    last layer's S'_L alone (no flow: with neither head weighting nor regularization, the
    last layer's mean attention over heads, VL-SAM's first ablation row).
    """

    def __init__(self, head_weighting: bool = True, regularize: bool = True,
                 flow: bool = True) -> None:
        self.head_weighting = head_weighting
        self.regularize = regularize
        self.flow = flow
        self.num_layers = 0
        self._flow: Tensor | None = None

    def update(self, attn: Tensor) -> None:
        """Fold one layer into the flow.

        Args:
            attn: (H, N, N) or (1, H, N, N) softmaxed causal attention, any float dtype/device.
                The flow lives on the device of the first layer.
        """
        if attn.dim() == 4 and attn.shape[0] == 1:
            attn = attn[0]
        if attn.dim() != 3 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"expected attention of shape (H, N, N), got {tuple(attn.shape)}")
        heads, n, _ = attn.shape

        if self.head_weighting:
            weights = head_weights(attn)
        else:
            weights = torch.ones(heads, dtype=torch.float32, device=attn.device)
        # float32 layers in one product; others a few heads at a time, never a float32 copy
        # of the whole layer.
        step = heads if attn.dtype == torch.float32 else 4
        s = torch.zeros(n, n, dtype=torch.float32, device=attn.device)
        for h in range(0, heads, step):
            s.add_(torch.tensordot(weights[h : h + step], attn[h : h + step].float(), dims=1))
        s.div_(heads)
        self.update_reduced(s)

    def update_reduced(self, s: Tensor) -> None:
        """Fold one layer given already reduced over heads.

        Args:
            s: (N, N) float32 ``mean_h(W[h] * A[h])`` (or ``mean_h(A[h])``), e.g. from
                :func:`vlpipe.agents.mllm.flow_attention.reduce_attention`; used as a buffer.
        """
        n = s.shape[0]
        if self._flow is not None and self._flow.shape[0] != n:
            raise ValueError(f"layer has {n} tokens, earlier layers had {self._flow.shape[0]}")
        if self.regularize:
            s.mul_(torch.arange(1, n + 1, dtype=torch.float32, device=s.device) / n)

        if not self.flow:  # keep the last layer's S' only
            self._flow = s
            self.num_layers += 1
            return
        if self._flow is None:  # R_1 = (I + S'_1) @ I
            self._flow = s
        else:  # (I + S)(I + R) = I + R + (S + S @ R)
            s = s.to(self._flow.device)
            self._flow.add_(torch.addmm(s, s, self._flow))
        self._flow.diagonal().add_(1.0)
        self.num_layers += 1

    @property
    def result(self) -> Tensor:
        """(N, N) float32 flow R_L after the last layer seen (the live buffer: later updates
        change it in place; clone it to keep a snapshot)."""
        if self._flow is None:
            raise RuntimeError("AttentionFlow.result: no layer has been given to update()")
        return self._flow


def attention_flow(
    layers: Iterable[Tensor], *, head_weighting: bool = True, regularize: bool = True
) -> Tensor:
    """Attention flow over per-layer attention, bottom layer first.

    Args:
        layers: iterable (e.g. a generator) of (H, N, N) softmaxed causal attention tensors.

    Returns:
        (N, N) float32 flow R_L.
    """
    flow = AttentionFlow(head_weighting=head_weighting, regularize=regularize)
    for attn in layers:
        flow.update(attn)
        del attn  # let the layer go before the iterable makes the next one
    return flow.result


READOUTS = ("name", "preceding", "both")


def query_positions(tokens: Sequence[int], prompt_len: int, read: str = "name") -> list[int]:
    """Rows of the flow that make one object's map.

    Args:
        tokens: answer-token indices that spell the object's name (non-empty, ascending).
        prompt_len: tokens before the answer (answer token k sits at ``prompt_len + k``).
        read: ``"name"``: the name's own tokens; ``"preceding"``: the one token before the
            name, the query whose next-token prediction produced the name's first token (in a
            causal LM that row, not the name's, chose the name; a generate call with
            ``output_attentions`` reports it at the step that emits the name); ``"both"``.

    Returns:
        ascending positions in the prompt + answer sequence.
    """
    if read not in READOUTS:
        raise ValueError(f"unknown read-out {read!r} (known: {', '.join(READOUTS)})")
    name = [prompt_len + t for t in tokens]
    preceding = [name[0] - 1]
    return {"name": name, "preceding": preceding, "both": preceding + name}[read]


def object_map(
    R: Tensor,
    query_positions: Sequence[int] | Tensor,
    image_positions: Tensor,
    grid: tuple[int, int],
) -> Tensor:
    """Attention map of one object over the image grid.

    Args:
        R: (N, N) attention flow.
        query_positions: (Q,) positions of the tokens that spell the object name.
        image_positions: (gh * gw,) positions of the image tokens, in row-major grid order.
        grid: (gh, gw) vision grid.

    Returns:
        (gh, gw) float32: mean over the query rows of R, at the image-token columns.
    """
    gh, gw = grid
    image_positions = torch.as_tensor(image_positions, device=R.device).long()
    query_positions = torch.as_tensor(query_positions, device=R.device).long()
    if image_positions.numel() != gh * gw:
        raise ValueError(f"{image_positions.numel()} image positions for a {gh}x{gw} grid")
    if query_positions.numel() == 0:
        raise ValueError("object_map needs at least one query position")
    rows = R.index_select(0, query_positions.reshape(-1)).float()
    return rows.mean(dim=0)[image_positions.reshape(-1)].reshape(gh, gw)
