"""A view's shared prompt prefix run once: the same greedy answers and the same attention
flows as running every question whole, on the tiny model of each family."""

import pytest
import torch

from vlpipe.agents.mllm.families import FAMILIES
from vlpipe.agents.mllm.model import Mllm, shared_prefix_length
from vlpipe.io import load_image
from vlpipe.prompts import load_questions



@pytest.fixture(scope="module")
def image(shared_images):
    return load_image(shared_images / "dog.jpg")


@pytest.fixture(scope="module", params=list(FAMILIES))
def mllm(request, tiny_models):
    return Mllm.load(str(tiny_models / request.param), "cpu", "float32")


@pytest.fixture(scope="module")
def prompts(mllm):
    """Four questions of different lengths (the suffixes are padded to one width)."""
    return [mllm.prompt(q) for q in load_questions("list_objects", 4)]


def test_shared_prefix_length_by_hand():
    rows = [torch.tensor([1, 9, 9, 2, 3]), torch.tensor([1, 9, 9, 2, 4, 5]), torch.tensor([1, 9, 9, 6])]
    assert shared_prefix_length(rows, image_token_id=9) == 3
    # one token of its own is left to every row, even to a row the others start with
    assert shared_prefix_length([torch.tensor([1, 9, 2]), torch.tensor([1, 9, 2, 3])], 9) == 2
    with pytest.raises(ValueError, match="image tokens"):
        shared_prefix_length([torch.tensor([1, 2, 9]), torch.tensor([1, 3, 9])], 9)


def generate_with_scores(mllm, *args, **kw):
    """``mllm.generate(*args, **kw)`` and the (B, T, V) next-token logits of its model.generate."""
    real, scores = mllm.model.generate, []

    def recording(*a, **k):
        out = real(*a, **k, output_scores=True, return_dict_in_generate=True)
        scores.append(torch.stack(out.scores, 1))
        return out.sequences

    mllm.model.generate = recording
    try:
        return mllm.generate(*args, **kw), scores[0]
    finally:
        del mllm.model.generate


def test_generation_over_a_shared_prefix_gives_the_same_tokens(mllm, image, prompts):
    shared, shared_scores = generate_with_scores(mllm, [image] * 4, prompts, max_new_tokens=12)
    whole, whole_scores = generate_with_scores(mllm, [image] * 4, prompts, max_new_tokens=12,
                                               share_prefix=False)
    assert any(len(g.answer_ids) for g in whole)
    for a, b in zip(shared, whole):
        assert a.answer_ids.tolist() == b.answer_ids.tolist()
        assert a.stopped == b.stopped
    torch.testing.assert_close(shared_scores, whole_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head_weighting,regularize,flow", [(True, True, True), (False, True, False)])
def test_flows_over_a_shared_prefix_equal_whole_passes(mllm, image, prompts, head_weighting,
                                                       regularize, flow):
    answers = [g.answer_ids for g in mllm.generate([image] * 4, prompts, max_new_tokens=6)]
    answers[1] = torch.tensor([], dtype=torch.long)  # an empty answer still gets its flow
    shared = mllm.flows(image, prompts, answers, head_weighting, regularize, flow=flow)
    for (R, positions, grid, region, prompt_len), prompt, answer in zip(shared, prompts, answers):
        R_ref, positions_ref, grid_ref, region_ref, prompt_len_ref = mllm.flow(
            image, prompt, answer, head_weighting, regularize, flow=flow)
        assert R.shape == R_ref.shape == (prompt_len + len(answer),) * 2
        torch.testing.assert_close(R, R_ref, rtol=1e-4, atol=1e-6)
        assert positions.tolist() == positions_ref.tolist()
        assert (grid, region, prompt_len) == (grid_ref, region_ref, prompt_len_ref)
    assert mllm.model.config._attn_implementation == "sdpa"
