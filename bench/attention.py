"""Streaming vs materialized VL-SAM attention flow: time and peak memory (CPU or CUDA).

Each measurement runs in a fresh subprocess; peak memory is ru_maxrss after the run minus
ru_maxrss after imports on the CPU, torch.cuda.max_memory_allocated above what was allocated
before on CUDA. Both variants include generating the random attention (same seed), in
``--dtype`` (an MLLM's attention comes in its dtype: bfloat16 or float16 on GPUs).

    python bench/attention.py --sizes 300 600 1200 --layers 32 --heads 32 --stream-only 2400
    python bench/attention.py --device cuda --dtype bfloat16 --sizes 1200 2400 --stream-only 4800 9600
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


def random_layers(L: int, H: int, N: int, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    """Yield L (H, N, N) softmaxed causal attention layers (softmax in float32, then ``dtype``)."""
    g = torch.Generator(device).manual_seed(seed)
    upper = torch.ones(N, N, dtype=torch.bool, device=device).triu(1)
    for _ in range(L):
        scores = torch.randn(H, N, N, generator=g, device=device)
        yield scores.masked_fill_(upper, float("-inf")).softmax(-1).to(dtype)


def naive_flow(L: int, H: int, N: int, device: str = "cpu", dtype=torch.float32) -> torch.Tensor:
    """Materialize (L, H, N, N), then run the same recursion on it (float32 arithmetic)."""
    S = torch.empty(L, H, N, N, device=device, dtype=dtype)
    for l, layer in enumerate(random_layers(L, H, N, device, dtype)):
        S[l] = layer
        del layer
    W = torch.stack([head_weights(S[l]) for l in range(L)]).float()  # (L, H)
    col = torch.arange(1, N + 1, dtype=torch.float32, device=device) / N
    eye = torch.eye(N, device=device)
    R = torch.zeros(N, N, device=device)
    for l in range(L):
        Sp = torch.einsum("h,hij->ij", W[l], S[l].float()) / H * col
        R = (eye + Sp) @ (eye + R)
    return R


def worker(variant: str, L: int, H: int, N: int, threads: int, device: str, dtype: str,
           out: str) -> None:
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype)
    cuda = device.startswith("cuda")
    if cuda:
        torch.zeros(1, device=device)  # CUDA context first, outside the measurement
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if variant == "naive":
        R = naive_flow(L, H, N, device, dtype)
    else:
        R = attention_flow(random_layers(L, H, N, device, dtype))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB
    torch.save(R.cpu(), out)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(variant: str, L: int, H: int, N: int, args, out: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, str(L), str(H), str(N),
           str(args.threads), args.device, args.dtype, out]
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="of the attention layers: float32, bfloat16, float16")
    ap.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        variant, L, H, N, threads, device, dtype, out = args.worker
        return worker(variant, int(L), int(H), int(N), int(threads), device, dtype, out)

    L, H, T = args.layers, args.heads, args.threads
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {T} thread(s)"
    print(f"torch {torch.__version__}, {where}, {args.dtype} layers, L={L}, H={H}")
    header = f"{'N':>5} {'naive s':>8} {'stream s':>9} {'t ratio':>8} {'naive MB':>9} "
    print(header + f"{'stream MB':>10} {'mem ratio':>10}  max rel diff")
    with tempfile.TemporaryDirectory() as tmp:
        for N in args.sizes:
            a, b = f"{tmp}/naive.pt", f"{tmp}/stream.pt"
            naive, stream = measure("naive", L, H, N, args, a), measure("stream", L, H, N, args, b)
            Ra, Rb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            rel = ((Ra - Rb).abs().max() / Ra.abs().max()).item()
            print(
                f"{N:>5} {naive['seconds']:>8.2f} {stream['seconds']:>9.2f} "
                f"{naive['seconds'] / stream['seconds']:>8.2f} {naive['peak_mb']:>9.0f} "
                f"{stream['peak_mb']:>10.0f} {naive['peak_mb'] / stream['peak_mb']:>10.1f}  "
                f"{rel:.1e} ({'allclose' if torch.allclose(Ra, Rb, rtol=1e-4, atol=0) else 'DIFFER'})"
            )
        for N in args.stream_only:
            stream = measure("stream", L, H, N, args, f"{tmp}/stream.pt")
            print(f"{N:>5} {'-':>8} {stream['seconds']:>9.2f} {'-':>8} {'-':>9} {stream['peak_mb']:>10.0f}")


if __name__ == "__main__":
    main()
