"""Tiny SAMs: transformers SamModel, Sam2Model, SAM 3's tracker, and segment-anything's
architecture (registered as its variants ``tiny``, ``tiny_512`` and ``tiny_512_deep``, so
``backend: official`` with ``variant: tiny`` loads such a checkpoint wherever this module is
imported)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry

from ..agents.hub import save_seeded
from . import SEED


def build_hf_sam(out: Path) -> Path:
    """Tiny transformers SamModel: 256 px input, 16x16 embedding, 64x64 low-res masks."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel,
                              SamProcessor, SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(SEED)
    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=256, patch_size=16, window_size=4,
                                      global_attn_indexes=[1], output_channels=32,
                                      mlp_dim=128, num_pos_feats=16),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=256,
                                                     patch_size=16, image_embedding_size=16,
                                                     mask_input_channels=8),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, mlp_dim=64,
                                                 iou_head_hidden_dim=32))
    SamModel(cfg).eval().save_pretrained(out)
    processor = SamProcessor(SamImageProcessor(size={"longest_edge": 256},
                                               pad_size={"height": 256, "width": 256}))
    processor.save_pretrained(out)
    return out


def build_hf_sam2(out: Path, image_size: int = 256) -> Path:
    """Tiny transformers Sam2Model: a one-block-per-stage Hiera (windowed attention only),
    256 px square input, 16x16 embedding, 64x64 low-res masks."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor,
                              Sam2MaskDecoderConfig, Sam2Model, Sam2Processor,
                              Sam2PromptEncoderConfig, Sam2VisionConfig)

    torch.manual_seed(SEED)
    s = image_size
    # no global-attention block: one that opens a pooled stage divides by a zero window
    backbone = Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads=1, image_size=[s, s], blocks_per_stage=[1, 1, 1, 1],
        embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[],
        window_positional_embedding_background_size=[4, 4])
    cfg = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            fpn_hidden_size=32),
        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16,
                                                      mask_input_channels=8),
        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64,
                                                  num_attention_heads=2, iou_head_hidden_dim=32))
    Sam2Model(cfg).eval().save_pretrained(out)
    processor = Sam2Processor(Sam2ImageProcessor(size={"height": s, "width": s},
                                                 mask_size={"height": s // 4, "width": s // 4}))
    processor.save_pretrained(out)
    return out


def build_tiny_official_sam(checkpoint: None = None, image_size: int = 256,
                            depth: int = 2) -> torch.nn.Module:
    """A tiny official-architecture SAM: ``image_size`` px input, patch 16 (a 16x16 embedding
    and 64x64 low-res masks at 256 px, 32x32 and 128x128 at 512), an image encoder of ``depth``
    windowed blocks of width 64, the last with global attention. segment-anything's variants
    ``tiny`` (256 px), ``tiny_512`` and ``tiny_512_deep`` (512 px, 4 blocks)
    (``sam_model_registry``, added on import)."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    cells = image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=16, embed_dim=64, depth=depth, num_heads=4, mlp_ratio=2,
            out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=cells // 4, global_attn_indexes=[depth - 1]),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(cells, cells),
                                     input_image_size=(image_size, image_size), mask_in_chans=8),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


sam_model_registry["tiny"] = build_tiny_official_sam
sam_model_registry["tiny_512"] = partial(build_tiny_official_sam, image_size=512)
sam_model_registry["tiny_512_deep"] = partial(build_tiny_official_sam, image_size=512, depth=4)


def build_official_sam(out: Path) -> Path:
    """Tiny official-architecture SAM (variant ``tiny``) as a safetensors checkpoint."""
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_official_sam().state_dict().items()}, path)
    return path


def tiny_sam3_vision(image_size: int) -> dict:
    """A tiny SAM 3 ViT (patch 14, width 32, two layers, the second with global attention) and
    its FPN: e = image_size / 14 cells, levels 4e, 2e, e (the released model: 1008 px, e = 72)."""
    e = image_size // 14
    vit = {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
           "patch_size": 14, "window_size": 4, "global_attn_indexes": [1],
           "pretrain_image_size": image_size}
    return {"backbone_config": vit, "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[4 * e, 4 * e], [2 * e, 2 * e], [e, e]]}


def build_tiny_sam3_tracker(out_dir: str | Path, seed: int = 0, image_size: int = 224) -> Path:
    """A tiny random ``Sam3TrackerModel`` + processor saved to ``out_dir``: 224 px square input,
    16x16 embedding, 64x64 low-res masks (as the other tiny SAMs)."""
    from transformers import Sam3ImageProcessor, Sam3TrackerConfig, Sam3TrackerModel, Sam3TrackerProcessor

    s = image_size
    config = Sam3TrackerConfig(
        vision_config=tiny_sam3_vision(s),
        prompt_encoder_config={"hidden_size": 32, "image_size": s, "patch_size": 14,
                               "mask_input_channels": 8},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                             "iou_head_hidden_dim": 32})
    # the image processor facebook/sam3 gives the tracker too (SAM 2's resize and mask upscaling)
    processor = Sam3TrackerProcessor(Sam3ImageProcessor(size={"height": s, "width": s}))
    return save_seeded(Sam3TrackerModel, config, processor, Path(out_dir), seed)
