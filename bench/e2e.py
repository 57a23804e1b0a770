"""The detect recipe end to end with random-weight models built from configs: seconds per image, per node.

    python bench/e2e.py --scale small [--questions 10] [--json]        # CPU: scaled models
    python bench/e2e.py --mllm qwen2.5-vl --sam sam2.1-l --scale small  # the other pair
    python bench/e2e.py --device cuda --scale full [--json]             # LLaVA-1.5-7B + SAM ViT-H

No downloads: the MLLM (``--mllm``: LLaVA-1.5-7B, CLIP ViT-L/14-336 + Llama-2-7B; or
Qwen2.5-VL-7B) and SAM (``--sam``: ViT-H, or SAM 2.1 Hiera-L) are built from their released config
sizes (:data:`MLLM_SIZES`, :data:`SAM_SIZES`) with random weights, saved and loaded back through
the recipe's own ``from_pretrained`` path. ``--scale small`` keeps every sequence and image size of
the real models (LLaVA: 336 px views -> 576 image tokens; Qwen2.5-VL: 28 px per image token at
the view's own resolution, up to 12.8 Mpixel; SAM at 1024 px with a 64x64 embedding and 256x256
low-res masks) and shrinks only widths and depths, so the per-node profile on a CPU shows where
the time goes; ``--scale full`` is the real size (on a GPU; a 7B in bf16 needs ~15 GB).
``--sam-batch`` sets how many views go through SAM's image encoder per forward.

Answers do not depend on weights, so they are forced: every question generates exactly
``--answer-tokens`` tokens (EOS held back until then) and the generated ids are then replaced by a
fixed answer of the same length naming objects, which the recipe parses, maps and segments as it
would a real answer. Speed cannot depend on the weights, so this is an honest speed measure.

A one-view, one-question run loads the models and warms up, then the recipe runs ``--images``
times on a fresh trace;
printed: seconds per image per node (the pipeline's Trace), total, process peak RSS and peak
GPU memory. ``--json`` prints as last line
``{"seconds_per_image": .., "device": .., "nodes": {name: seconds}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlpipe.agents.mllm.model import Generation, Mllm  # noqa: E402
from vlpipe.io import load_image  # noqa: E402
from vlpipe.pipeline import Pipeline  # noqa: E402
from vlpipe.pipeline.models import ModelPool  # noqa: E402
from vlpipe.tiny.mllm import LLAVA_TEMPLATE, QWEN_TEMPLATE, _word_tokenizer  # noqa: E402

IMAGE = ROOT / "tests/data/images/truck.jpg"

# Per model: the released config's sizes ("full") and widths/depths scaled down ("small");
# sequence and image sizes are the released ones at both scales.
MLLM_SIZES = {
    "llava-1.5": {  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Llama-2-7B
        "full": dict(
            vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
            text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32)),
        "small": dict(
            vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
            text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4))},
    "qwen2.5-vl": {  # Qwen/Qwen2.5-VL-7B-Instruct: windowed ViT (full attention in 4 blocks) + Qwen2.5-7B
        "full": dict(
            vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                        fullatt_block_indexes=[7, 15, 23, 31]),
            text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4)),
        "small": dict(  # head_dim 128 kept (M-RoPE sections 16 + 24 + 24 = 64 = head_dim / 2)
            vision=dict(depth=2, hidden_size=128, intermediate_size=342, num_heads=4, fullatt_block_indexes=[1]),
            text=dict(hidden_size=256, intermediate_size=1352, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1))},
}
SAM_SIZES = {
    "vit-h": {  # facebook/sam-vit-huge
        "full": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                     global_attn_indexes=[7, 15, 23, 31]),
        "small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, mlp_dim=512,
                      global_attn_indexes=[1])},
    "sam2.1-l": {  # facebook/sam2.1-hiera-large: Hiera-L, 2-6-36-4 blocks
        "full": dict(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                     num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 6, 36, 4],
                     global_attention_blocks=[23, 33, 43]),
        "small": dict(hidden_size=32, embed_dim_per_stage=[32, 64, 128, 256],
                      num_attention_heads_per_stage=[1, 1, 2, 4], blocks_per_stage=[1, 1, 2, 1],
                      global_attention_blocks=[3])},
}
ANSWER = "a dog , a red car , a person , a tree , a bus , a chair , a cup , a bottle , a lamp , " \
         "a bag , a book , a sign , a bicycle , a window , a door , a horse"


def _seeded(model_cls, cfg, device: str, dtype: torch.dtype):
    with torch.device(device):
        torch.manual_seed(0)
        return model_cls(cfg).to(dtype).eval()


def build_llava(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """LLaVA-1.5 at ``scale``: CLIP 336 px / patch 14 (576 image tokens) + Llama, saved to ``out``."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>"], LLAVA_TEMPLATE)
    sizes = MLLM_SIZES["llava-1.5"][scale]
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**sizes["vision"], image_size=336, patch_size=14, projection_dim=768),
        text_config=LlamaConfig(vocab_size=32064, **sizes["text"], max_position_embeddings=4096,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = _seeded(LlavaForConditionalGeneration, cfg, device, dtype)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                      crop_size={"height": 336, "width": 336}),
                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE).save_pretrained(out)
    return out


def build_qwen25_vl(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """Qwen2.5-VL at ``scale``: patch 14, 2x2 merge (a 28 px cell per image token), 3136 to
    12845056 pixels (the released processor: truck.jpg's full view is 2,752 image tokens, a 2x2
    tile 690), window attention over 112 px, M-RoPE; saved to ``out``."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], specials, QWEN_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    sizes = MLLM_SIZES["qwen2.5-vl"][scale]
    cfg = Qwen2_5_VLConfig(
        vision_config={**sizes["vision"], "hidden_act": "silu", "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 112, "tokens_per_second": 2,
                       "out_hidden_size": sizes["text"]["hidden_size"]},
        text_config={**sizes["text"], "vocab_size": 152064, "max_position_embeddings": 128000,
                     "rms_norm_eps": 1e-6, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": ids["<|im_end|>"],
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = _seeded(Qwen2_5_VLForConditionalGeneration, cfg, device, dtype)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            size={"shortest_edge": 3136, "longest_edge": 12845056})
    Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=QWEN_TEMPLATE).save_pretrained(out)
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(out)
    return out


def build_sam_vit_h(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """SAM ViT-H at ``scale`` (1024 px input, 64x64 embedding, default prompt encoder/decoder)."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, SamVisionConfig

    cfg = SamConfig(vision_config=SamVisionConfig(**SAM_SIZES["vit-h"][scale], image_size=1024, patch_size=16,
                                                  window_size=14, output_channels=256))
    _seeded(SamModel, cfg, device, dtype).save_pretrained(out)
    SamProcessor(SamImageProcessor()).save_pretrained(out)
    return out


def build_sam2_large(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """SAM 2.1 Hiera-L at ``scale`` (1024 px square input, windows 8-4-16-8, FPN to 256 channels,
    64x64 embedding, 256x256 low-res masks, default prompt encoder/decoder)."""
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2Model, Sam2Processor,
                              Sam2VisionConfig)

    sizes = SAM_SIZES["sam2.1-l"][scale]
    backbone = Sam2HieraDetConfig(**sizes, window_size_per_stage=[8, 4, 16, 8],
                                  window_positional_embedding_background_size=[7, 7])
    cfg = Sam2Config(vision_config=Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=sizes["embed_dim_per_stage"][::-1]))
    _seeded(Sam2Model, cfg, device, dtype).save_pretrained(out)
    Sam2Processor(Sam2ImageProcessor()).save_pretrained(out)
    return out


MLLMS = {"llava-1.5": ("LLaVA-1.5", build_llava), "qwen2.5-vl": ("Qwen2.5-VL", build_qwen25_vl)}
SAMS = {"vit-h": ("SAM ViT-H", "hf", build_sam_vit_h), "sam2.1-l": ("SAM 2.1-L", "hf2", build_sam2_large)}


def forced_generate(real, answer_tokens: int):
    """A replacement for ``Mllm.generate`` (``real``) that generates exactly ``answer_tokens`` tokens
    per prompt (EOS held back until then), then hands on the fixed answer :data:`ANSWER` cut to
    the same length (its names are what the recipe parses)."""

    def generate(self, images, prompts, max_new_tokens=None, fit="pad"):
        cfg = self.model.generation_config
        cfg.min_new_tokens = cfg.max_new_tokens = answer_tokens
        gens = real(self, images, prompts, answer_tokens, fit)
        ids = self.tokenizer(ANSWER, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        ids = ids.repeat(answer_tokens // len(ids) + 1)[:answer_tokens]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return [Generation(ids, text, False) for _ in gens]

    return generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mllm", choices=sorted(MLLMS), default="llava-1.5")
    ap.add_argument("--sam", choices=sorted(SAMS), default="vit-h")
    ap.add_argument("--scale", choices=["full", "small"], default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiles", default="2x2")
    ap.add_argument("--answer-tokens", type=int, default=40)
    ap.add_argument("--sam-batch", type=int, default=None,
                    help="views per SAM image-encoder forward (default: the sam node's own)")
    ap.add_argument("--images", type=int, default=1, help="timed runs after the warm-up run")
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    image = load_image(args.image) if args.image.is_file() else \
        np.random.default_rng(0).integers(0, 256, (1200, 1800, 3), dtype=np.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        (mllm_name, build_mllm), (sam_name, sam_backend, build_sam) = MLLMS[args.mllm], SAMS[args.sam]
        mllm = build_mllm(Path(tmp) / "mllm", args.scale, args.device, dtype)
        sam = build_sam(Path(tmp) / "sam", args.scale, args.device, dtype)
        print(f"built {args.scale} models in {time.perf_counter() - t:.1f} s")
        Mllm.generate = forced_generate(Mllm.generate, args.answer_tokens)
        pool = ModelPool()

        def detect(**params) -> Pipeline:
            pipe = Pipeline.load("detect", pool, mllm=str(mllm), sam=str(sam), sam_backend=sam_backend,
                                 max_new_tokens=args.answer_tokens, device=args.device,
                                 dtype=str(dtype).removeprefix("torch."), **params)
            if args.sam_batch:
                pipe.graph.nodes["sam"].batch_size = args.sam_batch
            return pipe

        t = time.perf_counter()
        warm = detect(questions=1, rounds=1, tiles="1x1").run(image=image)  # loads the models
        if warm.error:
            raise SystemExit(warm.error)
        print(f"warm-up run (one view, one question; loads the models) {time.perf_counter() - t:.1f} s")
        pipe = detect(questions=args.questions, rounds=args.rounds, tiles=args.tiles)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(args.images):
            result = pipe.run(image=image)
        total = (time.perf_counter() - t) / args.images
    summary = pipe.trace.summary()
    nodes = {name: s["seconds"] / args.images for name, s in summary.items()}
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_maps = len(result.outputs["maps"])
    print(f"\ndetect, {args.scale} {mllm_name} + {sam_name} on {args.device} ({dtype}), tiles {args.tiles}, "
          f"{args.questions} questions x {args.answer_tokens} answer tokens, {args.rounds} rounds; "
          f"{n_maps} object maps, {len(result.outputs['detections'])} detections per image")
    for name, seconds in nodes.items():
        print(f"  {name:<8} {seconds:8.2f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'total':<8} {total:8.2f} s per image; peak RSS {rss:.0f} MiB"
          + (f", peak GPU {gpu:.0f} MiB" if gpu is not None else ""))
    if args.json:
        print(json.dumps({"seconds_per_image": round(total, 3), "device": args.device, "scale": args.scale,
                          "mllm": args.mllm, "sam": args.sam,
                          "nodes": {k: round(v, 3) for k, v in nodes.items()},
                          "peak_gpu_mb": None if gpu is None else round(gpu), "maps": n_maps}))


if __name__ == "__main__":
    main()
