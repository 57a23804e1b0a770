"""Can the tiny LLaVA of ``bench/train_tiny.py`` learn to find a named colour? Its where task, cut
down to one token.

    python bench/lookup.py [--images discs | scenes] [--objects 3] [--steps 1000]
                           [--patch 8] [--positions learned | sincos] [--scenes 300]
                           [--warm-objects 1 --warm-steps 300] [--name-last] [--align 1]

The model of ``train_tiny.build`` (untrained, seeded) learns one question from scratch, "is the
disc on the left or the right ?", answered by one word: the side of the padded square where the
named category's leftmost instance has its centre. The images (``--images``):

* ``discs``: 96 px of grey (125), ``--objects`` discs of radius 8 px in the colours of distinct
  categories; the question names one, which lies alone on its side, the others on the other
  side, so only an answer that reads the name beats 0.5 (for the first ``--warm-steps`` steps,
  a curriculum: ``--warm-objects`` discs);
* ``scenes``: ``train_tiny``'s training views of ``--scenes`` scenes (full images and 2x2
  tiles of :mod:`vlpipe.synthetic`, padded to a square); the question names a category of the
  view.

``--name-last``: the answer starts with the category's name, "disc left", as the points task's
answers do ("disc 37"), so the side is asked of the name's own token, not of the prompt's last
one. ``--align W``: ``train_tiny.ImageTokens``' alignment loss, weighted W, on the image tokens
(each scored against the names' word embeddings, the category under it as label).

Every 50 steps it prints the accuracy on the batch it is about to learn from, i.e. on images
it has not learnt from yet (discs: drawn anew each step; scenes: drawn from the views, so late
batches repeat views it learnt from); the last line is ``{"accuracy": [[step, accuracy of
the 50 batches up to it], ...], "majority": share of the commoner answer}``. The model answers
by the image alone or not at all: a model that ignores the image reaches the majority share.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from train_tiny import (IMAGE_SIZE, PATCH, POSITIONS, CATEGORIES, ORDER, ImageTokens, Views,
                        build, make_views, prompt_ids, token_labels)

QUESTION = "is the {} on the left or the right ?"
SIDES = ("left", "right")
RADIUS = 8  # px, discs


def disc_batch(rng: np.random.Generator, size: int, objects: int, cell: int = PATCH
               ) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """(size, 96, 96, 3) uint8 grey images with ``objects`` discs of distinct categories, the
    category asked about in each, its side, the images' (size, (96 / cell)²) token labels
    (``train_tiny.token_labels``). The asked disc lies on a random side and the others
    on the other side, so an answer that does not read the name is right half the time at most
    (the side of one disc at random) or never (the side with more discs, for 3 or more)."""
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    images = np.full((size, IMAGE_SIZE, IMAGE_SIZE, 3), 125, np.uint8)
    names, sides, labels = [], [], []
    half = IMAGE_SIZE / 2
    for image in images:
        cats = rng.choice(len(CATEGORIES), objects, replace=False)  # cats[0] is asked about
        side = int(rng.integers(2))
        xs = (rng.uniform(RADIUS, half - RADIUS, objects)
              + half * np.where(np.arange(objects) == 0, side, 1 - side))
        ys = rng.uniform(RADIUS, IMAGE_SIZE - RADIUS, objects)
        masks = [(CATEGORIES[c].name, (xx - cx) ** 2 + (yy - cy) ** 2 < RADIUS ** 2)
                 for c, cx, cy in zip(cats, xs, ys)]
        for name, mask in masks:
            image[mask] = CATEGORIES[ORDER[name]].colour
        names.append(CATEGORIES[cats[0]].name)
        sides.append(SIDES[side])
        labels.append(token_labels(masks, (IMAGE_SIZE, IMAGE_SIZE), cell,
                                   (IMAGE_SIZE, IMAGE_SIZE), (0, 0)))
    return images, names, sides, np.stack(labels)


def scene_batch(rng: np.random.Generator, size: int, views: Views
                ) -> tuple[np.ndarray, list[str], list[str], np.ndarray]:
    """Views with an instance (uint8, as the processor resized them), a category of each, the
    side of its leftmost instance's centre in the padded square, the views' token labels."""
    useful = [v for v, found in enumerate(views.instances) if found]
    picked = rng.choice(useful, size)
    images = np.stack([views.pixels[v].permute(1, 2, 0).numpy() for v in picked])
    names, sides = [], []
    for v in picked:
        present = sorted({n for n, _ in views.instances[v]}, key=ORDER.get)
        name = present[int(rng.integers(len(present)))]
        x0, _, x1, _ = next(box for n, box in views.instances[v] if n == name)
        names.append(name)
        sides.append(SIDES[int((x0 + x1) / 2 >= 0.5)])
    return images, names, sides, np.stack([views.labels[v] for v in picked])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default="discs", choices=("discs", "scenes"))
    ap.add_argument("--objects", type=int, default=3, help="discs per image")
    ap.add_argument("--warm-objects", type=int, default=1,
                    help="discs per image for the first --warm-steps steps")
    ap.add_argument("--warm-steps", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=300, help="scenes of the views (--images scenes)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--patch", type=int, default=PATCH)
    ap.add_argument("--positions", default="learned", choices=POSITIONS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name-last", action="store_true",
                    help="the answer starts with the name: the side is asked of its token")
    ap.add_argument("--align", type=float, default=0.0,
                    help="weight of train_tiny.ImageTokens' alignment loss (0: none)")
    args = ap.parse_args(argv)
    for option, objects in (("--objects", args.objects), ("--warm-objects", args.warm_objects)):
        if not 1 <= objects <= len(CATEGORIES):
            ap.error(f"{option}: 1 to {len(CATEGORIES)} (one category each)")

    torch.set_num_threads(1)
    processor, model = build(args.seed, args.patch, args.positions, ("on", "or", *SIDES))
    tok = processor.tokenizer
    prompts = {c.name: prompt_ids(processor, QUESTION.format(c.name)) for c in CATEGORIES}
    if args.name_last:
        prompts = {name: torch.cat([ids, torch.tensor(tok.convert_tokens_to_ids([name]))])
                   for name, ids in prompts.items()}
    side_ids = torch.tensor(tok.convert_tokens_to_ids(list(SIDES)))
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
    rng = np.random.default_rng(args.seed)
    views = make_views(args.scenes, args.seed, processor) if args.images == "scenes" else None

    image_tokens = ImageTokens(model, tok) if args.align else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model.train()
    t0, right, counts, curve = time.time(), [], {s: 0 for s in SIDES}, []
    for step in range(args.steps):
        objects = args.warm_objects if step < args.warm_steps else args.objects
        images, names, sides, labels = (disc_batch(rng, args.batch, objects, args.patch)
                                        if views is None else scene_batch(rng, args.batch, views))
        pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        ids = torch.stack([prompts[n] for n in names])
        truth = side_ids[[SIDES.index(s) for s in sides]]
        logits = model(input_ids=ids, pixel_values=pixels, logits_to_keep=1).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, truth)
        if args.align:
            loss = loss + args.align * image_tokens.loss(torch.from_numpy(labels).long().ravel())
        said = side_ids[logits[:, side_ids].argmax(-1)]  # the likelier of the two sides
        right.append(float((said == truth).float().mean()))
        for s in sides:
            counts[s] += 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            curve.append([step + 1, round(float(np.mean(right[-50:])), 3)])
            print(f"step {step + 1}: accuracy {curve[-1][1]:.3f} (loss {loss.item():.3f}, "
                  f"{time.time() - t0:.0f} s)", flush=True)
    print(json.dumps({"accuracy": curve, "majority": max(counts.values()) / sum(counts.values())}))


if __name__ == "__main__":
    main()
