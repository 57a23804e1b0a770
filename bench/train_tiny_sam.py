"""Train segment-anything's ``Sam`` (variant ``tiny_512_deep``) on synthetic scenes with SAM's
recipe.

    python bench/train_tiny_sam.py --out tests/data/tiny_sam_shapes [--steps N] [--threads T]
        [--variant tiny_512]

The model is :func:`vlpipe.tiny.sam.build_tiny_official_sam` (the official ``ImageEncoderViT``,
``PromptEncoder`` and ``MaskDecoder``; ``tiny_512_deep``: 512 px input, a 32x32 embedding,
128x128 low-res masks, 4 encoder blocks; ``tiny_512``: the same with 2 blocks; ``tiny``: 256 px,
16x16, 64x64, 2 blocks, whose input size caps its masks: see :func:`input_size_ceiling`).
Views are scenes of :mod:`vlpipe.synthetic` (both kinds, every size; half of them a random crop
of half the width and height, as detect's 2x2 tiles show them), from another random stream than
the held-apart ``make_scenes`` ones. Per view, up to ``--objects`` instances are prompted as SAM
was trained (Kirillov et al. 2023, appendix A): a positive point drawn uniformly in the
instance, then ``--rounds`` - 1 corrective rounds, each adding one point drawn uniformly from
the error region of the previous mask (positive in a false negative, negative in a false
positive pixel) and feeding the previous low-res logits back as the mask prompt. Every round's
mask is trained with focal + dice loss against the instance, and the IoU head with the mean
squared error to the mask's true IoU. The mask loss is taken on the low-res logits against each
low-res cell's share of the instance (:func:`low_res_target`), not on the logits upscaled to the
input: 16 times fewer pixels, and at 512 px the upscaled loss took most of a step. SAM weighs
focal 20:1 against dice (``--focal-weight``); here 1:1, as from scratch 20:1 collapsed to empty
masks: on two views, 80 steps at 2e-3, IoU 0.000 with 20:1 against 0.275 with 1:1 (120 steps of
a full run: 0.000). Only the single-mask output is trained: the ``official`` backend decodes
with ``multimask_output=False``. Two additions for the prompts the detect recipe gives: half of
the first rounds also get a negative point drawn outside the instance (the recipe's first round:
positive and negative points from an attention map, no mask prompt), and a corrective round goes
without the mask prompt with probability ``DROP_MASK``.

CPU, seeded: the same command (``--threads`` included) gives the same weights. A safetensors
checkpoint ``sam_tiny.safetensors`` is written every ``--save-every`` steps with
``training.json`` (the steps done); the learning rate does not depend on ``--steps``
(``train_tiny.learning_rate_factor``), so a stopped run's checkpoint after n steps is what
``--steps n`` gives.
Load it with ``sam: {model: .../sam_tiny.safetensors, backend: official, variant:
tiny_512_deep}``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import supervision as sv
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything import sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import sigmoid_focal_loss

from train_tiny import learning_rate_factor
from vlpipe.results import decode_mask
from vlpipe.synthetic import CATEGORIES, SCENE_KINDS, SIZES, render_scene
import vlpipe.tiny.sam  # noqa: F401  (registers the variants tiny, tiny_512, tiny_512_deep)

WEIGHTS = "sam_tiny.safetensors"
VARIANT = "tiny_512_deep"  # the committed model's architecture
VARIANTS = sorted(v for v in sam_model_registry if v.startswith("tiny"))  # vlpipe.tiny.sam's
MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "tiny_sam_shapes" / WEIGHTS
MIN_PIXELS = 12  # an instance with fewer pixels at the model's input is not prompted
DROP_MASK = 0.2  # a corrective round without the previous mask prompt
SPILL = 0.2  # interactive_ious: a mask spills over when its false positives reach this share


def crop_scene(rng: np.random.Generator, image: np.ndarray, instances: list, crop: bool
               ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The scene or a random window of half its width and height (a tile)."""
    if not crop:
        return image, instances
    h, w = image.shape[:2]
    y0, x0 = int(rng.integers(0, h - h // 2 + 1)), int(rng.integers(0, w - w // 2 + 1))
    window = (slice(y0, y0 + h // 2), slice(x0, x0 + w // 2))
    return image[window], [(c, m[window]) for c, m in instances]


def model_input(image: np.ndarray, masks: list[np.ndarray], size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) uint8 image resized as ``SamPredictor`` does (longest side, then
    zero-padded bottom/right), (N + 1, size, size) bool: the masks resized the same way (area >
    half), then the image's area without the padding."""
    transform = ResizeLongestSide(size)
    resized = transform.apply_image(image)
    h, w = resized.shape[:2]
    padded = np.zeros((size, size, 3), np.uint8)
    padded[:h, :w] = resized
    out = np.zeros((len(masks) + 1, size, size), bool)
    for k, m in enumerate(masks):
        resized = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        out[k, :h, :w] = resized > 0.5
    out[-1, :h, :w] = True
    return padded.transpose(2, 0, 1), out


class Views:
    """Training views drawn from one seeded stream: scene, optional tile crop, instances."""

    def __init__(self, seed: int, size: int) -> None:
        self.rng, self.size = np.random.default_rng(seed), size

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(3, S, S) uint8 image, (N, S, S) bool masks of its instances (N >= 1), (S, S) bool
        the image without its padding."""
        while True:
            w, h = SIZES[int(self.rng.integers(len(SIZES)))]
            kind = SCENE_KINDS[int(self.rng.integers(len(SCENE_KINDS)))]
            image, instances = render_scene(self.rng, w, h, kind)
            image, instances = crop_scene(self.rng, image, instances, self.rng.random() < 0.5)
            pixels, masks = model_input(image, [m for _, m in instances], self.size)
            masks, valid = masks[:-1], masks[-1]
            masks = masks[masks.sum((1, 2)) >= MIN_PIXELS]
            if len(masks):
                return pixels, masks, valid


def error_points(pred: torch.Tensor, gt: torch.Tensor, gen: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, gt (K, S, S) bool -> one corrective point per mask: (K, 2) x, y pixel centres,
    (K,) labels (1 in a false-negative pixel, 0 in a false-positive one). ``gen``: drawn
    uniformly from the error region (SAM's training); None: the error pixel farthest from the
    region's border (SAM's evaluation). A mask without error gets a positive point in the
    instance."""
    k, s = gt.shape[0], gt.shape[-1]
    points, labels = torch.zeros(k, 2), torch.zeros(k, dtype=torch.long)
    for i in range(k):
        error = pred[i] ^ gt[i]
        region = error if error.any() else gt[i]
        if gen is None:
            x, y = (int(v) for v in innermost(region.numpy()))
        else:
            cells = torch.nonzero(region.flatten())[:, 0]
            y, x = divmod(int(cells[torch.randint(len(cells), (1,), generator=gen)]), s)
        points[i] = torch.tensor([x + 0.5, y + 0.5])
        labels[i] = int(gt[i, y, x])
    return points, labels


def first_points(gt: torch.Tensor, gen: torch.Generator, valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, P, 2) points, (K, P) labels: a positive point per instance, uniform inside it; half
    the time also a negative point uniform in ``valid`` (S, S) bool (the image, not its
    padding) outside the instance."""
    coords, labels = error_points(torch.zeros_like(gt), gt, gen)
    coords, labels = coords[:, None], labels[:, None]
    if torch.rand(1, generator=gen).item() < 0.5:
        return coords, labels
    outside, _ = error_points(valid[None] & ~gt, torch.zeros_like(gt), gen)
    return (torch.cat([coords, outside[:, None]], 1),
            torch.cat([labels, torch.zeros_like(labels)], 1))


def dice_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(K, S, S) logits and float targets -> (K,) 1 - soft Dice."""
    p = logits.sigmoid().flatten(1)
    g = gt.flatten(1)
    return 1 - (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)


def interactive(model, embedding: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                rounds: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                           list[torch.Tensor]]:
    """SAM's interactive training loop for the K instances ``gt`` (K, S, S) bool of one image
    whose embedding is (1, C, e, e) (``valid``: (S, S) bool, the image without its padding):
    per round (K, S/4, S/4) low-res mask logits, (K,) predicted IoU and (K, S, S) bool the
    mask at the input size (no gradient). Round 1: the :func:`first_points`; each later round
    adds a point from the previous mask's error region and feeds its low-res logits back (not
    with probability ``DROP_MASK``)."""
    s = gt.shape[-1]
    coords, labels = first_points(gt, gen, valid)
    low = None
    lows, ious, masks = [], [], []
    pe = model.prompt_encoder.get_dense_pe()
    for r in range(rounds):
        if r:
            point, label = error_points(masks[-1], gt, gen)
            coords = torch.cat([coords, point[:, None]], 1)
            labels = torch.cat([labels, label[:, None]], 1)
        if low is not None and torch.rand(1, generator=gen).item() < DROP_MASK:
            low = None
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None,
                                             masks=None if low is None else low.detach())
        low, iou = model.mask_decoder(image_embeddings=embedding, image_pe=pe,
                                      sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, multimask_output=False)
        lows.append(low[:, 0])
        ious.append(iou[:, 0])
        with torch.no_grad():
            masks.append(F.interpolate(low, (s, s), mode="bilinear", align_corners=False)[:, 0] > 0)
    return lows, ious, masks


def low_res_target(gt: torch.Tensor) -> torch.Tensor:
    """(K, S, S) bool -> (K, S/4, S/4) float: each low-res cell's share of the instance."""
    return F.avg_pool2d(gt.float()[:, None], 4)[:, 0]


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(K, S, S) bool each -> (K,) IoU."""
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)


def dense_ious(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """(K, H, W) bool arrays -> K IoUs."""
    return mask_iou(torch.from_numpy(pred), torch.from_numpy(gt)).tolist()


def box_ious(pred: np.ndarray, gt: np.ndarray) -> list[float]:
    """(K, H, W) bool each -> K IoUs of their bounding boxes (an empty mask: 0)."""
    return [float(sv.box_iou_batch(sv.mask_to_xyxy(p[None]), sv.mask_to_xyxy(g[None]))[0, 0])
            if p.any() else 0.0 for p, g in zip(pred, gt)]


def save(model: torch.nn.Module, path: Path) -> None:
    """Safetensors checkpoint, written to a temporary file first (a kill leaves the last one)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)


def train(out: Path, steps: int, batch: int, objects: int, rounds: int, lr: float, seed: int,
          threads: int, save_every: int, focal_weight: float, variant: str = VARIANT) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = sam_model_registry[variant]()
    size = model.image_encoder.img_size
    views, gen = Views(seed, size), torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, learning_rate_factor)
    out.mkdir(parents=True, exist_ok=True)
    model.train()
    t0, running, running_iou = time.time(), None, None
    for step in range(steps):
        data = [views.next() for _ in range(batch)]
        pixels = torch.from_numpy(np.stack([p for p, _, _ in data])).float()
        embeddings = model.image_encoder(model.preprocess(pixels))
        losses, first_iou = [], []
        for b, (_, all_masks, valid) in enumerate(data):
            pick = torch.randperm(len(all_masks), generator=gen)[:objects]
            gt = torch.from_numpy(all_masks)[pick]
            lows, ious, masks = interactive(model, embeddings[b:b + 1], gt,
                                            torch.from_numpy(valid), rounds, gen)
            target = low_res_target(gt)
            for logits, iou, mask in zip(lows, ious, masks):
                focal = sigmoid_focal_loss(logits, target, reduction="none").flatten(1).mean(1)
                losses.append(focal_weight * focal + dice_loss(logits, target)
                              + (iou - mask_iou(mask, gt)) ** 2)
            first_iou.append(mask_iou(masks[0], gt))
        loss = torch.cat(losses).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        iou1 = torch.cat(first_iou).mean().item()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        running_iou = iou1 if running_iou is None else 0.95 * running_iou + 0.05 * iou1
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step} loss {running:.4f} one-point IoU {running_iou:.3f} "
                  f"{time.time() - t0:.0f} s", flush=True)
        if (step + 1) % save_every == 0 or step == steps - 1:
            save(model, out / WEIGHTS)
            (out / "training.json").write_text(json.dumps({"steps": step + 1, "batch": batch,
                                                           "objects": objects, "rounds": rounds,
                                                           "lr": lr, "seed": seed,
                                                           "focal_weight": focal_weight,
                                                           "variant": variant,
                                                           "threads": threads}))
    return {"steps": steps, "loss": running, "train_one_point_iou": running_iou,
            "minutes": (time.time() - t0) / 60, "categories": len(CATEGORIES)}


def load_trained(weights: str | Path = MODEL, variant: str = VARIANT):
    """The ``official`` backend's SAM from the checkpoint, as a recipe loads it."""
    from vlpipe.agents.sam.backends import load_official_sam

    return load_official_sam(str(weights), "cpu", "float32", variant=variant)


def innermost(region: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the pixel of ``region`` (H, W) bool farthest from its border."""
    dist = cv2.distanceTransform(np.pad(region.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return x + 0.5, y + 0.5


def images_with_masks(gt_path: Path, min_pixels: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(H, W, 3) uint8 image, (K, H, W) bool masks of its instances of at least ``min_pixels``
    px, for each image of the LVIS dataset ``gt_path`` that has any."""
    data = json.loads(Path(gt_path).read_text())
    for image_info in data["images"]:
        gt = [decode_mask(a["segmentation"]) for a in data["annotations"]
              if a["image_id"] == image_info["id"] and a["area"] >= min_pixels]
        if gt:
            path = Path(gt_path).parent / image_info["file_name"]
            yield np.asarray(Image.open(path).convert("RGB")), np.stack(gt)


def input_size_ceiling(sam, image: np.ndarray, truth: np.ndarray) -> list[float]:
    """The best mask IoU a SAM of ``sam``'s input size can reach on each of the instances
    ``truth`` (K, H, W) bool of ``image``, the image ``sam`` has set: each instance's own mask,
    resized as the image (``model_input``), made low-res logits (a cell's share of the
    instance, > 1/2 positive) and brought back to the image by the backend's upscaling."""
    size = sam.model.image_encoder.img_size
    resized = torch.from_numpy(model_input(image, list(truth), size)[1][:-1])
    logits = 2 * low_res_target(resized)[:, None] - 1
    return dense_ious(sam.upscale(logits).to_dense(), truth)


def interactive_ious(sam, gt_path: Path, min_pixels: int = 64, corrections: int = 3) -> dict:
    """SAM's interactive evaluation, through the ``official`` backend, of every instance of at
    least ``min_pixels`` px in the LVIS dataset ``gt_path`` (full images). Mean IoU of

    * ``one_point``: one positive point at the instance's innermost pixel;
    * ``one_point_boxes``: those masks' ``box_iou`` (of their bounding boxes), ``fragmented``
      (how many have more than one region) and ``largest_region`` (the box IoU of each mask's
      largest region alone);
    * ``mask_feedback``: the same point plus that mask's low-res logits (VL-SAM's refinement);
    * ``negative_point``: on the instances whose one-point mask spills over (false-positive
      pixels: at least ``SPILL`` of the instance's area), that mask's IoU (``before``) and the
      IoU with a negative point added at the spill's innermost pixel (``after``), without a mask
      prompt, as the recipe's first round;
    * ``corrective``: each of ``corrections`` rounds adding a point at the innermost pixel of the
      previous mask's error region (positive in a miss, negative in a spill) with its logits;
    * ``ceiling``: :func:`input_size_ceiling`'s mean, what no prompt can pass at this input size."""
    one, feedback, before, after, boxes, largest, fragmented = [], [], [], [], [], [], 0
    ceiling = []
    corrected: list[list[float]] = [[] for _ in range(corrections)]
    for image, truth in images_with_masks(gt_path, min_pixels):
        sam.set_image(image)
        ceiling += input_size_ceiling(sam, image, truth)
        points = np.array([[innermost(m)] for m in truth], np.float32)
        labels = np.ones((len(truth), 1), np.int64)
        masks, _, low = sam.predict(points, labels, None)
        dense = masks.to_dense()
        one += dense_ious(dense, truth)
        regions = masks.largest_regions().to_dense()  # as the SAM nodes' largest_region
        boxes += box_ious(dense, truth)
        largest += box_ious(regions, truth)
        fragmented += int((regions != dense).any((1, 2)).sum())
        feedback += dense_ious(sam.predict(points, labels, low)[0].to_dense(), truth)
        spill = [k for k in range(len(truth))
                 if (dense[k] & ~truth[k]).sum() >= SPILL * truth[k].sum()]
        if spill:
            neg = np.array([[innermost(dense[k] & ~truth[k])] for k in spill], np.float32)
            two = np.concatenate([points[spill], neg], 1)
            before += dense_ious(dense[spill], truth[spill])
            with_neg = sam.predict(two, np.array([[1, 0]] * len(spill)), None)[0]
            after += dense_ious(with_neg.to_dense(), truth[spill])
        pts, labs = points, labels
        for r in range(corrections):
            new, lab = error_points(torch.from_numpy(dense), torch.from_numpy(truth), None)
            pts = np.concatenate([pts, new.numpy()[:, None]], 1)
            labs = np.concatenate([labs, lab.numpy()[:, None]], 1)
            masks, _, low = sam.predict(pts, labs, low)
            dense = masks.to_dense()
            corrected[r] += dense_ious(dense, truth)
    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    return {"instances": len(one), "one_point": mean(one), "mask_feedback": mean(feedback),
            "one_point_boxes": {"box_iou": mean(boxes), "fragmented": fragmented,
                                "largest_region": mean(largest)},
            "negative_point": {"instances": len(before), "before": mean(before),
                               "after": mean(after)},
            "corrective": [mean(c) for c in corrected],
            "ceiling": mean(ceiling)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=4, help="views per step")
    ap.add_argument("--objects", type=int, default=6, help="instances prompted per view")
    ap.add_argument("--rounds", type=int, default=4, help="1 point + corrective rounds")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--focal-weight", type=float, default=1.0, help="SAM: 20")
    ap.add_argument("--variant", default=VARIANT,
                    choices=VARIANTS,
                    help="input size 256 or 512 px; _deep: 4 encoder blocks, not 2")
    args = ap.parse_args(argv)
    summary = train(args.out, args.steps, args.batch, args.objects, args.rounds, args.lr,
                    args.seed, args.threads, args.save_every, args.focal_weight, args.variant)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
