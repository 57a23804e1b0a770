"""Tiny grounding models: Grounding DINO, OWLv2 and SAM 3's concept detector."""

from __future__ import annotations

from pathlib import Path

from ..agents.hub import save_seeded
from ..agents.grounding.sam3 import TEXT_TOKENS
from .clip import tiny_clip_tokenizer
from .sam import tiny_sam3_vision

# Grounding DINO hard-codes BERT's ids for these tokens.
_BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}

_TINY_WORDS = (
    "a an the of and with on in at to for is are this that "
    "dog cat person man woman child people car truck bus bicycle bike motorcycle train boat plane "
    "sign text logo word words letter number price label tag poster board banner "
    "red blue green yellow black white brown big small left right top bottom front back "
    "tree house building road street window door wall table chair bed sofa cup bottle bowl "
    "phone laptop book bag hat shirt shoe hand face head eye bird horse cow sheep ball box "
    "object thing animal vehicle food fruit apple banana orange pizza cake sky grass water"
).split()


def _tiny_vocab(size: int = 1100) -> dict[str, int]:
    vocab: dict[str, int] = {tok: i for tok, i in _BERT_SPECIAL_IDS.items()}
    free = [i for i in range(size) if i not in vocab.values()]
    free_iter = iter(free)
    for word in _TINY_WORDS:
        vocab[word] = next(free_iter)
    for i in free_iter:
        vocab[f"[unused{i}]"] = i
    return vocab


def build_tiny_grounding_dino(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random Grounding DINO (model + processor) offline and save it to ``out_dir``.

    Keeps BERT's special-token ids (the model hard-codes them); tiny Swin backbone, d_model 32,
    2 decoder layers, 20 queries, max_text_len 32.
    """
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=32)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

    backbone = SwinConfig(
        image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=4, out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_queries=20, max_text_len=32, disable_custom_kernels=True,
    )
    return save_seeded(GroundingDinoForObjectDetection, config, processor, out, seed)


def build_tiny_owlv2(out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random OWLv2 (model + processor) offline and save it to ``out_dir``: 64 px
    input, 16 px patches (4x4 = 16 boxes), hidden size 32, one layer per tower, the tiny CLIP
    word tokenizer (16 tokens a query)."""
    from transformers import (Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor,
                              Owlv2Processor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_clip_tokenizer(max_len=16)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    config = Owlv2Config(
        text_config={**tower, "vocab_size": len(tokenizer), "max_position_embeddings": 16,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id},
        vision_config={**tower, "image_size": 64, "patch_size": 16},
        projection_dim=32,  # OWL's class head compares text embeddings at the text width
    )
    return save_seeded(Owlv2ForObjectDetection, config, processor, out, seed)


def build_tiny_sam3(out_dir: str | Path, seed: int = 0, image_size: int = 112) -> Path:
    """A tiny random ``Sam3Model`` + processor saved to ``out_dir``: 112 px square input (8x8
    cells, 32x32 mask logits), 10 queries, one layer per DETR stage, a CLIP text tower of width
    32 over the tiny word tokenizer."""
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    tokenizer = tiny_clip_tokenizer(max_len=TEXT_TOKENS)
    # weights drawn 10x wider than SAM 3's default (0.02), so random queries differ in score
    wide = {"initializer_range": 0.2}
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_layers": 1,
             **wide}
    config = Sam3Config(
        vision_config=tiny_sam3_vision(image_size),
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "projection_dim": 32,
                     "max_position_embeddings": TEXT_TOKENS, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        geometry_encoder_config=small, detr_encoder_config=small,
        detr_decoder_config={**small, "num_queries": 10},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2, **wide}, **wide)
    processor = Sam3Processor(Sam3ImageProcessor(size={"height": image_size, "width": image_size}),
                              tokenizer)
    return save_seeded(Sam3Model, config, processor, Path(out_dir), seed)
