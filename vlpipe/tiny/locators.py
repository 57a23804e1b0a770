"""Tiny random-weight models of the locator-only families
(:data:`vlpipe.agents.mllm.families.LOCATORS`), one builder each: Florence-2."""

from __future__ import annotations

from pathlib import Path

import torch

from . import SEED
from .mllm import FILLER_WORDS, OBJECT_WORDS, _word_tokenizer

LOCATION_BINS = 1000
#: The words of Florence-2's task prompts (transformers' Florence2Processor expands
#: ``<OD>`` and ``<CAPTION_TO_PHRASE_GROUNDING>`` into them).
TASK_WORDS = ["locate", "phrases", "caption", "category", "with"]


def build_florence2(out: Path, image_size: int = 64) -> Path:
    """Tiny Florence-2: a two-stage DaViT (64 px -> 8 x 8 grid + one pooled token) and a
    one-layer BART over a word-level tokenizer with the 1000 ``<loc_N>`` tokens. Generation may
    say only location tokens (each once) and end-of-sequence, so every answer parses into boxes."""
    from transformers import (BartConfig, CLIPImageProcessor, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor)
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    torch.manual_seed(SEED)
    locations = [f"<loc_{i}>" for i in range(LOCATION_BINS)]
    words = list(dict.fromkeys(FILLER_WORDS + OBJECT_WORDS + TASK_WORDS))
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>", *locations], "", words,
                          named={"image_token": "<image>"})
    vision = Florence2VisionConfig(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
        patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4],
        window_size=4, projection_dim=32, drop_path_rate=0.0)
    text = BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    model = Florence2ForConditionalGeneration(Florence2Config(
        vision_config=vision, text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"))).eval()
    image_processor = CLIPImageProcessor(size={"height": image_size, "width": image_size},
                                         do_center_crop=False)
    grid = image_size // 8  # patch stride 4, then 2
    image_processor.image_seq_length = grid * grid + 1  # and the pooled (temporal) token
    Florence2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)
    gen = model.generation_config
    allowed = {tok.convert_tokens_to_ids(t) for t in [*locations, tok.eos_token]}
    gen.suppress_tokens = [i for i in range(len(tok)) if i not in allowed]
    gen.no_repeat_ngram_size = 1  # four different bins a box: no empty boxes
    gen.max_new_tokens, gen.do_sample, gen.num_beams = 13, False, 1
    model.save_pretrained(out)
    return out
