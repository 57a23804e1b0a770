import pytest
import torch

from vlpipe.agents.mllm.attention import (AttentionFlow, attention_flow, head_weights, object_map,
                                     query_positions)


def causal_layers(L, H, N, seed=0, plant=None):
    """Yield L random (H, N, N) softmaxed causal attention layers.

    plant=(rows, col, boost) adds `boost` to the logits of `rows` at key `col` in every head/layer.
    """
    g = torch.Generator().manual_seed(seed)
    upper = torch.ones(N, N, dtype=torch.bool).triu(1)
    for _ in range(L):
        logits = torch.randn(H, N, N, generator=g, dtype=torch.float64)
        if plant is not None:
            rows, col, boost = plant
            logits[:, rows, col] += boost
        yield logits.masked_fill(upper, float("-inf")).softmax(-1)


def reference_flow(S, head_weighting=True, regularize=True):
    """Plain VL-SAM flow on the fully materialized (L, H, N, N) tensor, in float64."""
    S = S.double()
    L, H, N, _ = S.shape
    W = S.amax(-1).mean(-1) if head_weighting else torch.ones(L, H, dtype=torch.float64)
    Sp = torch.einsum("lh,lhij->lij", W, S) / H
    if regularize:
        L0 = torch.tensor([N - j for j in range(N)], dtype=torch.float64)  # unmasked per column
        Sp = Sp * (1 - (L0 - 1) / N)
    eye = torch.eye(N, dtype=torch.float64)
    R = torch.zeros(N, N, dtype=torch.float64)
    for l in range(L):
        R = (eye + Sp[l]) @ (eye + R)
    return R


def test_head_weights_matches_loops():
    (A,) = causal_layers(1, 3, 6)
    expected = [sum(max(A[h, i, j] for j in range(6)) for i in range(6)) / 6 for h in range(3)]
    w = head_weights(A)
    assert w.shape == (3,) and w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("head_weighting", [True, False])
@pytest.mark.parametrize("regularize", [True, False])
def test_flow_matches_reference(head_weighting, regularize):
    S = torch.stack(list(causal_layers(6, 4, 12, seed=1)))
    expected = reference_flow(S, head_weighting, regularize)
    got = attention_flow(
        (layer.float() for layer in S), head_weighting=head_weighting, regularize=regularize
    )
    assert got.shape == (12, 12) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_streaming_accumulator_and_batch_dim():
    layers = list(causal_layers(4, 2, 8, seed=2))
    flow = AttentionFlow()
    with pytest.raises(RuntimeError):
        flow.result
    for layer in layers:
        flow.update(layer[None])  # (1, H, N, N)
    assert flow.num_layers == 4
    torch.testing.assert_close(flow.result, attention_flow(iter(layers)))
    with pytest.raises(ValueError):
        flow.update(torch.rand(2, 5, 5))  # wrong N
    with pytest.raises(ValueError):
        flow.update(torch.rand(5, 5))


def test_hand_worked_tiny_case():
    # N=2, H=1: A = [[1, 0], [.25, .75]].  W = mean(1, .75) = .875.
    # S' = .875 * A = [[.875, 0], [.21875, .65625]]; regularized columns * (1/2, 2/2):
    # S' = [[.4375, 0], [.109375, .65625]];  R1 = I + S' = [[1.4375, 0], [.109375, 1.65625]].
    # Same layer again: R2 = (I + S') @ (I + R1) = M @ [[2.4375, 0], [.109375, 2.65625]]
    #   = [[1.4375 * 2.4375, 0], [.109375 * 2.4375 + 1.65625 * .109375, 1.65625 * 2.65625]]
    #   = [[3.50390625, 0], [0.44775390625, 4.3994140625]].
    A = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    torch.testing.assert_close(attention_flow([A]), torch.tensor([[1.4375, 0.0], [0.109375, 1.65625]]))
    expected = torch.tensor([[3.50390625, 0.0], [0.44775390625, 4.3994140625]])
    torch.testing.assert_close(attention_flow([A, A]), expected)
    # Plain flow (no weighting, no regularization): R1 = I + A.
    torch.testing.assert_close(
        attention_flow([A], head_weighting=False, regularize=False),
        torch.tensor([[2.0, 0.0], [0.25, 1.75]]),
    )


def test_object_map_reads_rows_and_grid():
    R = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    image_positions = torch.tensor([2, 3, 4, 5, 6, 7])
    m = object_map(R, [8, 9], image_positions, (2, 3))
    expected = ((R[8, 2:8] + R[9, 2:8]) / 2).reshape(2, 3)
    assert m.dtype == torch.float32
    torch.testing.assert_close(m, expected)
    with pytest.raises(ValueError):
        object_map(R, [8], image_positions, (2, 2))


def test_query_positions_by_hand():
    # a name spelled by answer tokens 3 and 4 after a 10-token prompt sits at rows 13, 14; the
    # token that predicted its first token is row 12
    assert query_positions([3, 4], 10, "name") == [13, 14]
    assert query_positions([3, 4], 10, "preceding") == [12]
    assert query_positions([3, 4], 10, "both") == [12, 13, 14]
    # the answer's first name was predicted by the prompt's last token
    assert query_positions([0], 10, "preceding") == [9]
    with pytest.raises(ValueError):
        query_positions([3], 10, "next")


def _planted_maps():
    N, gw = 40, 4
    image_positions = torch.arange(4, 4 + gw * gw)
    obj, planted = [N - 3, N - 2], gw * gw - 3  # a late patch: collapse pulls toward patch 0
    maps = {}
    for reg in (True, False):
        layers = causal_layers(32, 4, N, seed=3, plant=(obj, 4 + planted, 4.0))
        R = attention_flow(layers, regularize=reg)
        maps[reg] = object_map(R, obj, image_positions, (gw, gw)).flatten()
    return maps, planted


def test_planted_patch_wins_with_regularization_only():
    maps, planted = _planted_maps()
    assert int(maps[True].argmax()) == planted
    # Without regularization the flow collapses onto the earliest tokens.
    assert int(maps[False].argmax()) == 0
    assert maps[False][:2].sum() > maps[False][planted]


def test_float16_input_gives_float32_output():
    layers = list(causal_layers(8, 4, 16, seed=4))
    full = attention_flow(layer.float() for layer in layers)
    half = attention_flow(layer.half() for layer in layers)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=5e-3, atol=0)


@pytest.mark.parametrize("head_weighting", [True, False])
def test_without_flow_only_the_last_layer_counts(head_weighting):
    """flow=False: the last layer's (weighted) mean over heads, earlier layers ignored; with
    neither weighting nor regularization, VL-SAM's 'last-layer mean attention'."""
    layers = [layer.float() for layer in causal_layers(3, 4, 6, seed=5)]
    acc = AttentionFlow(head_weighting=head_weighting, regularize=False, flow=False)
    for layer in layers:
        acc.update(layer)
    last = layers[-1].double()
    expected = torch.zeros(6, 6, dtype=torch.float64)
    for h in range(4):
        w = sum(max(last[h, i, j] for j in range(6)) for i in range(6)) / 6 if head_weighting else 1.0
        expected += w * last[h] / 4
    assert acc.num_layers == 3
    torch.testing.assert_close(acc.result.double(), expected, rtol=1e-6, atol=1e-6)
