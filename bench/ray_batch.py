"""The Ray engine against the local runner on the same folder (tiny detect pipeline, CPU).

    python bench/ray_batch.py [--images 128] [--size 96] [--models DIR] [--cpus 2] [--batch-size 4]
                              [--local-threads 1 0] [--set key=value ...]

Writes ``--images`` random ``--size`` px images to a temporary folder, builds the tiny models (or
uses ``--models DIR`` from ``vlpipe models tiny DIR``), then runs the detect pipeline over the
folder with :func:`vlpipe.batch.run`, each run into a fresh output folder: the local engine (torch
on 1 thread, as in a Ray worker with fewer than 2 CPUs; ``--local-threads 1 0`` adds a row with
torch's default count), then Ray with 1 worker and with 2 workers (``--cpu-per-worker`` CPUs
each, on a local Ray started with ``--cpus`` CPUs; ``ray.init`` is timed on its own line).

Columns: ``total s`` from the start of the run to the last line written; ``img/s`` = images /
total s; ``first s``: time to the first result (actor start, pipeline build, model loading, first
batch: the start-up cost); ``steady img/s`` = (images - 1) / (total - first), the rate once
results flow; last column: per Ray actor, its constructor (imports + pipeline build) ``+`` its
first batch (model loading + the batch).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_images(folder: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(n):
        img = rng.integers(0, 255, (size, size + 16 * (k % 3), 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{k:04d}.png")


class Clock:
    """progress callback: the time of the first and last result."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = self.last = None

    def __call__(self, done: int, total: int) -> None:
        if done == 0:  # before the first image
            return
        now = time.perf_counter() - self.start
        self.first = now if self.first is None else self.first
        self.last = now


def row(label: str, n: int, clock: Clock, extra: str = "") -> str:
    total, first = clock.last, clock.first
    steady = (n - 1) / (total - first) if total > first else float("nan")
    return f"{label:<16}{total:>9.2f}{n / total:>9.2f}{first:>9.2f}{steady:>14.2f}   {extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--cpu-per-worker", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--local-threads", type=int, nargs="+", default=[1],
                    help="torch threads for the local runner, one row each (0: torch's default)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="pipeline param key=value (default: the tiny detect.yaml's own params)")
    args = ap.parse_args()

    import yaml

    from vlpipe.batch import RayEngine, RunOptions, import_ray, list_inputs, run

    params = {}
    for item in args.sets:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    tmp = Path(tempfile.mkdtemp(prefix="vlpipe-bench-ray-"))
    models = args.models
    if models is None:
        from vlpipe.tiny import build_all

        models = tmp / "tiny"
        build_all(models)
    detect = str(models / "detect.yaml")
    folder = tmp / "images"
    folder.mkdir()
    make_images(folder, args.images, args.size)
    entries, _ = list_inputs(folder)
    n = len(entries)
    spec = yaml.safe_load(Path(detect).read_text())["params"]
    shown = {k: params.get(k, spec.get(k)) for k in ("tiles", "questions", "rounds")}
    print(f"{n} images of ~{args.size} px, tiny detect {shown}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs visible")
    print(f"{'engine':<16}{'total s':>9}{'img/s':>9}{'first s':>9}{'steady img/s':>14}   "
          "worker start-up (init + first batch) s")

    import torch

    for module in ("vlpipe.agents.mllm.nodes", "vlpipe.agents.sam.nodes"):
        importlib.import_module(module)  # Python imports: paid once per process, not timed

    default_threads = torch.get_num_threads()
    for threads in args.local_threads:
        clock = Clock()
        run(detect, params, entries, tmp / f"out-local{threads}",
            RunOptions(batch_size=args.batch_size, threads=threads or default_threads),
            progress=clock)
        print(row(f"local {threads or default_threads} thr", n, clock,
                  "(in-process: pipeline build + model load are in 'first s')"), flush=True)

    ray = import_ray()
    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    ray_init = time.perf_counter() - t0
    for workers in (1, 2):
        clock = Clock()
        engine = RayEngine(workers=workers, num_cpus_per_worker=args.cpu_per_worker)
        summary = run(detect, params, entries, tmp / f"out-ray{workers}",
                      RunOptions(batch_size=args.batch_size, engine=engine), progress=clock)
        assert summary.done == n, summary
        starts = "  ".join(f"{summary.worker_init_seconds[pid]:.2f}+"
                           f"{summary.worker_first_batch_seconds.get(pid, float('nan')):.2f}"
                           for pid in sorted(summary.worker_init_seconds))
        print(row(f"ray {workers} worker{'s' if workers > 1 else ''}", n, clock, starts),
              flush=True)
    print(f"(once per process) ray.init(num_cpus={args.cpus}): {ray_init:.2f} s; Ray workers: "
          f"{args.cpu_per_worker} CPU each (torch then runs 1 thread per worker)")
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
