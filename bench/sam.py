"""SAM decoder + masks out: K objects of a view in one batched ``predict`` call vs one call each.

    python bench/sam.py [--image PATH] [--objects 1 10 50] [--repeats 3] [--device cpu]
    python bench/sam.py --hf-model PATH_TO_LOCAL_SAM      # time a real transformers SAM instead
    python bench/sam.py --json                            # K = 1 and 50, JSON last line

By default both backends are built with random weights by :mod:`vlpipe.tiny` (256 px input,
16x16 embedding, 64x64 low-res masks) into a temp dir and loaded by the same code users take
(:func:`~vlpipe.agents.sam.backends.load_hf_sam`, :func:`~vlpipe.agents.sam.backends.load_official_sam`). Each
object's prompt is one positive and one negative point (SamNode's default). ``set_image`` (the
image encoder, once per image) is timed on its own, and so is the mask decoder (``decoder``,
its masks not post-processed). ``batched`` is all K objects of the image in one ``predict``
call, decoder + masks out: the masks upscaled inside their boxes and encoded
as the ``sv.CompactMask`` SamNode hands on; ``1-by-1`` is the same K objects one call each;
``K / mean 1`` is ``batched`` over the mean single-object call (the K = 1 cost of these
objects). Median of ``--repeats``.

Masks out depends on what the masks are, the decoder does not. Two kinds are timed:
``noise``, the random decoder's own masks (noise over 97-99 % of the image, the worst case:
every pixel of every mask is computed and encoded), and ``objects``, the same decoder calls
with their low-res logits replaced, before masks out, by one gaussian bump per object (boxes
about 0.3-4 % of the image), as a trained SAM gives. ``k50_over_k1`` (``--json``) is
``K / mean 1`` at K=50 on object masks, the worst backend (``k50_over_k1_noise`` on noise;
``decoder_k50_over_k1``: the decoder alone, K=50 over K=1).
Then the masks-out stage alone at SAM 1's real 256x256 low-res size on object masks
(``masks_k50_over_k1``), and the image encoder over detect's view set (full image + 2x2 tiles):
each view alone vs one stacked forward (``views_alone_over_stacked``, the worst backend).
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

from vlpipe.agents.sam.backends import SamBackend, load_hf_sam, load_hf_sam2, load_official_sam
from vlpipe.agents.sam.masks import MaskResize, upscale_in_boxes
from vlpipe.agents.tiles.grid import split_tiles
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


def object_logits(k: int, m: int, seed: int = 0) -> torch.Tensor:
    """(K, 1, m, m) logits, one gaussian bump each (radius 3-10 % of m), negative elsewhere."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    centres = torch.randint(0, m, (k, 2), generator=g)
    radii = m * (0.03 + 0.07 * torch.rand(k, generator=g))
    d2 = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2
    return (10 * torch.exp(-d2 / (2 * radii[:, None, None] ** 2)) - 4)[:, None]


class ObjectMasks:
    """Installed on a backend: its masks out gets K object bumps (:func:`object_logits`) in
    place of the decoder's logits. A call whose first object is ``first`` gets bumps
    ``first...``, so each object has the same mask batched or alone. The decoder still runs
    and its logits are still returned."""

    def __init__(self, sam: SamBackend, k: int) -> None:
        self.upscale, self.k, self.first, self.bumps = sam.upscale, k, 0, {}
        sam.upscale = self

    def __call__(self, low: torch.Tensor):
        m = low.shape[-1]
        if m not in self.bumps:
            self.bumps[m] = object_logits(self.k, m).to(low.device)
        return self.upscale(self.bumps[m][self.first:self.first + len(low)])


def bench(name: str, sam: SamBackend, image: np.ndarray, objects: list[int], repeats: int,
          device: str, fed: ObjectMasks | None = None) -> dict[str, dict[int, float]]:
    """Prints one row per K; returns {"ratio": {K: batched seconds / mean single-object
    seconds}, "decoder": {K: seconds}}. ``fed``: the object masks installed on ``sam``, if any."""
    h, w = image.shape[:2]
    encode = timed(lambda: sam.set_image(image), repeats, device)

    def masks_out(points, labels, first=0):
        if fed is not None:
            fed.first = first
        return sam.predict(points, labels, None)[0].to_compact()

    def decoder_only(points, labels):
        upscale, sam.upscale = sam.upscale, lambda low: None
        try:
            return timed(lambda: sam.predict(points, labels, None), repeats, device)
        finally:
            sam.upscale = upscale

    ratios, decoders = {}, {}
    for k in objects:
        points, labels = prompts(k, h, w)
        decoders[k] = decoder = decoder_only(points, labels)
        batched = timed(lambda: masks_out(points, labels), repeats, device)
        one_by_one = timed(lambda: [masks_out(points[i:i + 1], labels[i:i + 1], i)
                                    for i in range(k)], repeats, device)
        if fed is not None:
            fed.first = 0
        boxes = sam.predict(points, labels, None)[0].boxes
        box = np.mean((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1) * (boxes[:, 0] >= 0)) / (h * w)
        ratios[k] = batched / (one_by_one / k)
        print(f"{name:22s} {k:4d} {encode * 1e3:12.1f} {decoder * 1e3:10.1f} {batched * 1e3:12.1f} "
              f"{one_by_one * 1e3:12.1f} {ratios[k]:9.2f} {100 * box:6.2f}")
    return {"ratio": ratios, "decoder": decoders}


def bench_encoder(name: str, sam: SamBackend, image: np.ndarray, repeats: int, device: str) -> float:
    """The image encoder over detect's view set of ``image`` (full image + 2x2 tiles): each view
    alone (``set_image``) vs one stacked forward (``encode``). Prints a row; returns the ratio."""
    views = [t.crop(image) for t in split_tiles(*image.shape[:2], (2, 2))]
    alone = timed(lambda: [sam.set_image(v) for v in views], repeats, device)
    stacked = timed(lambda: sam.encode(views), repeats, device)
    print(f"{name:22s} {len(views):5d} {alone * 1e3:12.1f} {stacked * 1e3:12.1f} {alone / stacked:7.2f}")
    return alone / stacked


def bench_masks_out(h: int, w: int, objects: list[int], repeats: int, device: str) -> dict[int, float]:
    """Masks out alone for object masks at SAM 1's sizes (256x256 logits, resized to the 1024
    square, cropped, resized to the image); returns {K: batched / mean single}."""
    scale = 1024 / max(h, w)
    resize = MaskResize.chain(256, [(1024, int(h * scale + 0.5)), (h, h)],
                              [(1024, int(w * scale + 0.5)), (w, w)], device)
    out = {}
    for k in objects:
        low = object_logits(k, 256).to(device)
        batched = timed(lambda: upscale_in_boxes(low, resize).to_compact(), repeats, device)
        one_by_one = timed(lambda: [upscale_in_boxes(low[i:i + 1], resize).to_compact()
                                    for i in range(k)], repeats, device)
        boxes = upscale_in_boxes(low, resize).boxes
        box = np.mean((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)) / (h * w)
        out[k] = batched / (one_by_one / k)
        print(f"{'masks out (256x256)':22s} {k:4d} {'-':>12s} {'-':>10s} {batched * 1e3:12.1f} "
              f"{one_by_one * 1e3:12.1f} {out[k]:9.2f} {100 * box:6.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--objects", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="K = 1 and 50; JSON object last")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's, one per core)")
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
    print(f"{'backend, masks':22s} {'K':>4s} {'set_image ms':>12s} {'decoder ms':>10s} {'batched ms':>12s} "
          f"{'1-by-1 ms':>12s} {'K / mean 1':>9s} {'box %':>6s}")
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
        ratios = {}
        for name, load in backends.items():
            ratios[name, "noise"] = bench(f"{name}, noise", load(), image, args.objects,
                                          args.repeats, args.device)
            sam = load()
            ratios[name, "objects"] = bench(f"{name}, objects", sam, image, args.objects,
                                            args.repeats, args.device,
                                            ObjectMasks(sam, max(args.objects)))
        print(f"\nimage encoder over full image + 2x2 tiles\n{'backend':22s} {'views':>5s} "
              f"{'alone ms':>12s} {'stacked ms':>12s} {'ratio':>7s}")
        encoder = {name: bench_encoder(name, load(), image, args.repeats, args.device)
                   for name, load in backends.items()}
        print()
    masks_out = bench_masks_out(*image.shape[:2], args.objects, args.repeats, args.device)
    if args.json:
        worst = {kind: round(max(r["ratio"][50] for (_, knd), r in ratios.items() if knd == kind), 2)
                 for kind in ("objects", "noise")}
        decoder = max(r["decoder"][50] / r["decoder"][1] for r in ratios.values())
        print(json.dumps({"k50_over_k1": worst["objects"], "k50_over_k1_noise": worst["noise"],
                          "decoder_k50_over_k1": round(decoder, 2),
                          "masks_k50_over_k1": round(masks_out[50], 2),
                          "views_alone_over_stacked": round(min(encoder.values()), 2),
                          "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
