"""Benchmark vlpipe.agents.tiles.merge_detections against SAHI's postprocess (greedy NMS / NMM).

    python bench/merge.py [--sizes 1000 10000 50000]

Random crowded boxes: uniform centres on a 4000x4000 canvas, sides 20-200 px, 3 classes,
class-aware, threshold 0.5. For each (N, method, metric) both implementations run in a
fresh subprocess; we report the best-of-k wall time of the call, the peak-RSS increase
during the call (ru_maxrss after a warm-up, delta over the call; input construction and
imports are excluded), and the agreement of the kept index sets (Jaccard).
SAHI: ``sahi.postprocess.combine.batched_nms`` / ``batched_greedy_nmm`` (its default
backend: numba if installed, else numpy). SAHI matches with ``>= threshold``, we with
``> threshold``; on random float boxes ties do not occur. Our NMM time includes building
the merged boxes/Detections; SAHI's greedy_nmm only returns the keep->merge mapping.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "pip install --no-deps 'sahi>=0.12' && pip install shapely pillow  # avoids opencv-python"


def make_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> xyxy (N, 4) float64, scores (N,), class ids (N,) int."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(20, 200, (n, 2))
    c = rng.uniform(0, 4000, (n, 2))
    xyxy = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    return xyxy, rng.random(n), rng.integers(0, 3, n)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(impl: str, n: int, method: str, metric: str, threshold: float) -> dict:
    """Run one measurement in this (fresh) process; returns time, RSS delta and kept indices."""
    xyxy, scores, cls = make_boxes(n)
    if impl == "ours":
        import supervision as sv

        sys.path.insert(0, str(ROOT))
        from vlpipe.agents.tiles import merge_detections

        names = np.array(["car", "person", "dog"])[cls]

        def build(k):
            return sv.Detections(
                xyxy=xyxy[:k], confidence=scores[:k], data={"class_name": names[:k], "idx": np.arange(k)}
            )

        def run(d):
            return merge_detections(d, method=method, metric=metric, threshold=threshold).data["idx"].tolist()

    else:
        from sahi.postprocess import combine

        fn = combine.batched_nms if method == "nms" else combine.batched_greedy_nmm

        def build(k):
            return np.column_stack([xyxy[:k], scores[:k], cls[:k]]).astype(np.float64)

        def run(p):
            return [int(i) for i in fn(p, match_metric=metric.upper(), match_threshold=threshold)]

    run(build(min(n, 200)))  # warm-up: lazy imports, backend dispatch
    data = build(n)
    base = _maxrss_mb()
    best = float("inf")
    for _ in range(3 if n <= 10_000 else 1):
        t = time.perf_counter()
        keep = run(data)
        best = min(best, time.perf_counter() - t)
    extra = {}
    if impl == "sahi":
        from sahi.postprocess.backends import resolve_backend

        extra["backend"] = resolve_backend()
    return {"time": best, "mem": _maxrss_mb() - base, "keep": sorted(keep), **extra}


def measure(impl: str, n: int, method: str, metric: str, threshold: float, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", impl, str(n), method, metric, str(threshold)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:60]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, n, method, metric, thr = args.worker
        print(json.dumps(worker(impl, int(n), method, metric, float(thr))))
        return

    try:
        import sahi.postprocess.combine  # noqa: F401

        have_sahi = True
    except ImportError as e:
        have_sahi = False
        print(f"sahi not importable ({e}); only our timings are shown. Install with:\n  {INSTALL_HINT}\n")

    print("peak memory: ru_maxrss increase during the call, each run in a fresh subprocess (MiB)")
    print(f"class-aware, threshold {args.threshold}; time = best of 3 (N <= 10k) or 1 run; sahi/ours > 1: ours faster\n")
    hdr = f"{'N':>6} {'method':>6} {'metric':>6} | {'ours s':>8} {'sahi s':>8} {'sahi/ours':>9} | " \
          f"{'ours MiB':>8} {'sahi MiB':>8} | {'kept':>6} {'jaccard':>7}"
    print(hdr)
    print("-" * len(hdr))
    backend = None
    for n in args.sizes:
        for method in ("nms", "nmm"):
            for metric in ("iou", "ios"):
                ours = measure("ours", n, method, metric, args.threshold, args.timeout)
                theirs = measure("sahi", n, method, metric, args.threshold, args.timeout) if have_sahi else None
                if "error" in ours:
                    print(f"{n:>6} {method:>6} {metric:>6} | ours failed: {ours['error']}")
                    continue
                row = f"{n:>6} {method:>6} {metric:>6} | {ours['time']:>8.3f} "
                if theirs and "error" not in theirs:
                    backend = theirs.get("backend")
                    a, b = set(ours["keep"]), set(theirs["keep"])
                    jac = len(a & b) / max(1, len(a | b))
                    row += f"{theirs['time']:>8.3f} {theirs['time'] / max(ours['time'], 1e-9):>9.1f} | "
                    row += f"{ours['mem']:>8.1f} {theirs['mem']:>8.1f} | {len(a):>6} {jac:>7.4f}"
                else:
                    err = theirs["error"] if theirs else "n/a"
                    row += f"{err[:8]:>8} {'-':>9} | {ours['mem']:>8.1f} {'-':>8} | {len(ours['keep']):>6} {'-':>7}"
                print(row, flush=True)
    if backend:
        print(f"\nsahi postprocess backend: {backend}")


if __name__ == "__main__":
    main()
