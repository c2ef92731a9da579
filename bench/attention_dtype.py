"""Which dtype the CPU's causal attention kernel runs faster in, by example length: forward and
backward of `F.scaled_dot_product_attention` on one example with SmolLM2's shape (9 query heads
and 3 key/value heads of 64), fp32 against bf16, turns interleaved, best of each.
`train/attention.py` (FP32_ON_CPU_UP_TO) runs short examples in fp32 and long ones in bf16 from
this measurement; rerun it on another CPU to check the crossover there.

    .venv/bin/python bench/attention_dtype.py
    .venv/bin/python bench/attention_dtype.py --lengths 256 512 768 1024
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F


def fwd_bwd_seconds(length: int, dtype: torch.dtype, reps: int) -> float:
    q = torch.randn(1, 9, length, 64, dtype=dtype, requires_grad=True)
    k = torch.randn(1, 3, length, 64, dtype=dtype, requires_grad=True)
    v = torch.randn(1, 3, length, 64, dtype=dtype, requires_grad=True)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--turns", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"causal sdpa forward+backward, 9 q heads / 3 kv heads of 64, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores; best of {args.turns} interleaved turns")
    print(f"{'tokens':>7} {'fp32 s':>8} {'bf16 s':>8} {'bf16/fp32':>10}")
    for length in args.lengths:
        reps = 5 if length <= 2048 else 2
        times = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
        for _ in range(args.turns):
            for dtype in times:
                times[dtype] = min(times[dtype], fwd_bwd_seconds(length, dtype, reps))
        print(f"{length:>7} {times[torch.float32]:>8.3f} {times[torch.bfloat16]:>8.3f} "
              f"{times[torch.bfloat16] / times[torch.float32]:>10.2f}", flush=True)
    print("reproduce: .venv/bin/python bench/attention_dtype.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
