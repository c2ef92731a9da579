"""Memory per token of the checkpointed decoder: tunesmith's speed-ups against the stock model.

    .venv/bin/python bench/decoder_memory.py                     # full fine-tuning, 4k and 8k tokens
    .venv/bin/python bench/decoder_memory.py --lora

SmolLM2-135M's shape (random weights: memory does not depend on the values), one row, gradient
checkpointing on (non-reentrant, the Trainer's default), bf16 autocast, gradients already
allocated (as from the second step on). Runs the decoder only (`model.model`), with a stand-in
loss on the last hidden state, so the vocabulary projection and each trainer's loss are left out.
Prints, per length, the memory in use (glibc's mallinfo2) kept between the forward and the
backward, and the peak during the backward, above what was in use before the forward, in MB and
KB per token. A first row of 1,024 tokens warms up (lazy allocations) and is not reported.

Used in docs/scale.md to explain the long-row figures of bench/long_rows.py: the per-token growth
is this decoder's, the same with and without tunesmith's speed-ups.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_rows import InUseSampler  # noqa: E402

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, max_position_embeddings=65536)


def measure(side: str, lora: bool, lengths: list[int]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tunesmith.config.schema import Config
    from tunesmith.train.collate import PadCollator
    from tunesmith.train.model import add_lora
    from tunesmith.train.speedups import apply_speedups

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_135M), dtype=torch.float32)
    cfg = Config.model_validate({"base_model": "unused", "data": {"train": {"data_files": "unused.jsonl"}}})
    if lora:
        model = add_lora(model, cfg)  # tunesmith's defaults: r 16, alpha 32, dropout 0.05, every linear layer
        model.enable_input_require_grads()
    core = model.get_base_model() if lora else model
    if side == "tunesmith":
        args = SimpleNamespace(use_liger_kernel=False, liger_kernel_config=None, label_smoothing_factor=0.0,
                               ddp_find_unused_parameters=None, activation_checkpointing=True)
        applied = apply_speedups(model, cfg.model, args, {}).applied
    else:
        applied = []
    core.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    for n in [1024, *lengths]:
        ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (n,)).tolist()
        if side == "tunesmith":  # the padding-free row tunesmith's collator builds
            batch = PadCollator(pad_id=0, padding_free=True, segment_kwargs=True)([{"input_ids": ids, "labels": ids}])
            batch.pop("labels")
        else:
            batch = {"input_ids": torch.tensor([ids])}
        weights = torch.randn(n, SMOLLM2_135M["hidden_size"])
        sampler = InUseSampler(every=0.002)
        before = sampler.restart()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = core.model(**batch).last_hidden_state
            loss = (hidden.float().reshape(n, -1) * weights).sum()
        kept = sampler.restart() - before
        loss.backward()
        top = sampler.stop() - before
        del loss, hidden
        if n in lengths:
            print(f"{side:9} {'lora' if lora else 'full':4} {n:>6}  kept {kept:7,.0f} MB ({kept * 1024 / n:5.1f} KB/token)  "
                  f"backward peak {top:7,.0f} MB ({top * 1024 / n:5.1f} KB/token)"
                  + (f"  speed-ups: {', '.join(applied)}" if n == lengths[0] and applied else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192])
    ap.add_argument("--lora", action="store_true", help="LoRA (tunesmith's defaults) instead of full fine-tuning")
    ap.add_argument("--side", choices=["tunesmith", "stock"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        measure(args.side, args.lora, args.lengths)
        return
    print("SmolLM2-135M's shape, decoder only, one row, checkpointing on, bf16 autocast; memory in use above "
          "the start of the forward", flush=True)
    for side in ("tunesmith", "stock"):  # each in a fresh process: the allocator's state is not shared
        cmd = [sys.executable, __file__, "--side", side, "--lengths", *map(str, args.lengths)] + (["--lora"] if args.lora else [])
        subprocess.run(cmd, check=True)
    print("\nreproduce: .venv/bin/python bench/decoder_memory.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
