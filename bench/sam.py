"""SAM decoder: K objects in one batched ``predict`` call vs one call per object.

    python bench/sam.py [--image PATH] [--objects 1 10 50] [--repeats 3] [--device cpu]
    python bench/sam.py --hf-model PATH_TO_LOCAL_SAM      # time a real transformers SAM instead
    python bench/sam.py --json                            # K = 1 and 50, JSON last line

By default both backends are built with random weights by :mod:`vlpipe.tiny` (256 px input,
16x16 embedding) into a temp dir and loaded by the same code users take
(:func:`~vlpipe.agents.sam.load_hf_sam`, :func:`~vlpipe.agents.sam.load_official_sam`). Each
object's prompt is one positive and one negative point (SamNode's default). ``set_image`` (the
image encoder, once per image) is timed on its own; the decoder columns are the time for all K
objects of one image, including mask post-processing (masks upscaled inside their boxes); the
``+ masks`` column adds encoding them as a ``sv.CompactMask`` (the masks SamNode hands on), and
``box %`` is the mean mask box as a share of the image (random weights give large masks: the
worst case for upscaling inside boxes). Median of ``--repeats``.
``k50_over_k1`` (``--json``) is ``+ masks`` at K=50 over K=1, the worst backend. Then the
masks-out stage alone (upscale inside boxes + CompactMask) on object-sized masks: SAM 1's
256x256 logits with one bump each (boxes about 1-6% of the image), as a trained SAM gives;
``masks_k50_over_k1`` is its K=50 over K=1. Then the image encoder over detect's view set
(full image + 2x2 tiles): each view alone vs one stacked forward (``views_alone_over_stacked``,
the worst backend).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlpipe.agents.sam import SamBackend, load_hf_sam, load_hf_sam2, load_official_sam
from vlpipe.agents.sam_masks import chain_matrix, upscale_in_boxes
from vlpipe.agents.tiles import split_tiles
from vlpipe.io import load_image

IMAGE = Path(__file__).resolve().parents[1] / "tests/data/images/truck.jpg"


def test_image(path: Path) -> tuple[str, np.ndarray]:
    if path.is_file():
        return path.name, load_image(path)
    rng = np.random.default_rng(0)
    return "generated 1200x1800", rng.integers(0, 256, (1200, 1800, 3), dtype=np.uint8)


def prompts(k: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2, 2) random (x, y) points, labels (K, 2) = [1, 0]."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([0, 0], [w, h], (k, 2, 2)).astype(np.float32)
    return points, np.tile(np.array([1, 0], np.int64), (k, 1))


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` (synchronising CUDA around each call)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name: str, sam: SamBackend, image: np.ndarray, objects: list[int], repeats: int,
          device: str) -> dict[int, float]:
    """Prints one row per K; returns {K: seconds of decoder + masks out}."""
    h, w = image.shape[:2]
    encode = timed(lambda: sam.set_image(image), repeats, device)
    masks_out = {}
    for k in objects:
        points, labels = prompts(k, h, w)
        batched = timed(lambda: sam.predict(points, labels, None), repeats, device)
        masks_out[k] = timed(lambda: sam.predict(points, labels, None)[0].to_compact(), repeats, device)
        one_by_one = timed(lambda: [sam.predict(points[i:i + 1], labels[i:i + 1], None)
                                    for i in range(k)], repeats, device)
        boxes = sam.predict(points, labels, None)[0].boxes
        box = np.mean((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1) * (boxes[:, 0] >= 0)) / (h * w)
        print(f"{name:14s} {k:4d} {encode * 1e3:12.1f} {batched * 1e3:12.1f} "
              f"{masks_out[k] * 1e3:12.1f} {one_by_one * 1e3:12.1f} {one_by_one / batched:7.1f} "
              f"{100 * box:6.1f}")
    return masks_out


def bench_encoder(name: str, sam: SamBackend, image: np.ndarray, repeats: int, device: str) -> float:
    """The image encoder over detect's view set of ``image`` (full image + 2x2 tiles): each view
    alone (``set_image``) vs one stacked forward (``encode``). Prints a row; returns the ratio."""
    views = [t.crop(image) for t in split_tiles(*image.shape[:2], (2, 2))]
    alone = timed(lambda: [sam.set_image(v) for v in views], repeats, device)
    stacked = timed(lambda: sam.encode(views), repeats, device)
    print(f"{name:14s} {len(views):5d} {alone * 1e3:12.1f} {stacked * 1e3:12.1f} {alone / stacked:7.2f}")
    return alone / stacked


def object_logits(k: int, m: int = 256, seed: int = 0) -> torch.Tensor:
    """(K, 1, m, m) logits, one gaussian bump each (radius 3-10 % of m), negative elsewhere."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    centres = torch.randint(0, m, (k, 2), generator=g)
    radii = m * (0.03 + 0.07 * torch.rand(k, generator=g))
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return (10 * torch.exp(-d2 / (2 * radii[:, None, None] ** 2)) - 4)[:, None]


def bench_masks_out(h: int, w: int, objects: list[int], repeats: int, device: str) -> dict[int, float]:
    """Masks out for object-sized masks, SAM 1's resizing (1024 square, crop, image)."""
    scale = 1024 / max(h, w)
    rows = chain_matrix(256, [(1024, int(h * scale + 0.5)), (h, h)], device)
    cols = chain_matrix(256, [(1024, int(w * scale + 0.5)), (w, w)], device)
    out = {}
    for k in objects:
        low = object_logits(k).to(device)
        out[k] = timed(lambda: upscale_in_boxes(low, rows, cols).to_compact(), repeats, device)
        boxes = upscale_in_boxes(low, rows, cols).boxes
        box = np.mean((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)) / (h * w)
        print(f"{'object masks':14s} {k:4d} {'-':>12s} {'-':>12s} {out[k] * 1e3:12.1f} {'-':>12s} "
              f"{'-':>7s} {100 * box:6.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="K = 1 and 50; JSON object last")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared CPU)")
    ap.add_argument("--hf-model", help="a local transformers SAM (e.g. a facebook/sam-vit-base "
                                       "snapshot): time it instead of the tiny models")
    ap.add_argument("--hf2-model", help="a local transformers SAM 2 (e.g. a "
                                        "facebook/sam2.1-hiera-large snapshot), as --hf-model")
    args = ap.parse_args()
    if args.json:
        args.objects = [1, 50]
    torch.set_num_threads(args.threads)

    image_name, image = test_image(args.image)
    print(f"image: {image_name} {image.shape[1]}x{image.shape[0]}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'backend':14s} {'K':>4s} {'set_image ms':>12s} {'batched ms':>12s} "
          f"{'+ masks ms':>12s} {'1-by-1 ms':>12s} {'ratio':>7s} {'box %':>6s}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.hf_model or args.hf2_model:
            backends = {}
            if args.hf_model:
                backends["hf (local)"] = lambda: load_hf_sam(args.hf_model, args.device, "float32")
            if args.hf2_model:
                backends["hf2 (local)"] = lambda: load_hf_sam2(args.hf2_model, args.device, "float32")
        else:
            from transformers.utils import logging as hf_logging

            from vlpipe.tiny.sam import build_hf_sam, build_official_sam  # + variant "tiny"

            hf_logging.disable_progress_bar()

            hf_dir = build_hf_sam(Path(tmp) / "sam_hf")
            ckpt = build_official_sam(Path(tmp) / "sam_official")
            backends = {"hf tiny": lambda: load_hf_sam(str(hf_dir), args.device, "float32"),
                        "official tiny": lambda: load_official_sam(str(ckpt), args.device,
                                                                   "float32", variant="tiny")}
        loaded = {name: load() for name, load in backends.items()}
        times = {name: bench(name, sam, image, args.objects, args.repeats, args.device)
                 for name, sam in loaded.items()}
        print(f"\nimage encoder over full image + 2x2 tiles\n{'backend':14s} {'views':>5s} "
              f"{'alone ms':>12s} {'stacked ms':>12s} {'ratio':>7s}")
        encoder = {name: bench_encoder(name, sam, image, args.repeats, args.device)
                   for name, sam in loaded.items()}
        print()
    masks_out = bench_masks_out(*image.shape[:2], args.objects, args.repeats, args.device)
    print("ratio = one predict call per object / one batched call for all K (decoder only)")
    if args.json:
        print(json.dumps({"k50_over_k1": round(max(t[50] / t[1] for t in times.values()), 2),
                          "masks_k50_over_k1": round(masks_out[50] / masks_out[1], 2),
                          "views_alone_over_stacked": round(min(encoder.values()), 2)}))


if __name__ == "__main__":
    main()
