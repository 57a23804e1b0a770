"""Streaming vs materialized VL-SAM attention flow: time and peak memory (CPU).

Each measurement runs in a fresh subprocess; peak memory is ru_maxrss after the run minus
ru_maxrss after imports. Both variants include generating the random attention (same seed).

    python bench/attention.py --sizes 300 600 1200 --layers 32 --heads 32 --stream-only 2400
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vlpipe.agents.attention import attention_flow, head_weights  # noqa: E402


def random_layers(L: int, H: int, N: int, seed: int = 0):
    """Yield L (H, N, N) float32 softmaxed causal attention layers."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.ones(N, N, dtype=torch.bool).triu(1)
    for _ in range(L):
        yield torch.randn(H, N, N, generator=g).masked_fill_(upper, float("-inf")).softmax(-1)


def naive_flow(L: int, H: int, N: int) -> torch.Tensor:
    """Materialize (L, H, N, N), then run the same recursion on it."""
    S = torch.empty(L, H, N, N)
    for l, layer in enumerate(random_layers(L, H, N)):
        S[l] = layer
        del layer
    W = torch.stack([head_weights(S[l]) for l in range(L)])  # (L, H)
    Sp = torch.einsum("lh,lhij->lij", W, S) / H  # (L, N, N)
    Sp *= torch.arange(1, N + 1, dtype=torch.float32) / N
    eye = torch.eye(N)
    R = torch.zeros(N, N)
    for l in range(L):
        R = (eye + Sp[l]) @ (eye + R)
    return R


def worker(variant: str, L: int, H: int, N: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    R = naive_flow(L, H, N) if variant == "naive" else attention_flow(random_layers(L, H, N))
    seconds = time.perf_counter() - t
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB on Linux
    torch.save(R, out)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(variant: str, L: int, H: int, N: int, threads: int, out: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, str(L), str(H), str(N), str(threads), out]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 600, 1200])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--stream-only", type=int, nargs="*", default=[2400])
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on shared CPUs)"
    )
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        variant, L, H, N, threads, out = args.worker
        return worker(variant, int(L), int(H), int(N), int(threads), out)

    L, H, T = args.layers, args.heads, args.threads
    print(f"torch {torch.__version__}, {T} thread(s), L={L}, H={H}")
    header = f"{'N':>5} {'naive s':>8} {'stream s':>9} {'t ratio':>8} {'naive MB':>9} "
    print(header + f"{'stream MB':>10} {'mem ratio':>10}  max rel diff")
    with tempfile.TemporaryDirectory() as tmp:
        for N in args.sizes:
            a, b = f"{tmp}/naive.pt", f"{tmp}/stream.pt"
            naive, stream = measure("naive", L, H, N, T, a), measure("stream", L, H, N, T, b)
            Ra, Rb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            rel = ((Ra - Rb).abs().max() / Ra.abs().max()).item()
            print(
                f"{N:>5} {naive['seconds']:>8.2f} {stream['seconds']:>9.2f} "
                f"{naive['seconds'] / stream['seconds']:>8.2f} {naive['peak_mb']:>9.0f} "
                f"{stream['peak_mb']:>10.0f} {naive['peak_mb'] / stream['peak_mb']:>10.1f}  "
                f"{rel:.1e} ({'allclose' if torch.allclose(Ra, Rb, rtol=1e-4, atol=0) else 'DIFFER'})"
            )
        for N in args.stream_only:
            stream = measure("stream", L, H, N, T, f"{tmp}/stream.pt")
            print(f"{N:>5} {'-':>8} {stream['seconds']:>9.2f} {'-':>8} {'-':>9} {stream['peak_mb']:>10.0f}")


if __name__ == "__main__":
    main()
