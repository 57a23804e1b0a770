"""Train a tiny LLaVA on synthetic scenes to list the objects it sees, left to right.

    python bench/train_tiny.py --out tests/data/tiny_llava_shapes [--scenes 500 --steps 400]

A LLaVA-1.5-architecture model built from configs (CLIP-style vision tower, 96 px input, patch 12
-> an 8x8 grid; Llama-style language model; about 0.4 M parameters) learns to answer the
"list the objects" questions of ``vlpipe/prompts/list_objects.txt`` about scenes of
:mod:`vlpipe.synthetic` — the full image and its 2x2 tiles, each padded to a square as the
detect recipe shows them — with the categories it can see ("box , disc , star"), ordered by
their leftmost pixel. Nothing but next-token prediction of the answer is trained: where the
attention of a name's tokens goes is left to the model.

The language model reads local image tokens: the tower's patch embeddings (with their position
embeddings), before any of its attention layers. With image tokens that each carry the whole
image (a tower with global attention, the first committed model), the language model never had
to look at an object's own patches to name it, and its attention did not point (README). CPU,
one torch thread (``--threads``), seeded. The result loads through ``from_pretrained`` like any
hub model (``--mllm DIR``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from vlpipe.agents.mllm.families import fit_image
from vlpipe.agents.tiles.grid import split_tiles
from vlpipe.prompts import load_questions
from vlpipe.synthetic import CATEGORIES, SIZES, render_scene
from vlpipe.tiny.mllm import FILLER_WORDS, LLAVA_TEMPLATE, _word_tokenizer

IMAGE_SIZE, PATCH = 96, 12
MIN_AREA = 8.0  # px² in the 96 px input: smaller objects are not named
QUESTIONS = load_questions("list_objects", 10)
ORDER = {c.name: k for k, c in enumerate(CATEGORIES)}


def vocabulary() -> list[str]:
    """Filler words, the chat roles, the words of the list-objects questions, the category names."""
    words = [*FILLER_WORDS, "user", "assistant"]
    for text in QUESTIONS:
        words += re.findall(r"\w+|[^\w\s]", text.lower())
    words += [c.name for c in CATEGORIES]
    return list(dict.fromkeys(words))


def build(seed: int):
    """(processor, untrained model): tiny LLaVA-1.5 over :func:`vocabulary`."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(seed)
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>"], LLAVA_TEMPLATE,
                          vocabulary())
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=1,
                                       num_attention_heads=4, image_size=IMAGE_SIZE,
                                       patch_size=PATCH),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192,
                                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        # the tower's input (patch + position embeddings), hidden_states[0] of 2: local tokens.
        # Written -2, as transformers 5 reads vision_feature_layer=0 as "no hidden states".
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=PATCH,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    return processor, LlavaForConditionalGeneration(config)


def view_names(masks: list[tuple[str, np.ndarray]], side: int) -> list[str]:
    """Names of the categories visible in a view whose padded square has ``side`` px, ordered by
    their leftmost pixel (ties: category order); ``masks`` are (name, (h, w) bool) in the view."""
    scale2 = (IMAGE_SIZE / side) ** 2
    area: dict[str, float] = {}
    left: dict[str, int] = {}
    for name, m in masks:
        cols = np.nonzero(m.any(0))[0]
        if len(cols):
            area[name] = area.get(name, 0.0) + m.sum() * scale2
            left[name] = min(left.get(name, 1 << 30), int(cols[0]))
    seen = [n for n in area if area[n] >= MIN_AREA]
    return sorted(seen, key=lambda n: (left[n], ORDER[n]))


def make_views(n_scenes: int, seed: int, processor) -> tuple[torch.Tensor, list[list[str]]]:
    """(V, 3, S, S) uint8 resized views (full image + 2x2 tiles of each scene, each also mirrored
    left to right), their names."""
    rng = np.random.default_rng(seed)
    ip = processor.image_processor
    pixels, names = [], []
    for _ in range(n_scenes):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        image, instances = render_scene(rng, w, h)
        for tile in split_tiles(h, w, (2, 2), 0.0, 64):
            for flip in (False, True):
                crop = tile.crop(image)[:, ::-1] if flip else tile.crop(image)
                fitted, _ = fit_image("llava", processor, np.ascontiguousarray(crop), "pad")
                out = ip(images=fitted, do_rescale=False, do_normalize=False, return_tensors="np")
                pixels.append(np.round(out["pixel_values"][0]).clip(0, 255).astype(np.uint8))
                masks = [(CATEGORIES[c].name, tile.crop(m)[:, ::-1] if flip else tile.crop(m))
                         for c, m in instances]
                names.append(view_names(masks, max(crop.shape[:2])))
    return torch.from_numpy(np.stack(pixels)), names


class Batches:
    """Random training batches: view pixels, a random question, the answer as labels."""

    def __init__(self, processor, pixels: torch.Tensor, names: list[list[str]], seed: int):
        self.processor, self.pixels, self.names = processor, pixels, names
        tok = processor.tokenizer
        dummy = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        self.prompts = [processor(images=dummy, return_tensors="pt",
                                  text=processor.apply_chat_template(
                                      [{"role": "user", "content": [{"type": "image"},
                                                                    {"type": "text", "text": q}]}],
                                      add_generation_prompt=True))["input_ids"][0]
                        for q in QUESTIONS]
        self.answers = [torch.tensor(tok(" , ".join(n) if n else "none",
                                         add_special_tokens=False)["input_ids"]
                                     + [tok.eos_token_id]) for n in names]
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.pad = tok.pad_token_id
        self.gen = torch.Generator().manual_seed(seed)

    def sample(self, size: int) -> dict:
        views = torch.randint(len(self.names), (size,), generator=self.gen)
        questions = torch.randint(len(self.prompts), (size,), generator=self.gen)
        seqs = [torch.cat([self.prompts[q], self.answers[v]]) for v, q in zip(views, questions)]
        n = max(len(s) for s in seqs)
        ids = torch.full((size, n), self.pad)
        labels = torch.full((size, n), -100)
        mask = torch.zeros((size, n), dtype=torch.long)
        for k, (s, q) in enumerate(zip(seqs, questions)):
            ids[k, :len(s)], mask[k, :len(s)] = s, 1
            labels[k, len(self.prompts[q]):len(s)] = s[len(self.prompts[q]):]
        pixels = self.pixels[views].float() / 255.0
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": (pixels - self.mean) / self.std}


def cached_views(path: Path | None, scenes: int, seed: int, processor
                 ) -> tuple[torch.Tensor, list[list[str]]]:
    """:func:`make_views`, read from ``path`` (.npz: uint8 ``pixels``, ``names`` joined by "|")
    when it exists, else rendered and written there (no path: rendered only)."""
    if path is not None and path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["pixels"]), [n.split("|") if n else [] for n in z["names"]]
    pixels, names = make_views(scenes, seed, processor)
    if path is not None:
        np.savez_compressed(path, pixels=pixels.numpy(),
                            names=np.array(["|".join(n) for n in names]))
    return pixels, names


def train(out: Path, scenes: int, steps: int, batch: int, lr: float, seed: int, threads: int,
          views: Path | None = None) -> dict:
    torch.set_num_threads(threads)
    processor, model = build(seed)
    t0 = time.time()
    pixels, names = cached_views(views, scenes, seed, processor)
    print(f"{len(names)} views from {scenes} scenes in {time.time() - t0:.0f} s; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    data = Batches(processor, pixels, names, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    t0, running = time.time(), None
    for step in range(steps):
        loss = model(**data.sample(batch)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {running:.4f} {time.time() - t0:.0f} s", flush=True)
    model.eval()
    gen = model.generation_config
    gen.max_new_tokens, gen.do_sample = 24, False
    gen.eos_token_id, gen.pad_token_id = processor.tokenizer.eos_token_id, data.pad
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"views": len(names), "steps": steps, "loss": running,
            "minutes": (time.time() - t0) / 60}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 ran ~10x slower per step on a loaded 2-core machine)")
    ap.add_argument("--views", type=Path, help="cache of the rendered views (.npz), made once "
                    "for these --scenes and --seed")
    args = ap.parse_args(argv)
    summary = train(args.out, args.scenes, args.steps, args.batch, args.lr, args.seed,
                    args.threads, args.views)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
