"""Benchmark vlpipe.agents.merge.merging.merge_detections against SAHI's postprocess and supervision (greedy NMS / NMM).

    python bench/merge.py [--sizes 1000 10000 50000] [--rounds 7] [--json]

``--json`` runs the headline size only (10k boxes, plus the masks rows) and prints as last line
``{"speedup_10k": sahi/ours of the worst method/metric pair (median over rounds),
"speedup_10k_spread": [min, max] of that pair's rounds, "same_kept": .., "supervision_10k": ..,
"masks_2k": .., "tiled_2k": ..}``.

Random crowded boxes: uniform centres on a 4000x4000 canvas, sides 20-200 px, 3 classes,
class-aware, threshold 0.5. Time: one process imports ours and SAHI and, each round, times
every (method, metric) pair with ours and then SAHI (best of 3 calls each; 1 above 10k), so load
on a shared machine hits both alike; we report the median of the rounds and the spread of the
per-round ratio sahi/ours. Memory and kept sets: each implementation once more in a fresh
subprocess, the peak-RSS increase during the call (ru_maxrss after a warm-up, delta over the
call; input construction and imports are excluded), and the agreement of the kept index sets
(Jaccard). SAHI: ``sahi.postprocess.combine.batched_nms`` / ``batched_greedy_nmm`` (its default
backend: numba if installed, else numpy). supervision: ``Detections.with_nms`` / ``with_nmm``
(an N x N overlap matrix; one call, N <= 10k). SAHI and supervision match with ``>=
threshold``, we with ``> threshold``; on random float boxes ties do not occur. Our NMM time
includes building the merged boxes/Detections; SAHI's greedy_nmm only returns the keep->merge
mapping.

Masks: 2000 detections of an 1800x1200 image (ellipses in boxes with sides 16-240 px) as one
``sv.CompactMask``; our merge with the masks vs the same boxes without them (SAHI's postprocess
does not merge masks). Tiled: 2000 detections of 400 objects as the detect recipe makes them
(the full image and 2x2 tiles; a tile sees the part of an object inside it), with CompactMasks
and ``view_box``: ``tile_fragments`` and then the merge, as ``MergeNode`` runs them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "pip install --no-deps 'sahi>=0.12' && pip install shapely pillow  # avoids opencv-python"
PAIRS = [(method, metric) for method in ("nms", "nmm") for metric in ("iou", "ios")]
HEIGHT, WIDTH = 1200, 1800  # the masks rows' image


def make_boxes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> xyxy (N, 4) float64, scores (N,), class ids (N,) int."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(20, 200, (n, 2))
    c = rng.uniform(0, 4000, (n, 2))
    xyxy = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    return xyxy, rng.random(n), rng.integers(0, 3, n)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _runner(impl: str, n: int, method: str, metric: str, threshold: float):
    """-> run(): one merge of the ``n`` boxes by ``impl``, returning the kept indices."""
    xyxy, scores, cls = make_boxes(n)
    if impl == "ours":
        import supervision as sv

        sys.path.insert(0, str(ROOT))
        from vlpipe.agents.merge.merging import merge_detections

        names = np.array(["car", "person", "dog"])[cls]
        d = sv.Detections(xyxy=xyxy, confidence=scores, data={"class_name": names, "idx": np.arange(n)})
        return lambda: merge_detections(d, method=method, metric=metric, threshold=threshold).data["idx"].tolist()
    if impl == "supervision":
        import supervision as sv

        d = sv.Detections(xyxy=xyxy, confidence=scores, class_id=cls, data={"idx": np.arange(n)})
        fn, how = getattr(d, f"with_{method}"), sv.OverlapMetric(metric.upper())
        return lambda: fn(threshold, overlap_metric=how).data["idx"].tolist()
    from sahi.postprocess import combine

    fn = combine.batched_nms if method == "nms" else combine.batched_greedy_nmm
    p = np.column_stack([xyxy, scores, cls]).astype(np.float64)
    return lambda: [int(i) for i in fn(p, match_metric=metric.upper(), match_threshold=threshold)]


def worker(impl: str, n: int, method: str, metric: str, threshold: float) -> dict:
    """One call in this (fresh) process, after a warm-up: seconds, RSS delta and kept indices."""
    _runner(impl, min(n, 200), method, metric, threshold)()  # lazy imports, backend dispatch
    run = _runner(impl, n, method, metric, threshold)
    base = _maxrss_mb()
    t = time.perf_counter()
    keep = run()
    seconds = time.perf_counter() - t
    extra = {}
    if impl == "sahi":
        from sahi.postprocess.backends import resolve_backend

        extra["backend"] = resolve_backend()
    return {"time": seconds, "mem": _maxrss_mb() - base, "keep": sorted(keep), **extra}


def ratio_worker(n: int, threshold: float, rounds: int) -> dict:
    """Ours and SAHI alternated in this process: {"method metric": {"ours": [s per round], "sahi": [..]}}."""
    calls = 3 if n <= 10_000 else 1
    runs = {}
    for method, metric in PAIRS:
        for impl in ("ours", "sahi"):
            _runner(impl, min(n, 200), method, metric, threshold)()  # warm-up
            runs[method, metric, impl] = _runner(impl, n, method, metric, threshold)
    times = {f"{method} {metric}": {"ours": [], "sahi": []} for method, metric in PAIRS}
    for _ in range(rounds):
        for (method, metric, impl), run in runs.items():
            best = float("inf")
            for _ in range(calls):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            times[f"{method} {metric}"][impl].append(best)
    return times


def _ellipse_masks(boxes: np.ndarray):
    """(N, 4) int inclusive boxes -> one CompactMask of the HEIGHT x WIDTH image, an ellipse in each box."""
    from vlpipe.agents.sam.masks import BoxMasks

    crops = []
    for x0, y0, x1, y1 in boxes:
        yy, xx = np.mgrid[: y1 - y0 + 1, : x1 - x0 + 1]
        h, w = (y1 - y0 + 1) / 2, (x1 - x0 + 1) / 2
        crops.append(((yy + 0.5 - h) / h) ** 2 + ((xx + 0.5 - w) / w) ** 2 <= 1)
    return BoxMasks(boxes, crops, (HEIGHT, WIDTH)).to_compact()


def mask_worker(method: str, metric: str, n: int = 2000) -> dict:
    """Our merge of ``n`` CompactMask detections vs the same boxes alone: best-of-3 seconds."""
    import supervision as sv

    sys.path.insert(0, str(ROOT))
    from engine import best_of
    from vlpipe.agents.merge.merging import merge_detections

    rng = np.random.default_rng(0)
    wh, c = rng.uniform(16, 240, (n, 2)), rng.uniform([0, 0], [WIDTH, HEIGHT], (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).clip(0, [WIDTH - 2, HEIGHT - 2] * 2).astype(np.int64)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    masks = _ellipse_masks(boxes)
    scores, cls = rng.random(n), rng.integers(0, 3, n)
    out = {}
    for name, mask in (("masks", masks), ("boxes", None)):
        d = sv.Detections(xyxy=boxes.astype(np.float64), confidence=scores, class_id=cls, mask=mask)
        merge_detections(d[:100], method=method, metric=metric)  # warm-up
        out[name], kept = best_of(3, lambda: merge_detections(d, method=method, metric=metric))
        out["kept"] = len(kept)
    return out


def tiled_scene(n: int = 2000, objects: int = 400, seed: int = 0):
    """``n`` detections of ``objects`` seen in the full image and its 2x2 tiles: a tile's detection
    is the object's box (jittered by 2 px) cut at the tile's border. CompactMasks, ``view_box``."""
    import supervision as sv

    sys.path.insert(0, str(ROOT))
    from vlpipe.agents.tiles.grid import split_tiles

    rng = np.random.default_rng(seed)
    wh, c = rng.uniform(16, 240, (objects, 2)), rng.uniform([0, 0], [WIDTH, HEIGHT], (objects, 2))
    obj = np.concatenate([c - wh / 2, c + wh / 2], 1)
    names = rng.choice(["car", "person", "dog", "tree", "sign"], objects)
    views = np.array([[t.x0, t.y0, t.x1, t.y1] for t in split_tiles(HEIGHT, WIDTH, (2, 2))], dtype=np.float64)
    k, v = rng.integers(0, objects, 4 * n), rng.integers(0, len(views), 4 * n)
    boxes = np.clip(obj[k] + rng.normal(0, 2, (4 * n, 4)), np.tile(views[v, :2], 2), np.tile(views[v, 2:] - 1, 2))
    boxes = boxes.round()
    seen = np.flatnonzero((boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4))[:n]
    boxes = boxes[seen].astype(np.int64)
    return sv.Detections(xyxy=boxes.astype(np.float64), confidence=rng.random(len(seen)), mask=_ellipse_masks(boxes),
                         data={"class_name": names[k[seen]], "view_box": views[v[seen]]})


def tiled_worker() -> dict:
    """tile_fragments, then each merge of what is left, on :func:`tiled_scene`: best-of-3 seconds."""
    from engine import best_of
    from vlpipe.agents.merge.merging import merge_detections, tile_fragments

    d = tiled_scene()
    out = {"detections": len(d)}
    out["fragments"], frag = best_of(3, lambda: tile_fragments(d))
    out["dropped"] = int(frag.sum())
    rest = d[~frag]
    for method, metric in (("nms", "iou"), ("nmm", "iou"), ("nmm", "ios")):
        out[f"{method}_{metric}"], kept = best_of(3, lambda: merge_detections(rest, method=method, metric=metric))
        out[f"{method}_{metric}_kept"] = len(kept)
    return out


def measure(args: list[str], timeout: float) -> dict:
    """Run ``bench/merge.py ARGS`` in a fresh process; its last line (JSON) or {"error": ..}."""
    try:
        r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:60]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _jaccard(a: list, b: list) -> float:
    a, b = set(a), set(b)
    return len(a & b) / max(1, len(a | b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (3 above 10k)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true", help="headline size only; last line one JSON object")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--ratio-worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--mask-worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--tiled-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mask_worker:
        print(json.dumps(mask_worker(*args.mask_worker)))
        return
    if args.tiled_worker:
        print(json.dumps(tiled_worker()))
        return
    if args.ratio_worker:
        n, thr, rounds = args.ratio_worker
        print(json.dumps(ratio_worker(int(n), float(thr), int(rounds))))
        return
    if args.worker:
        impl, n, method, metric, thr = args.worker
        print(json.dumps(worker(impl, int(n), method, metric, float(thr))))
        return
    if args.json:
        args.sizes = [10_000]
    try:
        importlib.import_module("sahi.postprocess.combine")
    except ImportError as e:
        sys.exit(f"sahi not importable ({e}); install with:\n  {INSTALL_HINT}")

    thr = str(args.threshold)
    print(f"class-aware, threshold {args.threshold}; times: median over rounds of ours and SAHI alternated "
          f"(best of 3 calls, 1 above 10k); sahi/ours per round: median [min-max]; > 1: ours faster")
    print("supervision: one call (N <= 10k); MiB: ru_maxrss increase during one call in a fresh process\n")
    hdr = (f"{'N':>6} {'method':>6} {'metric':>6} | {'ours s':>8} {'sahi s':>8} {'sahi/ours':>20} | "
           f"{'sv s':>7} {'sv/ours':>7} | {'ours MiB':>8} {'sahi MiB':>8} {'sv MiB':>7} | {'kept':>6} {'jac sahi':>8} {'jac sv':>6}")
    print(hdr)
    print("-" * len(hdr))
    backend, headline = None, {}
    for n in args.sizes:
        rounds = str(args.rounds if n <= 10_000 else min(args.rounds, 3))
        times = measure(["--ratio-worker", str(n), thr, rounds], args.timeout)
        for method, metric in PAIRS:
            runs = {impl: measure(["--worker", impl, str(n), method, metric, thr], args.timeout)
                    for impl in ("ours", "sahi", *(["supervision"] if n <= 10_000 else []))}
            t = times.get(f"{method} {metric}")
            if "error" in times or "error" in runs["ours"] or "error" in runs["sahi"]:
                errors = [r["error"] for r in (times, *runs.values()) if "error" in r]
                print(f"{n:>6} {method:>6} {metric:>6} | failed: {errors[0]}", flush=True)
                continue
            backend = runs["sahi"].get("backend")
            ratios = np.array(t["sahi"]) / np.array(t["ours"])
            ours_s, sahi_s = float(np.median(t["ours"])), float(np.median(t["sahi"]))
            row = (f"{n:>6} {method:>6} {metric:>6} | {ours_s:>8.4f} {sahi_s:>8.4f} "
                   f"{f'{np.median(ratios):.2f} [{ratios.min():.2f}-{ratios.max():.2f}]':>20} | ")
            sv_run = runs.get("supervision", {"error": "-"})
            if "error" in sv_run:
                row += f"{sv_run['error'][:7]:>7} {'-':>7} | "
            else:
                row += f"{sv_run['time']:>7.3f} {sv_run['time'] / ours_s:>7.0f} | "
            row += f"{runs['ours']['mem']:>8.1f} {runs['sahi']['mem']:>8.1f} "
            row += f"{sv_run['mem']:>7.0f} | " if "mem" in sv_run else f"{'-':>7} | "
            keep = runs["ours"]["keep"]
            jac_sv = f"{_jaccard(keep, sv_run['keep']):>6.4f}" if "keep" in sv_run else f"{'-':>6}"
            print(row + f"{len(keep):>6} {_jaccard(keep, runs['sahi']['keep']):>8.4f} {jac_sv}", flush=True)
            if n == 10_000:
                headline[method, metric] = (ratios, set(keep) == set(runs["sahi"]["keep"]),
                                            sv_run["time"] / ours_s if "time" in sv_run else None)
    if backend:
        print(f"\nsahi postprocess backend: {backend}")

    print(f"\n2000 detections with CompactMasks, {WIDTH}x{HEIGHT} image: ours with masks vs the boxes alone")
    masks = {}
    for method, metric in (("nms", "iou"), ("nmm", "iou"), ("nmm", "ios")):
        r = measure(["--mask-worker", method, metric], args.timeout)
        if "error" in r:
            print(f"{method} {metric}: failed: {r['error']}")
            continue
        masks[f"{method}_{metric}"] = round(r["masks"], 4)
        print(f"{method:>6} {metric:>6} | masks {r['masks']:.4f} s, boxes only {r['boxes']:.4f} s | kept {r['kept']}")
    tiled = measure(["--tiled-worker"], args.timeout)
    if "error" in tiled:
        print(f"\ntiled: failed: {tiled['error']}")
    else:
        print(f"\ntiled, {tiled['detections']} detections with CompactMasks (full image + 2x2 tiles, 400 objects): "
              f"tile_fragments {tiled['fragments']:.4f} s ({tiled['dropped']} dropped), then merge "
              + ", ".join(f"{k.replace('_', ' ')} {tiled[k]:.4f} s (kept {tiled[k + '_kept']})"
                          for k in ("nms_iou", "nmm_iou", "nmm_ios")))
    if args.json:
        worst = min(headline, key=lambda k: np.median(headline[k][0])) if headline else None
        sv_ratios = [h[2] for h in headline.values() if h[2] is not None]
        print(json.dumps({
            "speedup_10k": round(float(np.median(headline[worst][0])), 2) if worst else None,
            "speedup_10k_spread": [round(float(f(headline[worst][0])), 2) for f in (np.min, np.max)] if worst else None,
            "worst_pair": " ".join(worst) if worst else None,
            "same_kept": all(h[1] for h in headline.values()) if headline else None,
            "supervision_10k": round(min(sv_ratios), 1) if sv_ratios else None,
            "masks_2k": masks,
            "tiled_2k": {k: round(v, 4) for k, v in tiled.items() if isinstance(v, float)},
        }))


if __name__ == "__main__":
    main()
