"""Benchmark the batch runner (vlpipe.runner.BatchRunner) on tiny random-weight models.

    python bench/batch.py [--images 200] [--big 1000] [--batch-size 8]

Generates ``max(images, big)`` random 96x96 JPEGs and the tiny models (``vlpipe.tiny``) in a
temporary folder, loads the detect pipeline once (tiles 1x1, 1 question, 1 SAM round, CPU) and
warms it up, then on the same ``--images`` images:

* plain loop: ``for f in files: pipe.run(image=load_image(f))`` + one JSON line per image;
* BatchRunner: prefetched decoding, ``--batch-size`` images per graph run, fsynced JSON lines.

Then, in a fresh subprocess, the process's peak RSS (``ru_maxrss``) after ``--images`` images
through a BatchRunner and again after continuing (resume) to ``--big`` images: no growth with
the number of images means nothing accumulates per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

PARAMS = {"tiles": "1x1", "questions": 1, "rounds": 1}


def make_images(folder: Path, n: int, size: int = 96) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for k in range(n):
        path = folder / f"{k:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def load_pipeline(tiny: Path):
    from vlpipe.pipeline import Pipeline

    return Pipeline.load(tiny / "detect.yaml", **PARAMS)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def plain_loop(pipe, files: list[Path], out: Path) -> float:
    from vlpipe.io import load_image
    from vlpipe.results import image_record

    start = time.perf_counter()
    with open(out, "w", encoding="utf-8") as sink:
        for f in files:
            image = load_image(f)
            result = pipe.run(image=image)
            rec = image_record(f.name, None, image.shape[:2],
                               None if result.error else result.outputs["detections"], result.error)
            sink.write(json.dumps(rec) + "\n")
    return time.perf_counter() - start


def batch_runner(pipe, folder: Path, out: Path, batch_size: int, limit: int | None = None):
    from vlpipe.runner import BatchRunner, list_inputs

    entries, _ = list_inputs(folder)
    summary = BatchRunner(pipe, out, batch_size=batch_size).run(entries[:limit])
    assert summary.failed == 0, summary.errors[:3]
    return summary


def rss_worker(tiny: Path, folder: Path, out: Path, first: int, total: int, batch_size: int) -> None:
    """Peak RSS after ``first`` images, then after resuming up to ``total`` (JSON on stdout)."""
    pipe = load_pipeline(tiny)
    start = time.perf_counter()
    s1 = batch_runner(pipe, folder, out, batch_size, first)
    after_first = rss_mb()
    s2 = batch_runner(pipe, folder, out, batch_size, total)
    after_total = rss_mb()
    lines = sum(1 for _ in open(out / "predictions.jsonl", encoding="utf-8"))
    print(json.dumps({"first": first, "total": total, "rss_first_mb": after_first,
                      "rss_total_mb": after_total, "done": s1.done + s2.done,
                      "skipped_on_resume": s2.skipped, "lines": lines,
                      "seconds": time.perf_counter() - start}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--big", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rss-worker", nargs=3, metavar=("TINY", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_worker:
        tiny, folder, out = map(Path, args.rss_worker)
        rss_worker(tiny, folder, out, args.images, args.big, args.batch_size)
        return

    import torch

    from vlpipe.io import load_image
    from vlpipe.tiny import build_all

    with tempfile.TemporaryDirectory(prefix="vlpipe-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        files = make_images(tmp / "images", max(args.images, args.big))
        build_all(tmp / "tiny")
        small = tmp / "small"  # the first --images files, for the throughput comparison
        small.mkdir()
        for f in files[: args.images]:
            (small / f.name).symlink_to(f)
        print(f"setup: {len(files)} images 96x96, tiny models: {time.perf_counter() - t0:.1f} s; "
              f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
        print(f"pipeline: tiny detect, {PARAMS}, cpu")

        pipe = load_pipeline(tmp / "tiny")
        for f in files[:4]:  # warm-up: model loading, first-call costs
            pipe.run(image=load_image(f))

        n = args.images
        loop_s = plain_loop(pipe, files[:n], tmp / "loop.jsonl")
        batch_s = batch_runner(pipe, small, tmp / "batch", args.batch_size).seconds
        print(f"\nthroughput on {n} images:")
        print(f"  plain per-image loop        : {n / loop_s:6.2f} img/s ({loop_s:.1f} s)")
        print(f"  BatchRunner (batch {args.batch_size}, prefetch): {n / batch_s:6.2f} img/s "
              f"({batch_s:.1f} s)")
        print(f"  ratio BatchRunner / loop    : {loop_s / batch_s:.2f}x")

        worker = subprocess.run(
            [sys.executable, __file__, "--images", str(n), "--big", str(args.big),
             "--batch-size", str(args.batch_size), "--rss-worker", str(tmp / "tiny"),
             str(tmp / "images"), str(tmp / "rss")],
            capture_output=True, text=True)
        if worker.returncode != 0:
            sys.exit(f"rss worker failed:\n{worker.stderr[-3000:]}")
        r = json.loads(worker.stdout.strip().splitlines()[-1])
        assert r["lines"] == r["total"] == r["done"] and r["skipped_on_resume"] == r["first"], r
        print(f"\npeak RSS of a fresh process running BatchRunner (batch {args.batch_size}), "
              f"{r['total']} images in {r['seconds']:.0f} s:")
        print(f"  after {r['first']:5d} images: {r['rss_first_mb']:7.1f} MB")
        print(f"  after {r['total']:5d} images: {r['rss_total_mb']:7.1f} MB "
              f"(+{r['rss_total_mb'] - r['rss_first_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
