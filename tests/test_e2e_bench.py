"""bench/e2e.py: forced answers of a fixed length with names the recipe parses (tiny LLaVA); the
full-size models built from configs have the released models' parameter counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = str(Path(__file__).resolve().parents[1] / "bench")
sys.path.insert(0, BENCH)
try:
    import e2e
    from e2e import ANSWER, forced_generate
finally:
    while BENCH in sys.path:
        sys.path.remove(BENCH)

from vlpipe.agents.mllm.model import Mllm  # noqa: E402
from vlpipe.agents.mllm.nodes import ObjectListNode  # noqa: E402
from vlpipe.agents.tiles.grid import Tile  # noqa: E402
from vlpipe.agents.views import View  # noqa: E402
from vlpipe.pipeline.models import ModelPool  # noqa: E402


def test_forced_answers_have_the_length_and_parse_into_names(tiny_models, monkeypatch):
    calls = []
    real = Mllm.generate

    def counting(self, images, prompts, max_new_tokens=None, fit="pad"):
        gens = real(self, images, prompts, max_new_tokens, fit)
        calls.append((max_new_tokens, self.model.generation_config.min_new_tokens))
        return gens

    monkeypatch.setattr(Mllm, "generate", forced_generate(counting, 7))
    node = ObjectListNode("objects", model=str(tiny_models / "llava"), questions=2, device="cpu")
    node.pool = ModelPool()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    view = View(image, Tile(0, 0, 64, 48), (48, 64))
    out = node.run([{"views": [view]}])[0]["objects"]
    assert calls == [(7, 7)]  # the real generate ran once for both questions, at the forced length
    assert len(out) == 2
    for obj in out:
        assert len(obj.generation.answer_ids) == 7
        assert obj.generation.text.replace(" ", "") == "".join(ANSWER.split()[:7])
        assert [name for name, _ in obj.names] == ["dog", "car"]  # the parser drops the colour


class Built(Exception):
    """Raised by the patched model constructor, carrying the parameter count."""


@pytest.mark.parametrize("build, released", [
    (lambda: e2e.MLLMS["llava-1.5"][1], 7_063_427_072),  # llava-hf/llava-1.5-7b-hf
    (lambda: e2e.MLLMS["qwen2.5-vl"][1], 8_292_166_656),  # Qwen/Qwen2.5-VL-7B-Instruct
    (lambda: e2e.SAMS["vit-h"][2], 641_090_864),  # facebook/sam-vit-huge (= KerasHub's SAM-H)
])
def test_full_scale_models_have_the_released_parameter_counts(build, released, monkeypatch):
    def on_meta(model_cls, cfg, device, dtype):
        with torch.device("meta"):
            raise Built(sum(p.numel() for p in model_cls(cfg).parameters()))

    monkeypatch.setattr(e2e, "_seeded", on_meta)
    with pytest.raises(Built) as built:
        build()(None, "full", "meta", torch.bfloat16)
    assert built.value.args[0] == released
