"""Tiny MLLMs over a word-level tokenizer, one builder per family of
:data:`vlpipe.agents.mllm.families.FAMILIES` (each family names its builder): LLaVA-1.5,
LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL."""

from __future__ import annotations

from pathlib import Path

import torch

from . import SEED

# Words the tiny language models can say: mostly object names, so random generations still parse
# into object lists.
OBJECT_WORDS = [
    "dog", "cat", "car", "truck", "person", "tree", "sign", "bus", "bicycle", "bird", "horse",
    "cup", "bottle", "chair", "table", "window", "door", "road", "building", "sky", "grass",
    "wheel", "light", "text", "logo", "box", "bag", "phone", "book", "lamp", "red", "blue",
    "big", "small", "white", "black",
]
FILLER_WORDS = [",", ".", "and", "a", "an", "the", "there", "is", "are", "in", "image", "of",
                "list", "objects", "what", "which", "this", "all", "see", "you", "can", "name",
                "every", "object", "?", ":", "1", "2", "3", "none", "both", "tools", "yes", "no",
                "answer", "question", "written", "on", "say", "does", "it", "where", "how", "many",
                "with", "to", "need", "or", "text_reading", "finding", "reply", "one", "word"]


def _word_tokenizer(special: list[str], extra_special: list[str], chat_template: str,
                    words: list[str] | None = None, named: dict[str, str] | None = None):
    """A WordLevel fast tokenizer over ``words`` (default FILLER_WORDS + OBJECT_WORDS); specials
    first; ``named``: special tokens the processor reads by name ({"image_token": "<image>"})."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = FILLER_WORDS + OBJECT_WORDS if words is None else words
    vocab = {tok: i for i, tok in enumerate(special + extra_special + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens=named)
    fast.add_special_tokens({"additional_special_tokens": extra_special})
    fast.chat_template = chat_template
    return fast


LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %} {% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}"
    "{% endfor %}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")

QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _finish_lm(model, tokenizer, out: Path) -> Path:
    """Let generation say only object words, commas, "and" and EOS (so random models still
    answer with parseable object lists) and save."""
    gen = model.generation_config
    allowed = {tokenizer.convert_tokens_to_ids(t)
               for t in [*OBJECT_WORDS, ",", "and", tokenizer.eos_token]}
    gen.suppress_tokens = [i for i in range(len(tokenizer)) if i not in allowed]
    comma = tokenizer.convert_tokens_to_ids(",")
    gen.sequence_bias = [[[tokenizer.convert_tokens_to_ids(w), comma], 20.0] for w in OBJECT_WORDS]
    gen.max_new_tokens = 12
    gen.do_sample = False
    model.save_pretrained(out)
    return out


def _llava_parts(image_size: int) -> tuple:
    """Tokenizer and the config pieces LLaVA-1.5 and LLaVA-NeXT share (CLIP patch 8, Llama)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    torch.manual_seed(SEED)
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>"], LLAVA_TEMPLATE)
    common = dict(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=image_size, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1)
    processor_kw = dict(tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    sizes = dict(size={"shortest_edge": image_size},
                 crop_size={"height": image_size, "width": image_size})
    return tok, common, processor_kw, sizes


def build_llava(out: Path, image_size: int = 64) -> Path:
    """Tiny LLaVA-1.5: CLIP vision tower (patch 8 -> 8x8 grid at 64 px) + Llama text model."""
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    tok, common, processor_kw, sizes = _llava_parts(image_size)
    model = LlavaForConditionalGeneration(LlavaConfig(**common)).eval()
    LlavaProcessor(image_processor=CLIPImageProcessor(**sizes), **processor_kw).save_pretrained(out)
    return _finish_lm(model, tok, out)


def build_llava_next(out: Path, image_size: int = 32) -> Path:
    """Tiny LLaVA-NeXT: any-resolution tiles of 32 px (patch 8 -> 4x4 per tile) + base view."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    tok, common, processor_kw, sizes = _llava_parts(image_size)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size],
                 [2 * image_size, 2 * image_size]]
    model = LlavaNextForConditionalGeneration(
        LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)).eval()
    image_processor = LlavaNextImageProcessor(**sizes, image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor=image_processor, **processor_kw).save_pretrained(out)
    return _finish_lm(model, tok, out)


def qwen_tokenizer(words: list[str] | None = None, extra: tuple[str, ...] | list[str] = ()
                   ) -> tuple:
    """(word-level tokenizer with Qwen-VL's chat specials (+ ``extra``) and template, {special:
    id})."""
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "assistant", "user", "system", *extra]
    if words is not None:
        words = [w for w in words if w not in specials]
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], specials, QWEN_TEMPLATE, words)
    return tok, {t: tok.convert_tokens_to_ids(t) for t in specials}


def _qwen_parts() -> tuple:
    """Tokenizer, its special-token ids and the text config the tiny Qwen-VL models share."""
    torch.manual_seed(SEED)
    tok, ids = qwen_tokenizer()
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 1024, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": ids["<|im_end|>"]}
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"])
    return tok, text, tokens


def _save_qwen(model, tok, processor_cls, video_processor, out: Path) -> Path:
    """Patch 8, 2x2 merge, 32x32..96x96 pixels; save processor and model."""
    from transformers import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                            min_pixels=32 * 32, max_pixels=96 * 96)
    processor_cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                  chat_template=QWEN_TEMPLATE).save_pretrained(out)
    tok.eos_token = "<|im_end|>"
    return _finish_lm(model, tok, out)


def build_qwen2_vl(out: Path) -> Path:
    """Tiny Qwen2-VL: patch 8, 2x2 merge, 32x32..96x96 pixels."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor,
                              Qwen2VLVideoProcessor)

    tok, text, tokens = _qwen_parts()
    cfg = Qwen2VLConfig(
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4,
                       "mlp_ratio": 2, "patch_size": 8, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "in_channels": 3},
        text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                 "mrope_section": [2, 3, 3]}},
        **tokens)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    return _save_qwen(model, tok, Qwen2VLProcessor, Qwen2VLVideoProcessor(), out)


def build_qwen2_5_vl(out: Path) -> Path:
    """Tiny Qwen2.5-VL: patch 8, 2x2 merge, windowed vision attention (32 px windows) with full
    attention in its last block."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLVideoProcessor)

    tok, text, tokens = _qwen_parts()
    cfg = Qwen2_5_VLConfig(
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "window_size": 32, "fullatt_block_indexes": [1], "out_hidden_size": 64,
                       "in_channels": 3},
        text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                 "mrope_section": [2, 3, 3]}},
        **tokens)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    return _save_qwen(model, tok, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor(), out)


def build_qwen3_vl(out: Path) -> Path:
    """Tiny Qwen3-VL: patch 8, 2x2 merge, one DeepStack level, interleaved M-RoPE."""
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    tok, text, tokens = _qwen_parts()
    cfg = Qwen3VLConfig(
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "out_hidden_size": 64, "num_position_embeddings": 64,
                       "deepstack_visual_indexes": [1]},
        text_config={**text, "head_dim": 16,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                         "mrope_section": [2, 3, 3], "mrope_interleaved": True}},
        **tokens)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    return _save_qwen(model, tok, Qwen3VLProcessor, Qwen3VLVideoProcessor(), out)
