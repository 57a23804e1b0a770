"""A tiny CLIP text model (for name-to-category mapping) and the word-level CLIP-style tokenizer
the tiny OWLv2 and SAM 3 share."""

from __future__ import annotations

from pathlib import Path

import torch

_TINY_WORDS = """a an the of photo and person bicycle car motorcycle airplane bus train truck boat
traffic light fire hydrant stop sign parking meter bench bird cat dog horse sheep cow elephant
bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis snowboard sports ball kite
baseball bat glove skateboard surfboard tennis racket bottle wine glass cup fork knife spoon bowl
banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch potted plant bed
dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink
refrigerator book clock vase scissors teddy hair drier toothbrush red blue green tree man woman
child""".split()


def tiny_clip_tokenizer(max_len: int = 32):
    """An offline word-level CLIP-style tokenizer over a small vocabulary: ``<|startoftext|> ...
    <|endoftext|>``, EOS with the largest id (CLIP and OWLv2 pool the text at the EOS, found as
    ``eos_token_id`` or ``argmax(input_ids)``), ``[PAD]`` id 0."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad, unk, bos, eos = "[PAD]", "[UNK]", "<|startoftext|>", "<|endoftext|>"
    words = list(dict.fromkeys(_TINY_WORDS))
    vocab = {tok: i for i, tok in enumerate([pad, unk, *words, bos, eos])}  # EOS has the largest id

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, pad_token=pad, bos_token=bos, eos_token=eos, model_max_length=max_len
    )


def build_tiny_clip_text(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random CLIP text model and an offline word-level tokenizer to ``out_dir``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(max_len=32)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=16,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    CLIPTextModelWithProjection(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
