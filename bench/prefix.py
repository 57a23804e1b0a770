"""A view's questions over one prefill of its shared prefix vs each question prefilled whole.

    python bench/prefix.py [--questions 10] [--answer-tokens 40] [--scale small] [--json]

One view (truck.jpg, padded to 336 px: 576 image tokens) and ``--questions`` list-objects
questions on the scaled LLaVA-1.5 of ``bench/e2e.py`` (random weights). Generation: one batched
``Mllm.generate`` of exactly ``--answer-tokens`` tokens per question (EOS held back), with and
without ``share_prefix``. Attention: ``Mllm.flows`` over prompt + forced answer (e2e's answer
naming objects) for every question, with and without. Each side runs once to warm up, then
``--repeat`` times (best kept). The shared side must give the same tokens and flows (largest
relative difference printed). ``--json`` prints as last line
``{"generation_speedup": .., "attention_speedup": .., ...}`` (whole / shared seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from e2e import ANSWER, IMAGE, MLLM_SIZES, build_llava  # noqa: E402

from vlpipe.agents.mllm.model import Mllm  # noqa: E402
from vlpipe.io import load_image  # noqa: E402
from vlpipe.prompts import load_questions  # noqa: E402


def best_of(repeat: int, whole, shared) -> tuple[tuple, tuple]:
    """((whole's result, shared's result), (their best seconds)): one warm-up run each, then
    ``repeat`` timed runs, the two alternating (a shared machine's load hits both alike)."""
    results, times = (whole(), shared()), ([], [])
    for _ in range(repeat):
        for fn, seconds in zip((whole, shared), times):
            t = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t)
    return results, (min(times[0]), min(times[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(MLLM_SIZES["llava-1.5"]), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--answer-tokens", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    image = load_image(IMAGE)
    with tempfile.TemporaryDirectory() as tmp:
        mllm = Mllm.load(str(build_llava(Path(tmp), args.scale, args.device, dtype)), args.device,
                         str(dtype).removeprefix("torch."))
    cfg = mllm.model.generation_config
    cfg.min_new_tokens = cfg.max_new_tokens = args.answer_tokens
    prompts = [mllm.prompt(q) for q in load_questions("list_objects", args.questions)]
    answer = mllm.tokenizer(ANSWER, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    answers = [answer.repeat(args.answer_tokens // len(answer) + 1)[:args.answer_tokens]] * len(prompts)

    def generation(share: bool):
        return lambda: mllm.generate([image] * len(prompts), prompts, share_prefix=share)

    def attention(share: bool):
        return lambda: [R.clone() for R, *_ in mllm.flows(image, prompts, answers, share_prefix=share)]

    (gens_whole, gens), gen_seconds = best_of(args.repeat, generation(False), generation(True))
    (flows_whole, flows), flow_seconds = best_of(args.repeat, attention(False), attention(True))
    same_tokens = all(a.answer_ids.tolist() == b.answer_ids.tolist() for a, b in zip(gens, gens_whole))
    flow_diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(flows, flows_whole))
    n = mllm.encode([image], prompts[:1])["input_ids"].shape[1]
    print(f"{args.scale} LLaVA-1.5 on {args.device} ({dtype}), {torch.get_num_threads()} threads: one view, "
          f"{args.questions} questions (prompt {n} tokens) x {args.answer_tokens} answer tokens, "
          f"best of {args.repeat}")
    speedups = {}
    for name, (whole, shared) in (("generation", gen_seconds), ("attention", flow_seconds)):
        speedups[name] = whole / shared
        print(f"  {name:<10} whole {whole:7.3f} s   shared prefix {shared:7.3f} s   {whole / shared:5.2f}x")
    print(f"  same tokens: {same_tokens}; flows' largest relative difference {flow_diff:.1e}")
    if args.json:
        print(json.dumps({"generation_speedup": round(speedups["generation"], 2),
                          "attention_speedup": round(speedups["attention"], 2),
                          "same_tokens": same_tokens, "flow_rel_diff": float(f"{flow_diff:.1e}")}))


if __name__ == "__main__":
    main()
