"""SAM 3 concept grounding: P phrases of one image through ``Sam3ConceptBackend`` (the image
encoded once, all phrases in one forward over its features) vs the model card's way, one
``model(**processor(images=image, text=phrase))`` per phrase (the image encoded P times).

    python bench/sam3.py [--image PATH] [--phrases 1 4 16] [--image-size 112] [--repeats 3]
    python bench/sam3.py --model PATH_TO_LOCAL_SAM3 --device cuda   # a real checkpoint instead

By default a random-weight SAM 3 is built by :func:`~vlpipe.tiny.grounding.build_tiny_sam3`
(``--image-size`` px square input) into a temp dir and loaded as users load it. Both columns
include post-processing to full-image boxes and masks at ``--threshold``; the instance count of
both ways is printed to show they agree. Median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from vlpipe.agents.grounding.sam3 import Sam3ConceptBackend, load_sam3
from vlpipe.tiny.grounding import build_tiny_sam3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam import test_image, timed  # noqa: E402  (bench/sam.py, this folder)

sys.path.pop(0)

IMAGE = Path(__file__).resolve().parents[1] / "tests/data/images/truck.jpg"

WORDS = ["a dog", "a cat", "red car", "a tree", "the sign", "a person", "a bus", "a cup"]


def per_phrase(processor, model, image, phrases, threshold) -> int:
    """The model card's way: one processor call and one forward per phrase."""
    h, w = image.shape[:2]
    found = 0
    for phrase in phrases:
        inputs = processor(images=image, text=phrase, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model(**inputs)
        found += len(processor.post_process_instance_segmentation(
            out, threshold=threshold, target_sizes=[(h, w)])[0]["scores"])
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--phrases", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="a local SAM 3 checkpoint (default: a tiny random one)")
    args = ap.parse_args()
    name, image = test_image(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or build_tiny_sam3(Path(tmp) / "sam3", image_size=args.image_size)
        processor, model = load_sam3(path, args.device, "float32")
    backend = Sam3ConceptBackend(processor, model, box_threshold=args.threshold)
    print(f"{name} {image.shape[1]}x{image.shape[0]}, {args.device}, "
          f"{'model ' + args.model if args.model else f'tiny SAM 3 at {args.image_size} px'}")
    print("phrases | ours: one encoding, one forward | one forward per phrase | speed-up | instances")
    for p in args.phrases:
        phrases = [WORDS[k % len(WORDS)] for k in range(p)]
        ours = timed(lambda: backend.detect([image], [phrases]), args.repeats, args.device)
        naive = timed(lambda: per_phrase(processor, model, image, phrases, args.threshold),
                      args.repeats, args.device)
        n_ours = len(backend.detect([image], [phrases])[0])
        n_naive = per_phrase(processor, model, image, phrases, args.threshold)
        print(f"{p:7d} | {ours * 1e3:8.1f} ms | {naive * 1e3:8.1f} ms | {naive / ours:5.2f}x "
              f"| {n_ours} vs {n_naive}")


if __name__ == "__main__":
    main()
