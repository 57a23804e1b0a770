"""Train a tiny LLaVA on synthetic scenes to list the objects it sees and where they are.

    python bench/train_tiny.py --out tests/data/tiny_llava_shapes --scenes 1500 --list-order area \\
        --boxes-order random --tasks list=0.35,where=0.05,boxes=0.05,count=0.1,points=0.45 \\
        --align 1 --steps 5000
    python bench/train_tiny.py --family qwen2_vl --out tests/data/tiny_qwen2_vl_shapes \\
        --scenes 1500 --list-order area --boxes-order random \\
        --tasks list=0.35,where=0.05,boxes=0.05,count=0.1,points=0.45 --align 1 --steps 5000

A LLaVA-1.5-architecture model built from configs (CLIP-style vision tower, 96 px input, patch
``--patch`` -> a 12x12 grid at 8; Llama-style language model; about 0.5 M parameters) learns,
on scenes of :mod:`vlpipe.synthetic` — the full image and its 2x2 tiles, each padded to a square
as the detect recipe shows them — the tasks of a real MLLM's mix (``TASKS``, ``--tasks``):

* ``list``: the "list the objects" questions of ``vlpipe/prompts/list_objects.txt``, answered
  with the categories it can see ("box , disc , star"), ordered by their leftmost pixel, or with
  ``--list-order random`` in a random order drawn for each sample (docs/trained-models.md:
  left to right is learnt late, and the model that has learnt it points less), or with
  ``--list-order area`` the name with the most area in the view first (the committed models: the
  token before a name then looks at the object it names more often; docs/trained-models.md,
  "Largest first");
* ``where``: "where is the disc ?" -> the boxes of its instances as LLaVA-1.5's RefCOCO data
  writes them, [x0, y0, x1, y1] normalised to the padded square with two decimals ("none" for
  an absent category);
* ``boxes``: "list the objects with their boxes ." -> "disc [0.12, ...] , box [...]" per instance,
  left to right or, with ``--boxes-order random``, in a random order (views of at most
  ``MAX_LISTED`` instances);
* ``count``: "how many disc are there ?" -> "2" (0 for an absent category);
* ``points`` (not in the default mix): "point to the objects ." -> "disc 37 , box 52" per
  instance, a point inside it as the cell of a ``GRID`` x ``GRID`` grid over the frame (row 3,
  column 7; one token, as Kosmos-2's location tokens), in ``--boxes-order``. The name is the
  token that must say where its instance is.

The region tasks are there to make a name's tokens read its instances: a box cannot be written
without looking at the object. On next-token prediction alone the models did not learn them
(they answered "where" with nearly the same box for every image; docs/trained-models.md, "A weak
model, not a wrong read-out"): nothing made an image token look like the name of what it shows.
``--align W`` adds that (:class:`ImageTokens`): each image token, scored against the word
embeddings of the names, learns the name of the instance under it, as LLaVA's first stage aligns
the projector's tokens with the language model's words. Where the attention of a name's tokens
goes is still left to the model.

The language model reads local image tokens: the tower's patch embeddings (with their position
embeddings, random at the start as CLIP's or, with ``--positions sincos``, 2-D sine-cosine),
before any of its attention layers. With image tokens that each carry the whole
image (a tower with global attention, the first committed model), the language model never had
to look at an object's own patches to name it, and its attention did not point
(docs/trained-models.md). ``--family qwen2_vl`` trains the Qwen2-VL twin the same way (a
vision tower of no blocks; boxes in Qwen2-VL's text). CPU, one torch thread (``--threads``),
seeded; the learning rate does not depend on ``--steps``, so a stopped run's checkpoint after
n steps (``training.json``) is what ``--steps n`` gives. The result loads through
``from_pretrained`` like any hub model (``--mllm DIR``).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vlpipe.agents.mllm.families import fit_image
from vlpipe.agents.tiles.grid import split_tiles
from vlpipe.prompts import load_questions
from vlpipe.synthetic import CATEGORIES, SIZES, render_scene
from vlpipe.tiny.mllm import (FILLER_WORDS, LLAVA_TEMPLATE, QWEN_TEMPLATE, _word_tokenizer,
                              qwen_tokenizer)

IMAGE_SIZE, PATCH = 96, 8
MIN_AREA = 8.0  # px² in the 96 px input: smaller objects are not named
QUESTIONS = load_questions("list_objects", 10)
WHERE, COUNT = "where is the {} ?", "how many {} are there ?"
BOXES = "list the objects with their boxes ."
POINTS = "point to the objects ."
POINT_WORDS = ("point",)  # the words of POINTS the vocabulary lacks (build's extra_words)
TASKS = {"list": 0.4, "where": 0.25, "boxes": 0.2, "count": 0.15}  # the default mix
ALL_TASKS = (*TASKS, "points")
GRID = 10  # a point's text: its cell of a GRID x GRID grid of the frame, "37" = row 3, column 7
QWEN_SIDE = 192  # Qwen2-VL twin: views up to 192² px, 12x12 merged tokens for a square
LIST_ORDERS = ("left", "random", "area")  # the list task's orders of names (--list-order)
BOXES_ORDERS = ("left", "random")  # the boxes task's orders of instances (--boxes-order)
POSITIONS = ("learned", "sincos")  # how the LLaVA tower's position embeddings start
POSITION_SCALE = 0.3  # sincos_positions' amplitude, about that of a patch's embedding at start
MAX_LISTED = 6  # the boxes task asks only about views with at most this many instances
NUMBERS = [str(k) for k in range(10)] + [f"{k:02d}" for k in range(100)]  # "0 . 12" -> 0.12
ORDER = {c.name: k for k, c in enumerate(CATEGORIES)}


def words_of(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def vocabulary(family: str = "llava") -> list[str]:
    """Filler words, the chat roles, the words of every task's questions, brackets and the
    numbers of the family's box text, the category names."""
    words = [*FILLER_WORDS, "user", "assistant", "[", "]", *NUMBERS]
    if family == "qwen2_vl":  # "(120,300),(450,780)": thousandths
        words += ["(", ")", *(str(k) for k in range(1001))]
    for text in [*QUESTIONS, WHERE, COUNT, BOXES]:
        words += words_of(text.replace("{}", ""))
    words += [c.name for c in CATEGORIES]
    return list(dict.fromkeys(words))


def sincos_positions(grid: int, dim: int, scale: float = POSITION_SCALE) -> torch.Tensor:
    """(grid², dim) 2-D sine-cosine position embeddings of a grid's cells, row by row (MAE's):
    the first half of the channels encode the column, the second the row, each as sin and cos
    of dim / 4 frequencies 1 / 10000^(k / (dim / 4)); times ``scale``."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.flatten()[:, None].double() * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], 1)

    return (scale * torch.cat([encode(cols), encode(rows)], 1)).float()


def build(seed: int, patch: int = PATCH, positions: str = "learned", extra_words: tuple = ()):
    """(processor, untrained model): tiny LLaVA-1.5 over :func:`vocabulary` (and
    ``extra_words`` it lacks, after it), (96 / patch)² image tokens; the tower's position
    embeddings start random (``positions`` "learned", as CLIP's) or as :func:`sincos_positions`
    (trained further either way)."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    torch.manual_seed(seed)
    words = vocabulary()
    tok = _word_tokenizer(["<pad>", "<unk>", "<s>", "</s>"], ["<image>"], LLAVA_TEMPLATE,
                          words + [w for w in dict.fromkeys(extra_words) if w not in words])
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=1,
                                       num_attention_heads=4, image_size=IMAGE_SIZE,
                                       patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=192,
                                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        # the tower's input (patch + position embeddings), hidden_states[0] of 2: local tokens.
        # Written -2, as transformers 5 reads vision_feature_layer=0 as "no hidden states".
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    model = LlavaForConditionalGeneration(config)
    if positions == "sincos":  # the class token's row (0) keeps its random start
        table = model.model.vision_tower.embeddings.position_embedding.weight
        with torch.no_grad():
            table[1:] = sincos_positions(IMAGE_SIZE // patch, table.shape[1])
    return processor, model


def build_qwen2_vl(seed: int, extra_words: tuple = ()):
    """(processor, untrained model): tiny Qwen2-VL over :func:`vocabulary` (and ``extra_words``
    it lacks, after it), width and depth as :func:`build`'s; a vision tower of no blocks (patch
    embedding + 2x2 merger: local image tokens, placed by the language model's M-RoPE), views
    up to ``QWEN_SIDE``² px -> at most 12x12 merged tokens."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    torch.manual_seed(seed)
    words = vocabulary("qwen2_vl")
    tok, ids = qwen_tokenizer(words + [w for w in dict.fromkeys(extra_words) if w not in words],
                              ["<|box_start|>", "<|box_end|>"])
    config = Qwen2VLConfig(
        vision_config={"depth": 0, "embed_dim": 96, "hidden_size": 96, "num_heads": 4,
                       "mlp_ratio": 2, "patch_size": 8, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "in_channels": 3},
        text_config={"vocab_size": len(tok), "hidden_size": 96, "intermediate_size": 192,
                     "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
                     "max_position_embeddings": 1024, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": ids["<|im_end|>"],
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                         "mrope_section": [4, 4, 4]}},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    image_processor = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2,
                                            min_pixels=32 * 32, max_pixels=QWEN_SIDE ** 2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=QWEN_TEMPLATE)
    tok.eos_token = "<|im_end|>"
    return processor, Qwen2VLForConditionalGeneration(config)


BUILDERS = {"llava": build,
            "qwen2_vl": lambda seed, patch, positions, extra_words=(): build_qwen2_vl(seed,
                                                                                     extra_words)}


def token_cell(family: str, processor) -> int:
    """px of a view (as the model sees it) per image token: LLaVA's patch; Qwen2-VL's patch
    times its merge (8 px x 2 = 16 for the twin)."""
    if family == "qwen2_vl":
        return processor.image_processor.patch_size * processor.image_processor.merge_size
    return processor.patch_size


def view_areas(masks: list[tuple[str, np.ndarray]], side: int) -> dict[str, float]:
    """{name: px² at the model's input} of the categories visible in a view whose padded square
    has ``side`` px, ordered by their leftmost pixel (ties: category order); ``masks`` are
    (name, (h, w) bool) in the view; a category under ``MIN_AREA`` is not seen."""
    scale2 = (IMAGE_SIZE / side) ** 2
    area: dict[str, float] = {}
    left: dict[str, int] = {}
    for name, m in masks:
        cols = np.nonzero(m.any(0))[0]
        if len(cols):
            area[name] = area.get(name, 0.0) + float(m.sum()) * scale2
            left[name] = min(left.get(name, 1 << 30), int(cols[0]))
    seen = sorted((n for n in area if area[n] >= MIN_AREA), key=lambda n: (left[n], ORDER[n]))
    return {n: area[n] for n in seen}


def view_names(masks: list[tuple[str, np.ndarray]], side: int) -> list[str]:
    """The names of :func:`view_areas`, left to right."""
    return list(view_areas(masks, side))


Box = tuple[float, float, float, float]


def large_instances(masks: list[tuple[str, np.ndarray]],
                    frame: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """The (name, mask) of ``masks`` with at least ``MIN_AREA`` px² at the model's input (the long
    side of ``frame`` shrunk to ``IMAGE_SIZE``)."""
    scale2 = (IMAGE_SIZE / max(frame)) ** 2
    return [(name, m) for name, m in masks if m.sum() * scale2 >= MIN_AREA]


def view_instances(masks: list[tuple[str, np.ndarray]], frame: tuple[int, int],
                   offset: tuple[int, int]) -> list[tuple[str, Box]]:
    """(name, box) of each of a view's :func:`large_instances`, left to right (ties: category
    order); box = x0, y0, x1, y1 of its pixels in the model's frame of (w, h) px (LLaVA-1.5: the
    padded square; the view at ``offset`` = (x, y) in it), divided by w and h."""
    fw, fh = frame
    found = []
    for name, m in large_instances(masks, frame):
        ys, xs = np.nonzero(m)
        dx, dy = offset
        box = ((xs.min() + dx) / fw, (ys.min() + dy) / fh, (xs.max() + 1 + dx) / fw,
               (ys.max() + 1 + dy) / fh)
        found.append((name, tuple(float(v) for v in box)))
    return sorted(found, key=lambda f: (f[1][0], ORDER[f[0]]))


Point = tuple[float, float]


def view_points(masks: list[tuple[str, np.ndarray]], frame: tuple[int, int],
                offset: tuple[int, int]) -> list[tuple[str, Point]]:
    """(name, point) of each of a view's :func:`large_instances`, left to right by the point
    (ties: category order); the point is the instance's pixel farthest from its edge (inside
    it, also for a ring or a moon), its centre's x, y in the model's frame divided by w, h."""
    fw, fh = frame
    found = []
    for name, m in large_instances(masks, frame):
        depth = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        dx, dy = offset
        found.append((name, ((x + 0.5 + dx) / fw, (y + 0.5 + dy) / fh)))
    return sorted(found, key=lambda f: (f[1][0], ORDER[f[0]]))


def point_text(point: Point) -> str:
    """A point's cell of the ``GRID`` x ``GRID`` grid as one token, row then column: (0.75,
    0.31) -> "37" (Kosmos-2's location tokens, on a coarser grid)."""
    x, y = (min(int(v * GRID), GRID - 1) for v in point)
    return f"{y}{x}"


def token_labels(masks: list[tuple[str, np.ndarray]], view_hw: tuple[int, int], cell: int,
                 frame: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """(rows * cols,) uint8, row by row: for each image token (a ``cell`` px square of the
    (h, w) view as the model sees it), 1 + the category index of the instance under its
    centre, 0 for none (background, padding). The view shows the ``frame`` (w, h), in which the
    crop that ``masks`` cover lies at ``offset``."""
    (h, w), (fw, fh), (dx, dy) = view_hw, frame, offset
    ys = np.floor((np.arange(h // cell) + 0.5) * cell * fh / h - dy).astype(int)
    xs = np.floor((np.arange(w // cell) + 0.5) * cell * fw / w - dx).astype(int)
    labels = np.zeros((len(ys), len(xs)), np.uint8)
    if not masks:
        return labels.ravel()
    ch, cw = masks[0][1].shape
    inside = ((ys >= 0) & (ys < ch))[:, None] & ((xs >= 0) & (xs < cw))[None]
    rows, cols = np.ix_(ys.clip(0, ch - 1), xs.clip(0, cw - 1))
    for name, m in masks:
        labels[m[rows, cols] & inside] = ORDER[name] + 1
    return labels.ravel()


def box_text(box: Box, family: str = "llava") -> str:
    """The family's box text: LLaVA-1.5's RefCOCO "[0.12, 0.30, 0.45, 0.78]"; Qwen2-VL's
    "<|box_start|>(120,300),(450,780)<|box_end|>" (thousandths)."""
    if family == "qwen2_vl":
        x0, y0, x1, y1 = (round(1000 * v) for v in box)
        return f"<|box_start|>({x0},{y0}),({x1},{y1})<|box_end|>"
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def model_view(family: str, processor, crop: np.ndarray
               ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """(3, h, w) uint8: a view as the processor resizes it (LLaVA-1.5: padded to a square of
    ``IMAGE_SIZE``; Qwen2-VL: resized to multiples of 16 px within ``QWEN_SIDE``² pixels); the
    (w, h) frame boxes are relative to; the view's offset in that frame."""
    ip = processor.image_processor
    if family == "qwen2_vl":
        h, w = smart_resize(crop.shape[0], crop.shape[1], factor=token_cell(family, processor),
                            min_pixels=ip.size.shortest_edge, max_pixels=ip.size.longest_edge)
        resized = np.asarray(Image.fromarray(crop).resize((w, h), Image.BICUBIC))
        return resized.transpose(2, 0, 1).copy(), (crop.shape[1], crop.shape[0]), (0, 0)
    fitted, offset = fit_image("llava", processor, crop, "pad")
    out = ip(images=fitted, do_rescale=False, do_normalize=False, return_tensors="np")
    pixels = np.round(out["pixel_values"][0]).clip(0, 255).astype(np.uint8)
    return pixels, (fitted.shape[1], fitted.shape[0]), offset


@dataclass
class Views:
    """Training views: each (3, h, w) uint8 as the model sees it, the names seen in each (left
    to right) with their areas (px² at the model's input), the instances seen in each, their
    points (:func:`view_points`) and each image token's category (:func:`token_labels`)."""

    pixels: list[torch.Tensor]
    names: list[list[str]]
    areas: list[list[float]]
    instances: list[list[tuple[str, Box]]]
    points: list[list[tuple[str, Point]]] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


def make_views(n_scenes: int, seed: int, processor, family: str = "llava") -> Views:
    """Views as :func:`model_view` gives them (full image + 2x2 tiles of each scene, each also
    mirrored left to right), their names and areas (:func:`view_areas`), their
    instances (:func:`view_instances`), points and token labels."""
    rng = np.random.default_rng(seed)
    cell = token_cell(family, processor)
    pixels, names, areas, instances, points, labels = [], [], [], [], [], []
    for _ in range(n_scenes):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        image, objects = render_scene(rng, w, h)
        for tile in split_tiles(h, w, (2, 2), 0.0, 64):
            for flip in (False, True):
                crop = tile.crop(image)[:, ::-1] if flip else tile.crop(image)
                view, frame, offset = model_view(family, processor, np.ascontiguousarray(crop))
                pixels.append(torch.from_numpy(view))
                masks = [(CATEGORIES[c].name, tile.crop(m)[:, ::-1] if flip else tile.crop(m))
                         for c, m in objects]
                seen = view_areas(masks, max(crop.shape[:2]))
                names.append(list(seen))
                areas.append(list(seen.values()))
                instances.append(view_instances(masks, frame, offset))
                points.append(view_points(masks, frame, offset))
                labels.append(token_labels(masks, view.shape[1:], cell, frame, offset))
    return Views(pixels, names, areas, instances, points, labels)


def answer(task: str, names: list[str], instances: list[tuple[str, Box]], about: str,
           family: str = "llava", points: list[tuple[str, Point]] = ()) -> str:
    """The answer of ``task`` for a view (``about``: the category a where / count question
    names), boxes in the ``family``'s text, points as :func:`point_text`."""
    if task == "list":
        return " , ".join(names) if names else "none"
    if task == "points":
        return " , ".join(f"{n} {point_text(p)}" for n, p in points) if points else "none"
    if task == "boxes":
        return (" , ".join(f"{n} {box_text(b, family)}" for n, b in instances) if instances
                else "none")
    boxes = [b for n, b in instances if n == about]
    if task == "count":
        return str(len(boxes))
    return " , ".join(box_text(b, family) for b in boxes) if boxes else "none"


def prompt_ids(processor, question: str, family: str = "llava") -> torch.Tensor:
    """(N,) ids of the chat prompt asking ``question`` about one image. LLaVA: its image token
    repeated as the processor repeats it; Qwen2-VL: one image token, to expand per view."""
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True)
    if family == "qwen2_vl":
        return torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return processor(images=blank, text=text, return_tensors="pt")["input_ids"][0]


class Batches:
    """Random training batches: view pixels, a task and question, the answer as labels. The
    ``list`` answers name the categories left to right (``list_order`` "left"), in a new
    random order each time ("random") or largest area first ("area", ties left to right); the
    ``boxes`` answers list the instances left to right (``boxes_order`` "left") or in a new
    random order each time ("random")."""

    def __init__(self, processor, views: Views, tasks: dict[str, float], seed: int,
                 family: str = "llava", list_order: str = "left", boxes_order: str = "left"):
        self.processor, self.views, self.family = processor, views, family
        self.list_order, self.boxes_order = list_order, boxes_order
        self.names, self.instances = views.names, views.instances
        self.tok = tok = processor.tokenizer
        self.tasks = list(tasks)
        self.weights = torch.tensor([tasks[t] for t in self.tasks], dtype=torch.float)
        prompt = partial(prompt_ids, processor, family=family)
        self.prompts = {("list", k): prompt(q) for k, q in enumerate(QUESTIONS)}
        self.prompts[("boxes", 0)] = prompt(BOXES)
        if "points" in tasks:
            self.prompts[("points", 0)] = prompt(POINTS)
        for k, c in enumerate(CATEGORIES):
            self.prompts[("where", k)] = prompt(WHERE.format(c.name))
            self.prompts[("count", k)] = prompt(COUNT.format(c.name))
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.pad = tok.pad_token_id
        self.cell = token_cell(family, processor)
        self.gen = torch.Generator().manual_seed(seed)

    def _pick(self, v: int) -> tuple[torch.Tensor, str]:
        """(prompt ids, answer text) of a random task about view ``v``."""
        task = self.tasks[int(torch.multinomial(self.weights, 1, generator=self.gen))]
        if task in ("boxes", "points") and len(self.instances[v]) > MAX_LISTED:
            task = "list"
        if task == "list":
            k = int(torch.randint(len(QUESTIONS), (1,), generator=self.gen))
        elif task in ("boxes", "points"):
            k = 0
        else:  # a category of the view 3 times in 4, else any
            present = sorted({ORDER[n] for n, _ in self.instances[v]})
            if present and torch.rand(1, generator=self.gen).item() < 0.75:
                k = present[int(torch.randint(len(present), (1,), generator=self.gen))]
            else:
                k = int(torch.randint(len(CATEGORIES), (1,), generator=self.gen))
        names, instances = self.names[v], self.instances[v]
        # drawn for every task (the committed models' runs did so), used by the list task only
        if self.list_order == "random":  # each time another order, as captions name things
            names = [names[i] for i in torch.randperm(len(names), generator=self.gen).tolist()]
        elif self.list_order == "area":  # the most prominent first (a stable sort keeps ties)
            by_area = sorted(range(len(names)), key=lambda i: -self.views.areas[v][i])
            names = [names[i] for i in by_area]
        points = self.views.points[v] if task == "points" else []
        if task == "boxes" and self.boxes_order == "random":
            order = torch.randperm(len(instances), generator=self.gen).tolist()
            instances = [instances[i] for i in order]
        if task == "points" and self.boxes_order == "random":
            points = [points[i] for i in torch.randperm(len(points), generator=self.gen).tolist()]
        text = answer(task, names, instances, CATEGORIES[k].name, self.family, points)
        ids = self.prompts[(task, k)]
        if self.family == "qwen2_vl":  # one image token per merged cell of the view
            h, w = self.views.pixels[v].shape[1:]
            pad = self.tok.convert_tokens_to_ids("<|image_pad|>")
            at = int(torch.nonzero(ids == pad)[0, 0])
            ids = torch.cat([ids[:at], torch.full(((h // self.cell) * (w // self.cell),), pad),
                             ids[at + 1:]])
        return ids, text

    def sample(self, size: int) -> dict:
        """The model's inputs and labels for ``size`` random views, and ``token_labels``: the
        views' :func:`token_labels` one after the other (None for views without them)."""
        views = torch.randint(len(self.names), (size,), generator=self.gen)
        picked = [self._pick(int(v)) for v in views]
        token_labels = (torch.from_numpy(np.concatenate([self.views.labels[v] for v in views]))
                        .long() if self.views.labels else None)
        seqs = [torch.cat([p, torch.tensor(self.tok(a, add_special_tokens=False)["input_ids"]
                                           + [self.tok.eos_token_id])]) for p, a in picked]
        n = max(len(s) for s in seqs)
        ids = torch.full((size, n), self.pad)
        labels = torch.full((size, n), -100)
        mask = torch.zeros((size, n), dtype=torch.long)
        for k, (s, (p, _)) in enumerate(zip(seqs, picked)):
            ids[k, :len(s)], mask[k, :len(s)] = s, 1
            labels[k, len(p):len(s)] = s[len(p):]
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "token_labels": token_labels}
        if self.family == "qwen2_vl":
            images = [self.views.pixels[v].permute(1, 2, 0).numpy() for v in views.tolist()]
            out = self.processor.image_processor(images=images, do_resize=False,
                                                 return_tensors="pt")
            image = ids == self.tok.convert_tokens_to_ids("<|image_pad|>")
            return {**batch, "pixel_values": out["pixel_values"],
                    "image_grid_thw": out["image_grid_thw"], "mm_token_type_ids": image.long()}
        pixels = torch.stack([self.views.pixels[v] for v in views.tolist()]).float() / 255.0
        return {**batch, "pixel_values": (pixels - self.mean) / self.std}


def cached_views(path: Path | None, scenes: int, seed: int, processor, family: str = "llava"
                 ) -> Views:
    """:func:`make_views`, read from ``path`` (.npz: the views' uint8 pixels one after the other
    in ``pixels``, their ``shapes``, ``names`` joined by "|", ``areas``, ``instances`` and
    ``points`` as JSON, the token ``labels`` one after the other) when it exists, else rendered
    and written there (no path: rendered only)."""
    if path is not None and path.exists():
        with np.load(path) as z:
            if "areas" not in z:
                raise ValueError(f"{path}: a views cache without the names' areas (written by an "
                                 "older train_tiny); delete it to render the views again")
            if "labels" not in z:
                raise ValueError(f"{path}: a views cache without points and token labels "
                                 "(written by an older train_tiny); delete it to render the "
                                 "views again")
            sizes = [int(np.prod(shape)) for shape in z["shapes"]]
            flat = torch.from_numpy(z["pixels"]).split(sizes)
            cell = token_cell(family, processor)
            cells = [(h // cell) * (w // cell) for _, h, w in z["shapes"]]
            return Views([p.view(*shape) for p, shape in zip(flat, z["shapes"].tolist())],
                         [n.split("|") if n else [] for n in z["names"]],
                         [json.loads(a) for a in z["areas"]],
                         [[(n, tuple(b)) for n, b in json.loads(i)] for i in z["instances"]],
                         [[(n, tuple(p)) for n, p in json.loads(i)] for i in z["points"]],
                         np.split(z["labels"], np.cumsum(cells)[:-1]))
    views = make_views(scenes, seed, processor, family)
    if path is not None:
        np.savez_compressed(path, pixels=torch.cat([p.flatten() for p in views.pixels]).numpy(),
                            shapes=np.array([p.shape for p in views.pixels]),
                            names=np.array(["|".join(n) for n in views.names]),
                            areas=np.array([json.dumps(a) for a in views.areas]),
                            instances=np.array([json.dumps(i) for i in views.instances]),
                            points=np.array([json.dumps(p) for p in views.points]),
                            labels=np.concatenate(views.labels))
    return views


class ImageTokens:
    """The image tokens the language model reads (the projector's or the merger's output),
    caught on each forward, and their alignment loss: each token scored against the word
    embeddings of the category names and "none" (dot products), cross-entropy with the
    category under it (:func:`token_labels`). As LLaVA's first stage aligns the projector to
    the word embeddings (there through captions, here per token), so that a name's tokens can
    find their image tokens by content; where attention goes is still left to the model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokens = model, None
        self.words = torch.tensor(tokenizer.convert_tokens_to_ids(
            ["none", *(c.name for c in CATEGORIES)]))
        inner = model.model
        module = inner.visual.merger if hasattr(inner, "visual") else inner.multi_modal_projector
        module.register_forward_hook(self._catch)

    def _catch(self, module, inputs, output) -> None:
        self.tokens = output.reshape(-1, output.shape[-1])  # (views' tokens, hidden)

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """labels: (views' tokens,) 0 none, 1 + category index, the batch's views in order."""
        scores = self.tokens @ self.model.get_input_embeddings().weight[self.words].T
        return torch.nn.functional.cross_entropy(scores, labels)


WARMUP = 40


def learning_rate_factor(step: int) -> float:
    """Linear warm-up over ``WARMUP`` steps, then 1 / sqrt(step): a schedule that does not
    depend on the number of steps, so the checkpoint a run saves at step n is the weights of a
    run of n steps."""
    return min(1.0, (step + 1) / WARMUP) * (WARMUP / max(step + 1, WARMUP)) ** 0.5


def train(out: Path, scenes: int, steps: int, batch: int, lr: float, seed: int, threads: int,
          views: Path | None = None, tasks: dict[str, float] = TASKS, patch: int = PATCH,
          save_every: int = 100, family: str = "llava", list_order: str = "left",
          boxes_order: str = "left", positions: str = "learned", align: float = 0.0) -> dict:
    torch.set_num_threads(threads)
    processor, model = BUILDERS[family](seed, patch, positions,
                                        POINT_WORDS if "points" in tasks else ())
    t0 = time.time()
    data = cached_views(views, scenes, seed, processor, family)
    print(f"{len(data.names)} views from {scenes} scenes in {time.time() - t0:.0f} s; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)
    data = Batches(processor, data, tasks, seed, family, list_order, boxes_order)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, learning_rate_factor)
    gen = model.generation_config
    gen.max_new_tokens, gen.do_sample = 24, False
    gen.eos_token_id, gen.pad_token_id = processor.tokenizer.eos_token_id, data.pad
    processor.save_pretrained(out)
    model.train()
    image_tokens = ImageTokens(model, processor.tokenizer) if align else None
    t0, running = time.time(), None
    for step in range(steps):
        inputs = data.sample(batch)
        token_labels = inputs.pop("token_labels")
        loss = model(**inputs).loss
        if align:
            loss = loss + align * image_tokens.loss(token_labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step} loss {running:.4f} {time.time() - t0:.0f} s", flush=True)
        if (step + 1) % save_every == 0 or step == steps - 1:  # a stopped run leaves weights
            model.save_pretrained(out)
            (out / "training.json").write_text(json.dumps({"steps": step + 1, "batch": batch,
                                                           "lr": lr, "seed": seed, "tasks": tasks,
                                                           "scenes": scenes, "patch": patch,
                                                           "family": family,
                                                           "list_order": list_order,
                                                           "boxes_order": boxes_order,
                                                           "positions": positions,
                                                           "align": align}))
    return {"views": len(data.names), "steps": steps, "loss": running,
            "minutes": (time.time() - t0) / 60}


def task_mix(text: str) -> dict[str, float]:
    """"list=0.4,where=0.6" -> {"list": 0.4, "where": 0.6} (tasks of ``TASKS``)."""
    mix = {}
    for part in text.split(","):
        task, _, weight = part.partition("=")
        if task not in ALL_TASKS or not weight:
            raise argparse.ArgumentTypeError(f"{part!r}: expected TASK=WEIGHT, TASK one of "
                                             f"{', '.join(ALL_TASKS)}")
        mix[task] = float(weight)
    return mix


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scenes", type=int, default=500)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 ran ~10x slower per step on a loaded 2-core machine)")
    ap.add_argument("--views", type=Path, help="cache of the rendered views (.npz), made once "
                    "for these --scenes and --seed")
    ap.add_argument("--tasks", type=task_mix, default=TASKS,
                    help="the task mix, e.g. list=0.4,where=0.25,boxes=0.2,count=0.15 (list=1: "
                    "names only, the first committed model's training)")
    ap.add_argument("--patch", type=int, default=PATCH, help="vision patch size (96 px input)")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--list-order", default="left", choices=LIST_ORDERS,
                    help="the order of the names in list answers: left to right, random "
                    "(drawn anew for each sample), or largest area first")
    ap.add_argument("--boxes-order", default="left", choices=BOXES_ORDERS,
                    help="the order of the instances in boxes answers: left to right, or random")
    ap.add_argument("--positions", default="learned", choices=POSITIONS,
                    help="LLaVA: the vision tower's position embeddings start random (CLIP's) "
                    "or as 2-D sine-cosine of the patch grid")
    ap.add_argument("--align", type=float, default=0.0,
                    help="weight of the image tokens' alignment to the category names' word "
                    "embeddings (ImageTokens); 0: none")
    ap.add_argument("--family", default="llava", choices=sorted(BUILDERS),
                    help="llava: LLaVA-1.5; qwen2_vl: its Qwen2-VL twin (--patch unused)")
    args = ap.parse_args(argv)
    if args.family != "llava" and args.positions != "learned":
        ap.error("--positions: the LLaVA tower's position embeddings; the Qwen2-VL twin has none")
    summary = train(args.out, args.scenes, args.steps, args.batch, args.lr, args.seed,
                    args.threads, args.views, args.tasks, args.patch, args.save_every, args.family,
                    args.list_order, args.boxes_order, args.positions, args.align)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
