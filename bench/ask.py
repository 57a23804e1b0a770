"""Time of `ask` with the tools skipped (policy never) vs both tools run (policy always).

    python bench/ask.py [--repeats 5] [--image PATH]

Tiny random models (built into a temp dir), CPU. Models are loaded once (shared ModelPool) and
warmed up before timing, so the figures are per-question latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlpipe.io import load_image  # noqa: E402
from vlpipe.pipeline import ModelPool, Pipeline  # noqa: E402
from vlpipe.tiny import build_all  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "tests" / "data" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image", type=Path, default=IMAGES / "en.jpg")
    args = ap.parse_args()
    image = load_image(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        build_all(Path(tmp))
        pool = ModelPool()
        rows = []
        for policy in ("never", "always"):
            pipe = Pipeline.load(Path(tmp) / "ask.yaml", pool, policy=policy)
            pipe.run(image=image, question="What is written here?")  # warm-up (loads models)
            pipe.trace.events.clear()  # per-node figures: timed runs only, no model loading
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = pipe.run(image=image, question="What is written here?")
                times.append(time.perf_counter() - start)
            assert result.error is None, result.error
            per_node = {n: s["seconds"] / s["calls"] for n, s in pipe.trace.summary().items()}
            rows.append((policy, statistics.median(times), per_node))
    print(f"ask on {args.image.name} {image.shape[1]}x{image.shape[0]}, tiny models, CPU, "
          f"median of {args.repeats}")
    print(f"{'policy':8} {'tools':24} {'seconds':>8}   per node (s)")
    for policy, seconds, per_node in rows:
        tools = "none" if policy == "never" else "grounding + OCR"
        nodes = ", ".join(f"{n} {t:.3f}" for n, t in per_node.items())
        print(f"{policy:8} {tools:24} {seconds:8.3f}   {nodes}")
    print(f"both tools / skipped: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
