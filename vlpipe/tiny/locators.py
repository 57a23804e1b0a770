"""Tiny random-weight models of the locator-only families
(:data:`vlpipe.agents.mllm.families.LOCATORS`), one builder each: Florence-2, Molmo 2."""

from __future__ import annotations

from pathlib import Path

import torch

from . import SEED
from .mllm import FILLER_WORDS, OBJECT_WORDS, _finish_lm, _word_tokenizer

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


MOLMO2_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|image|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
#: Molmo 2's image tokens (the processor lays out each image with them).
MOLMO2_IMAGE_TOKENS = ["<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>",
                       "<frame_start>", "<im_end>", "<frame_end>", "<im_low>", "<|image|>",
                       "<|video|>"]


def build_molmo2(out: Path, image_size: int = 56) -> Path:
    """Tiny Molmo 2: a two-layer ViT (patch 14: 4 x 4 patches per 56 px crop, at most 2
    crops, 2 x 2 pooling) and a two-layer Qwen3-style text model over a word-level tokenizer in
    a Qwen-style chat template."""
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration, Molmo2Processor
    from transformers.models.molmo2.configuration_molmo2 import (Molmo2AdapterConfig,
                                                                 Molmo2TextConfig,
                                                                 Molmo2VisionConfig)
    from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor
    from transformers.models.molmo2.video_processing_molmo2 import Molmo2VideoProcessor

    torch.manual_seed(SEED)
    words = list(dict.fromkeys(FILLER_WORDS + OBJECT_WORDS + ["point"]))
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"],
                          ["<|im_start|>", "<|im_end|>", "assistant", "user",
                           *MOLMO2_IMAGE_TOKENS], MOLMO2_TEMPLATE, words,
                          named={"image_token": "<|image|>", "video_token": "<|video|>"})
    ids = {t: tok.convert_tokens_to_ids(t) for t in MOLMO2_IMAGE_TOKENS}
    text = Molmo2TextConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        vocab_size=len(tok), additional_vocab_size=16, num_hidden_layers=2,
        intermediate_size=64, max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    vision = Molmo2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=8, image_size=[image_size, image_size], patch_size=14)
    adapter = Molmo2AdapterConfig(
        vision_feature_layer=[-1], hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
        head_dim=8, intermediate_size=64, text_hidden_size=32)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model = Molmo2ForConditionalGeneration(Molmo2Config(
        text_config=text, vision_config=vision, adapter_config=adapter,
        image_start_token_id=ids["<im_start>"],
        low_res_image_start_token_id=ids["<low_res_im_start>"],
        image_end_token_id=ids["<im_end>"], image_patch_id=ids["<im_patch>"],
        frame_start_token_id=ids["<frame_start>"], frame_end_token_id=ids["<frame_end>"],
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)).eval()
    image_processor = Molmo2ImageProcessor(
        size={"height": image_size, "width": image_size}, patch_size=14, max_crops=2,
        overlap_margins=[1, 1], pooling_size=[2, 2])
    Molmo2Processor(image_processor=image_processor, video_processor=Molmo2VideoProcessor(),
                    tokenizer=tok, chat_template=MOLMO2_TEMPLATE).save_pretrained(out)
    tok.eos_token = "<|im_end|>"
    return _finish_lm(model, tok, out)
