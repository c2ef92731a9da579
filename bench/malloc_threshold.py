"""Peak RSS on a CPU includes memory the C allocator keeps after PyTorch frees it: how much, and
what giving it back costs. One SmolLM2-135M training step (forward and backward, bf16 autocast where
the CPU runs bf16 natively, gradient checkpointing on, tunesmith's speed-ups) on one row of
`--length` tokens, each in a fresh process, with glibc's defaults and with
`MALLOC_MMAP_THRESHOLD_` set (tensors above it get their own mapping, returned to the system
when freed, at the price of fresh zeroed pages: page faults), turns interleaved.

    .venv/bin/python bench/malloc_threshold.py                      # 2048 tokens, full and LoRA
    .venv/bin/python bench/malloc_threshold.py --length 8192 --thresholds 4194304
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def step(method: str, length: int) -> dict:
    from types import SimpleNamespace

    import torch

    from tunesmith.config.load import validate
    from tunesmith.demo_model import demo_model_path
    from tunesmith.hf import load_tokenizer
    from tunesmith.modelref import local_model
    from tunesmith.train.arguments import default_bf16
    from tunesmith.train.collate import PadCollator
    from tunesmith.train.model import load_model
    from tunesmith.train.speedups import apply_speedups

    cfg = validate({"base_model": str(demo_model_path()), "data": {"train": {"data_files": "unused.jsonl"}},
                    "model": {"method": method}})
    tokenizer = load_tokenizer(str(local_model(cfg.base_model)))
    model = load_model(cfg, tokenizer)
    args = SimpleNamespace(use_liger_kernel=False, liger_kernel_config=None, label_smoothing_factor=0.0,
                           ddp_find_unused_parameters=None)
    apply_speedups(model, cfg.model, args, {})
    model.activation_checkpointing_enable()
    if method == "lora":
        model.enable_input_require_grads()
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(100, tokenizer.vocab_size, (length,)).tolist()
    batch = PadCollator(pad_id=tokenizer.pad_token_id, padding_free=True, segment_kwargs=True)(
        [{"input_ids": ids, "labels": ids}])
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=default_bf16()):
        loss = model(**batch).loss
    loss.backward()
    return {"seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    ap.add_argument("--thresholds", nargs="+", type=int, default=[1048576, 4194304],
                    help="MALLOC_MMAP_THRESHOLD_ values (bytes) to compare with glibc's default")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(step(args.worker[0], int(args.worker[1]))))
        return
    settings = [None, *args.thresholds]
    results: dict[tuple, list[dict]] = {}
    for _ in range(args.turns):
        for method in args.methods:
            for threshold in settings:
                env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                if threshold:
                    env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
                out = subprocess.run([sys.executable, __file__, "--worker", method, str(args.length)], env=env,
                                     capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                results.setdefault((method, threshold), []).append(json.loads(out))
    print(f"SmolLM2-135M, one step on {args.length} tokens, checkpointing on, {args.turns} interleaved turns "
          f"(best of them), {os.cpu_count()} cores")
    print(f"{'':6} {'MALLOC_MMAP_THRESHOLD_':>24} {'peak RSS MB':>12} {'seconds':>8}")
    for (method, threshold), runs in results.items():
        peak = min(r["peak_rss_mb"] for r in runs)
        seconds = min(r["seconds"] for r in runs)
        print(f"{method:6} {threshold if threshold else 'glibc default':>24} {peak:>12,.0f} {seconds:>8.1f}")
    print("reproduce: .venv/bin/python bench/malloc_threshold.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
