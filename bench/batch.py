"""Benchmark the local batch engine (vlpipe.batch.run) on tiny random-weight models.

    python bench/batch.py [--images 200] [--big 1000] [--batch-size 8]

Generates ``max(images, big)`` random 96x96 JPEGs and the tiny models (``vlpipe.tiny``) in a
temporary folder, loads the detect pipeline once (tiles 1x1, 1 question, 1 SAM round, CPU) and
warms it up, then on the same ``--images`` images:

* plain loop: ``for f in files: pipe.run(image=load_image(f))`` + one JSON line per image;
* ``vlpipe.batch.run`` (local engine, the same loaded models through the pipeline's
  ``ModelPool``): prefetched decoding, ``--batch-size`` images per graph run, fsynced JSON lines;

alternating in 5 chunks (so that load from other processes on a shared machine hits both
alike), reporting images per wall second and per CPU second of the process.

Then, in a fresh subprocess, the process's peak RSS (``ru_maxrss``) after ``--images`` images
through ``vlpipe.batch.run`` and again after continuing (resume) to ``--big`` images: no growth with
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
    """The tiny detect spec and its pipeline with PARAMS."""
    from vlpipe.pipeline import Pipeline, PipelineSpec

    spec = PipelineSpec.load(tiny / "detect.yaml")
    return spec, Pipeline.from_spec(spec, **PARAMS)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def plain_loop(pipe, files: list[Path], out: Path) -> None:
    from vlpipe.io import load_image
    from vlpipe.results import image_record

    with open(out, "a", encoding="utf-8") as sink:
        for f in files:
            image = load_image(f)
            result = pipe.run(image=image)
            rec = image_record(f.name, None, image.shape[:2],
                               None if result.error else result.outputs["detections"], result.error)
            sink.write(json.dumps(rec) + "\n")


def batch_run(spec, pipe, entries, out: Path, batch_size: int):
    """``vlpipe.batch.run`` of ``spec``, loading its models through ``pipe.pool``, with this
    process's torch threads (as the plain loop runs)."""
    import torch

    from vlpipe.batch import RunOptions, run

    summary = run(spec, PARAMS, entries, out,
                  RunOptions(batch_size, pool=pipe.pool, threads=torch.get_num_threads()))
    assert summary.failed == 0, summary.errors[:3]
    return summary


def compare(spec, pipe, folder: Path, tmp: Path, batch_size: int, chunks: int = 5) -> dict[str, list[float]]:
    """Wall and CPU seconds of both ways over the same images, alternating in ``chunks`` so
    that load from other processes on a shared machine hits both alike."""
    from vlpipe.batch import list_inputs

    entries, _ = list_inputs(folder)
    times = {"loop": [0.0, 0.0], "batch": [0.0, 0.0]}
    bounds = np.linspace(0, len(entries), chunks + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for way in ("loop", "batch"):
            wall, cpu = time.perf_counter(), time.process_time()
            if way == "loop":
                plain_loop(pipe, [e.path for e in entries[lo:hi]], tmp / "loop.jsonl")
            else:
                batch_run(spec, pipe, entries[lo:hi], tmp / "batch", batch_size)
            times[way][0] += time.perf_counter() - wall
            times[way][1] += time.process_time() - cpu
    return times


def rss_worker(tiny: Path, folder: Path, out: Path, first: int, total: int, batch_size: int) -> None:
    """Peak RSS after ``first`` images, then after resuming up to ``total`` (JSON on stdout)."""
    from vlpipe.batch import list_inputs

    spec, pipe = load_pipeline(tiny)
    entries, _ = list_inputs(folder)
    start = time.perf_counter()
    s1 = batch_run(spec, pipe, entries[:first], out, batch_size)
    after_first = rss_mb()
    s2 = batch_run(spec, pipe, entries[:total], out, batch_size)
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
    from vlpipe.batch import read_predictions
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

        spec, pipe = load_pipeline(tmp / "tiny")
        for f in files[:4]:  # warm-up: model loading, first-call costs
            pipe.run(image=load_image(f))

        n = args.images
        t = compare(spec, pipe, small, tmp, args.batch_size)
        (lw, lc), (bw, bc) = t["loop"], t["batch"]
        print(f"\nthroughput on the same {n} images (the two ways alternate in 5 chunks):")
        for label, (w, c) in (("plain per-image loop", t["loop"]),
                              (f"batch.run (batch {args.batch_size}, prefetch)", t["batch"])):
            print(f"  {label:34s}: {n / w:6.2f} img/s wall ({w:.1f} s), {n / c:6.2f} img/CPU-s")
        print(f"  {'ratio batch.run / loop':34s}: {lw / bw:.2f}x wall, {lc / bc:.2f}x CPU")
        loop = {r["file"]: r for r in map(json.loads, open(tmp / "loop.jsonl", encoding="utf-8"))}
        batch = read_predictions(tmp / "batch" / "predictions.jsonl")
        same = sum(sorted(d["name"] for d in r["detections"])
                   == sorted(d["name"] for d in loop[r["file"]]["detections"]) for r in batch)
        print(f"  {'same detected names, both ways':34s}: {same} of {len(batch)} images")

        worker = subprocess.run(
            [sys.executable, __file__, "--images", str(n), "--big", str(args.big),
             "--batch-size", str(args.batch_size), "--rss-worker", str(tmp / "tiny"),
             str(tmp / "images"), str(tmp / "rss")],
            capture_output=True, text=True)
        if worker.returncode != 0:
            sys.exit(f"rss worker failed:\n{worker.stderr[-3000:]}")
        r = json.loads(worker.stdout.strip().splitlines()[-1])
        assert r["lines"] == r["total"] == r["done"] and r["skipped_on_resume"] == r["first"], r
        print(f"\npeak RSS of a fresh process running batch.run (batch {args.batch_size}), "
              f"{r['total']} images in {r['seconds']:.0f} s:")
        print(f"  after {r['first']:5d} images: {r['rss_first_mb']:7.1f} MB")
        print(f"  after {r['total']:5d} images: {r['rss_total_mb']:7.1f} MB "
              f"(+{r['rss_total_mb'] - r['rss_first_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
