"""The detect recipe end to end with random-weight models built from configs: seconds per image, per node.

    python bench/e2e.py --scale small [--questions 10] [--json]        # CPU: scaled models
    python bench/e2e.py --device cuda --scale full [--json]             # LLaVA-1.5-7B + SAM ViT-H

No downloads: LLaVA-1.5 (CLIP ViT-L/14-336 + a Llama-2-7B text model) and SAM ViT-H are built from
their published config sizes with random weights, saved and loaded back through the recipe's own
``from_pretrained`` path. ``--scale small`` keeps every sequence and image size of the real models
(336 px views -> 576 image tokens, SAM at 1024 px with a 64x64 embedding and 256x256 low-res
masks) and shrinks only widths and depths, so the per-node profile on a CPU shows where the time
goes; ``--scale full`` is the real size (on a GPU; 7B in bf16 needs ~15 GB).

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

from vlpipe.agents.mllm import Generation, Mllm  # noqa: E402
from vlpipe.io import load_image  # noqa: E402
from vlpipe.pipeline import Pipeline  # noqa: E402
from vlpipe.pipeline.models import ModelPool  # noqa: E402
from vlpipe.tiny.mllm import LLAVA_TEMPLATE, _word_tokenizer  # noqa: E402

IMAGE = ROOT / "tests/data/images/truck.jpg"

# (CLIP vision, Llama text, SAM vision) sizes: published configs, and widths/depths scaled down
SIZES = {
    "full": dict(
        clip=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
        llama=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32),
        sam=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                 global_attn_indexes=[7, 15, 23, 31])),
    "small": dict(
        clip=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
        llama=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4),
        sam=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, mlp_dim=512,
                 global_attn_indexes=[1])),
}
ANSWER = "a dog , a red car , a person , a tree , a bus , a chair , a cup , a bottle , a lamp , " \
         "a bag , a book , a sign , a bicycle , a window , a door , a horse"


def build_llava(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """LLaVA-1.5 at ``scale``: CLIP 336 px / patch 14 (576 image tokens) + Llama, saved to ``out``."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>"], LLAVA_TEMPLATE)
    sizes = SIZES[scale]
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**sizes["clip"], image_size=336, patch_size=14, projection_dim=768),
        text_config=LlamaConfig(vocab_size=32064, **sizes["llama"], max_position_embeddings=4096,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    with torch.device(device):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336},
                                                      crop_size={"height": 336, "width": 336}),
                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE).save_pretrained(out)
    return out


def build_sam(out: Path, scale: str, device: str, dtype: torch.dtype) -> Path:
    """SAM ViT-H at ``scale`` (1024 px input, 64x64 embedding, default prompt encoder/decoder)."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, SamVisionConfig

    cfg = SamConfig(vision_config=SamVisionConfig(**SIZES[scale]["sam"], image_size=1024, patch_size=16,
                                                  window_size=14, output_channels=256))
    with torch.device(device):
        torch.manual_seed(0)
        model = SamModel(cfg).to(dtype).eval()
    model.save_pretrained(out)
    SamProcessor(SamImageProcessor()).save_pretrained(out)
    return out


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
    ap.add_argument("--scale", choices=sorted(SIZES), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiles", default="2x2")
    ap.add_argument("--answer-tokens", type=int, default=40)
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
        llava = build_llava(Path(tmp) / "llava", args.scale, args.device, dtype)
        sam = build_sam(Path(tmp) / "sam", args.scale, args.device, dtype)
        print(f"built {args.scale} models in {time.perf_counter() - t:.1f} s")
        Mllm.generate = forced_generate(Mllm.generate, args.answer_tokens)
        pool = ModelPool()

        def detect(**params) -> Pipeline:
            return Pipeline.load("detect", pool, mllm=str(llava), sam=str(sam), sam_backend="hf",
                                 max_new_tokens=args.answer_tokens, device=args.device,
                                 dtype=str(dtype).removeprefix("torch."), **params)

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
    print(f"\ndetect, {args.scale} LLaVA-1.5 + SAM ViT-H on {args.device} ({dtype}), tiles {args.tiles}, "
          f"{args.questions} questions x {args.answer_tokens} answer tokens, {args.rounds} rounds; "
          f"{n_maps} object maps, {len(result.outputs['detections'])} detections per image")
    for name, seconds in nodes.items():
        print(f"  {name:<8} {seconds:8.2f} s  {100 * seconds / total:5.1f} %")
    print(f"  {'total':<8} {total:8.2f} s per image; peak RSS {rss:.0f} MiB"
          + (f", peak GPU {gpu:.0f} MiB" if gpu is not None else ""))
    if args.json:
        print(json.dumps({"seconds_per_image": round(total, 3), "device": args.device, "scale": args.scale,
                          "nodes": {k: round(v, 3) for k, v in nodes.items()},
                          "peak_gpu_mb": None if gpu is None else round(gpu), "maps": n_maps}))


if __name__ == "__main__":
    main()
