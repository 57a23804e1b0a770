"""The flow attention function against plain eager attention: outputs and head reductions."""

import pytest
import torch

from vlpipe.agents.mllm.attention import AttentionFlow, attention_flow, head_weights
from vlpipe.agents.mllm.flow_attention import prefixed_mask, reduce_attention


def eager(query, key, value, mask, scaling):
    """Plain eager attention (as transformers' eager_attention_forward): (H, Nq, N) weights and
    (H, Nq, d) output, keys/values repeated for grouped queries; mask additive (Nq, N) or None."""
    group = query.shape[0] // key.shape[0]
    key, value = key.repeat_interleave(group, 0), value.repeat_interleave(group, 0)
    scores = query @ key.transpose(1, 2) * scaling
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
    return weights, weights @ value


def causal_additive(q_len, kv_len, pad=0, dtype=torch.float32):
    """(q_len, kv_len) additive mask: causal with queries last, the first ``pad`` keys masked."""
    i = torch.arange(q_len)[:, None] + kv_len - q_len
    j = torch.arange(kv_len)[None, :]
    ok = (j <= i) & (j >= pad)
    return torch.zeros(q_len, kv_len, dtype=dtype).masked_fill(~ok, torch.finfo(dtype).min)


def qkv(heads, kv_heads, q_len, kv_len, d=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(heads, q_len, d, generator=g).to(dtype),
            torch.randn(kv_heads, kv_len, d, generator=g).to(dtype),
            torch.randn(kv_heads, kv_len, d, generator=g).to(dtype))


@pytest.mark.parametrize("kv_heads", [6, 2])          # plain and grouped queries
@pytest.mark.parametrize("head_weighting", [True, False])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("block", [1 << 22, 40])      # one block, or 2 rows per block
def test_reduction_and_output_equal_eager(kv_heads, head_weighting, mask_kind, block):
    q, k, v = qkv(6, kv_heads, 20, 20)
    additive = causal_additive(20, 20)
    mask = {"none": None, "bool": additive == 0, "float": additive}[mask_kind]
    weights, expected = eager(q, k, v, additive, 0.3)
    out, reduced = reduce_attention(q, k, v, mask, 0.3, head_weighting, block_elements=block)
    w = head_weights(weights) if head_weighting else torch.ones(6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reduced, torch.einsum("h,hij->ij", w, weights) / 6,
                               rtol=1e-5, atol=1e-6)


def test_padding_and_queries_after_a_cached_prefix():
    """Left padding (first keys masked) with queries being the last 5 of 12 positions."""
    q, k, v = qkv(4, 4, 5, 12, seed=1)
    additive = causal_additive(5, 12, pad=3)
    weights, expected = eager(q, k, v, additive, 0.5)
    out, reduced = reduce_attention(q, k, v, additive == 0, 0.5, block_elements=24)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reduced, torch.einsum("h,hij->ij", head_weights(weights), weights) / 4,
                               rtol=1e-5, atol=1e-6)
    assert reduced[:, :3].abs().max() == 0


def test_bfloat16_layer_matches_eager_in_bfloat16():
    q, k, v = qkv(4, 2, 16, 16, dtype=torch.bfloat16, seed=2)
    weights, expected = eager(q, k, v, causal_additive(16, 16, dtype=torch.bfloat16), 0.35)
    out, reduced = reduce_attention(q, k, v, None, 0.35, block_elements=64)
    assert out.dtype == torch.bfloat16 and reduced.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    reference = torch.einsum("h,hij->ij", head_weights(weights), weights.float()) / 4
    torch.testing.assert_close(reduced, reference, rtol=1e-2, atol=1e-3)


def test_flow_of_reduced_layers_equals_flow_of_full_layers():
    layers = [qkv(4, 4, 10, 10, seed=s) for s in range(3)]
    full = [eager(q, k, v, causal_additive(10, 10), 0.4)[0] for q, k, v in layers]
    acc = AttentionFlow()
    for q, k, v in layers:
        acc.update_reduced(reduce_attention(q, k, v, None, 0.4, block_elements=30)[1])
    torch.testing.assert_close(acc.result, attention_flow(full), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix_mask", ["none", "bool", "float"])
def test_prefix_queries_in_front_give_the_full_reduction_and_the_suffix_output(suffix_mask):
    """A cached prefix of 7 rows: its queries put back in front of the 5 new ones, with the
    joined mask, give the 12-row reduction of one full pass and the new rows' output."""
    q, k, v = qkv(4, 2, 12, 12, seed=3)
    weights, expected = eager(q, k, v, causal_additive(12, 12), 0.4)
    additive = causal_additive(5, 12)
    mask = {"none": None, "bool": additive == 0, "float": additive}[suffix_mask]
    joined = prefixed_mask(None, mask, 7, 5, 12, q.device)
    assert joined is None or joined.tolist() == (causal_additive(12, 12) == 0).tolist()
    out, reduced = reduce_attention(q, k, v, joined, 0.4, block_elements=36, out_from=7)
    assert out.shape == (4, 5, 8)
    torch.testing.assert_close(out, expected[:, 7:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reduced, torch.einsum("h,hij->ij", head_weights(weights), weights) / 4,
                               rtol=1e-5, atol=1e-6)
