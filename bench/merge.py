"""Benchmark vlpipe.agents.merge.merge_detections against SAHI's postprocess (greedy NMS / NMM).

    python bench/merge.py [--sizes 1000 10000 50000] [--json]

``--json`` runs the headline size only (10k boxes, plus the masks rows) and prints as last line
``{"speedup_10k": sahi/ours of the worst method/metric pair, "same_kept": .., "masks_2k": ..}``.

Random crowded boxes: uniform centres on a 4000x4000 canvas, sides 20-200 px, 3 classes,
class-aware, threshold 0.5. For each (N, method, metric) both implementations run in a
fresh subprocess; we report the best-of-k wall time of the call, the peak-RSS increase
during the call (ru_maxrss after a warm-up, delta over the call; input construction and
imports are excluded), and the agreement of the kept index sets (Jaccard).
SAHI: ``sahi.postprocess.combine.batched_nms`` / ``batched_greedy_nmm`` (its default
backend: numba if installed, else numpy). SAHI matches with ``>= threshold``, we with
``> threshold``; on random float boxes ties do not occur. Our NMM time includes building
the merged boxes/Detections; SAHI's greedy_nmm only returns the keep->merge mapping.

Masks: 2000 detections of an 1800x1200 image (ellipses in boxes with sides 16-240 px) as one
``sv.CompactMask``; our merge with the masks vs the same boxes without them (SAHI's postprocess
does not merge masks).
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
        from vlpipe.agents.merge import merge_detections

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
    for _ in range(7 if n <= 10_000 else 1):
        t = time.perf_counter()
        keep = run(data)
        best = min(best, time.perf_counter() - t)
    extra = {}
    if impl == "sahi":
        from sahi.postprocess.backends import resolve_backend

        extra["backend"] = resolve_backend()
    return {"time": best, "mem": _maxrss_mb() - base, "keep": sorted(keep), **extra}


def mask_worker(method: str, metric: str, n: int = 2000, height: int = 1200, width: int = 1800) -> dict:
    """Our merge of ``n`` CompactMask detections vs the same boxes alone: best-of-3 seconds."""
    import supervision as sv

    sys.path.insert(0, str(ROOT))
    from vlpipe.agents.sam_masks import BoxMasks
    from vlpipe.agents.merge import merge_detections

    rng = np.random.default_rng(0)
    wh, c = rng.uniform(16, 240, (n, 2)), rng.uniform([0, 0], [width, height], (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).clip(0, [width - 2, height - 2] * 2).astype(np.int64)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    crops = []
    for x0, y0, x1, y1 in boxes:
        yy, xx = np.mgrid[: y1 - y0 + 1, : x1 - x0 + 1]
        h, w = (y1 - y0 + 1) / 2, (x1 - x0 + 1) / 2
        crops.append(((yy + 0.5 - h) / h) ** 2 + ((xx + 0.5 - w) / w) ** 2 <= 1)
    masks = BoxMasks(boxes, crops, (height, width)).to_compact()
    scores, cls = rng.random(n), rng.integers(0, 3, n)
    out = {}
    for name, mask in (("masks", masks), ("boxes", None)):
        d = sv.Detections(xyxy=boxes.astype(np.float64), confidence=scores, class_id=cls, mask=mask)
        merge_detections(d[:100], method=method, metric=metric)  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            kept = merge_detections(d, method=method, metric=metric)
            best = min(best, time.perf_counter() - t)
        out[name], out["kept"] = best, len(kept)
    return out


def measure(impl: str, n: int, method: str, metric: str, threshold: float, timeout: float) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", impl, str(n), method, metric, str(threshold)]
    if impl == "masks":
        cmd = [sys.executable, __file__, "--mask-worker", method, metric]
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
    ap.add_argument("--json", action="store_true", help="headline size only; last line one JSON object")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--mask-worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mask_worker:
        print(json.dumps(mask_worker(*args.mask_worker)))
        return
    if args.json:
        args.sizes = [10_000]
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
    print(f"class-aware, threshold {args.threshold}; time = best of 7 (N <= 10k) or 1 run; sahi/ours > 1: ours faster\n")
    hdr = f"{'N':>6} {'method':>6} {'metric':>6} | {'ours s':>8} {'sahi s':>8} {'sahi/ours':>9} | " \
          f"{'ours MiB':>8} {'sahi MiB':>8} | {'kept':>6} {'jaccard':>7}"
    print(hdr)
    print("-" * len(hdr))
    backend, ratios, same = None, [], True
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
                    if n == 10_000:
                        ratios.append(theirs["time"] / max(ours["time"], 1e-9))
                        same &= a == b
                    row += f"{theirs['time']:>8.3f} {theirs['time'] / max(ours['time'], 1e-9):>9.1f} | "
                    row += f"{ours['mem']:>8.1f} {theirs['mem']:>8.1f} | {len(a):>6} {jac:>7.4f}"
                else:
                    err = theirs["error"] if theirs else "n/a"
                    row += f"{err[:8]:>8} {'-':>9} | {ours['mem']:>8.1f} {'-':>8} | {len(ours['keep']):>6} {'-':>7}"
                print(row, flush=True)
    if backend:
        print(f"\nsahi postprocess backend: {backend}")

    print("\n2000 detections with CompactMasks, 1800x1200 image: ours with masks vs the boxes alone")
    masks = {}
    for method, metric in (("nms", "iou"), ("nmm", "iou"), ("nmm", "ios")):
        r = measure("masks", 2000, method, metric, args.threshold, args.timeout)
        if "error" in r:
            print(f"{method} {metric}: failed: {r['error']}")
            continue
        masks[f"{method}_{metric}"] = round(r["masks"], 4)
        print(f"{method:>6} {metric:>6} | masks {r['masks']:.4f} s, boxes only {r['boxes']:.4f} s | kept {r['kept']}")
    if args.json:
        speedup = round(min(ratios), 2) if ratios else None
        print(json.dumps({"speedup_10k": speedup, "same_kept": same if ratios else None, "masks_2k": masks}))


if __name__ == "__main__":
    main()
