"""VL-SAM attention flow from a layer's queries, keys and values: stacked vs flow attention.

``stacked``: eager attention per layer (softmax(QKᵀ·s), output = weights @ V), every layer's
(H, N, N) weights kept, then the flow over the stack. ``ours``: :func:`reduce_attention` per
layer (output and head reduction a block of query rows at a time) folded into the flow as it
comes. Both start from the same random queries / keys / values (made before the measurement,
like the activations a model has anyway, and after a tiny warm-up run); peak memory is the
peak above that (ru_maxrss on the CPU, max_memory_allocated on CUDA), each measurement in a
fresh subprocess; extra memory is the peak less that of SDPA's outputs alone (``sdpa`` column),
which any attention implementation needs. ``--stream-only`` sizes run ours alone (the stack would
not fit) and set its peak against the (H, N, N) weights eager attention makes per layer.

    python bench/attention.py                               # N = 300, 600, 1200; L = H = 32
    python bench/attention.py --json                        # N = 1200 only, JSON last line
    python bench/attention.py --sizes 2000 4000 --stream-only 8000 16000 --layers 2 --heads 28 --kv-heads 4
                                                            # Qwen2.5-VL-7B's heads, N up to 16k
    python bench/attention.py --device cuda --dtype bfloat16 --sizes 1200 2400 --stream-only 16000
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
from vlpipe.agents.mllm.attention import AttentionFlow, attention_flow  # noqa: E402
from vlpipe.agents.mllm.flow_attention import reduce_attention  # noqa: E402

HEADLINE = 1200


def random_layers(L: int, H: int, Hkv: int, N: int, d: int, device: str, dtype) -> list:
    """L (query (H, N, d), key (Hkv, N, d), value (Hkv, N, d)) triples, seeded."""
    g = torch.Generator(device).manual_seed(0)
    return [tuple(torch.randn(h, N, d, generator=g, device=device).to(dtype) for h in (H, Hkv, Hkv))
            for _ in range(L)]


def stacked_flow(layers: list, scaling: float) -> torch.Tensor:
    """Eager attention per layer, all (L, H, N, N) weights kept, then the flow over them."""
    L, (H, N, _) = len(layers), layers[0][0].shape
    causal = torch.ones(N, N, dtype=torch.bool, device=layers[0][0].device).triu(1)
    stack = torch.empty(L, H, N, N, dtype=layers[0][0].dtype, device=layers[0][0].device)
    for l, (q, k, v) in enumerate(layers):
        group = H // k.shape[0]
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = (q @ k.transpose(1, 2) * scaling).masked_fill_(causal, float("-inf"))
        stack[l] = scores.softmax(-1, dtype=torch.float32)
        del scores
        stack[l] @ v  # the layer output, as eager attention computes it
    return attention_flow(stack)


def sdpa_only(layers: list, scaling: float) -> torch.Tensor:
    """The fast kernel's outputs alone, no flow: the memory any attention needs."""
    for q, k, v in layers:
        group = q.shape[0] // k.shape[0]
        torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(group, 0), v.repeat_interleave(group, 0), is_causal=True,
            scale=scaling)
    return torch.zeros(1, 1)


def streamed_flow(layers: list, scaling: float) -> torch.Tensor:
    acc = AttentionFlow()
    for q, k, v in layers:
        acc.update_reduced(reduce_attention(q, k, v, None, scaling)[1])
    return acc.result


def worker(variant: str, shape: list[int], threads: int, device: str, dtype: str, out: str) -> None:
    torch.set_num_threads(threads)
    L, H, Hkv, N, d = shape
    layers = random_layers(L, H, Hkv, N, d, device, getattr(torch, dtype))
    streamed_flow(random_layers(1, 2, 1, 8, 4, device, torch.float32), 0.5)  # library start-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    R = {"stacked": stacked_flow, "ours": streamed_flow, "sdpa": sdpa_only}[variant](layers, d ** -0.5)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB
    torch.save(R.cpu(), out)
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(variant: str, shape: list[int], args, out: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, *map(str, shape), str(args.threads),
           args.device, args.dtype, out]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[300, 600, HEADLINE])
    ap.add_argument("--stream-only", type=int, nargs="*", default=[])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None, help="grouped queries (default: --heads)")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, float16")
    ap.add_argument("--json", action="store_true",
                    help=f"headline only (N={HEADLINE}, L=H=32), JSON object as the last line")
    ap.add_argument("--worker", nargs=10, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        variant, *shape, threads, device, dtype, out = args.worker
        return worker(variant, [int(s) for s in shape], int(threads), device, dtype, out)
    if args.json:
        args.sizes, args.stream_only, args.layers, args.heads, args.kv_heads = [HEADLINE], [], 32, 32, None

    L, H, d = args.layers, args.heads, args.head_dim
    Hkv = args.kv_heads or H
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} thread(s)"
    print(f"torch {torch.__version__}, {where}, {args.dtype}, L={L}, H={H}, Hkv={Hkv}, d={d}")
    print(f"{'N':>6} {'stacked s':>10} {'ours s':>8} {'t ratio':>8} {'sdpa MB':>8} {'stacked MB':>11} "
          f"{'ours MB':>8} {'extra ratio':>12}  max rel diff")
    headline = {}
    with tempfile.TemporaryDirectory() as tmp:
        for N in args.sizes:
            a, b = f"{tmp}/stacked.pt", f"{tmp}/ours.pt"
            shape = [L, H, Hkv, N, d]
            st, ours = measure("stacked", shape, args, a), measure("ours", shape, args, b)
            sdpa = measure("sdpa", shape, args, f"{tmp}/sdpa.pt")["peak_mb"]
            Ra, Rb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            rel = ((Ra - Rb).abs().max() / Ra.abs().max()).item()
            mem = (st["peak_mb"] - sdpa) / (ours["peak_mb"] - sdpa)
            time_ratio = ours["seconds"] / st["seconds"]
            print(f"{N:>6} {st['seconds']:>10.2f} {ours['seconds']:>8.2f} {time_ratio:>8.2f} {sdpa:>8.0f} "
                  f"{st['peak_mb']:>11.0f} {ours['peak_mb']:>8.0f} {mem:>12.1f}  {rel:.1e}")
            if N == HEADLINE:
                headline = {"memory_ratio": round(mem, 1), "time_ratio": round(time_ratio, 2)}
        if args.stream_only:
            print(f"\nours alone; eager = the (H, N, N) {args.dtype} weights eager attention makes, one layer "
                  f"and all {L}\n{'N':>6} {'ours s':>8} {'ours MB':>8} {'B per N²':>9} {'eager 1 layer MB':>17} "
                  f"{'eager all MB':>13} {'1 layer / ours':>15}")
        for N in args.stream_only:
            ours = measure("ours", [L, H, Hkv, N, d], args, f"{tmp}/ours.pt")
            eager = H * N * N * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
            print(f"{N:>6} {ours['seconds']:>8.2f} {ours['peak_mb']:>8.0f} {ours['peak_mb'] * 2**20 / N**2:>9.1f} "
                  f"{eager:>17.0f} {L * eager:>13.0f} {eager / ours['peak_mb']:>15.1f}")
    if args.json:
        print(json.dumps(headline))


if __name__ == "__main__":
    main()
