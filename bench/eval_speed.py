"""Generation speed: tunesmith's batched generation (prompts sorted by length, left-padded batches,
KV cache, each row stopping at its EOS) against a plain `model.generate` loop, one row at a time,
on the same held-out rows and the same prompt token ids, greedy, in one process.

The two sides take turns over chunks of the rows (plain, tunesmith, plain, ...), so a machine
shared with other work slows both alike; the ratio is the figure to read. The outputs are
compared token by token.

    .venv/bin/python bench/eval_speed.py --plain-every 4       # 1,000 dolly rows, SmolLM2-135M-Instruct
    .venv/bin/python bench/eval_speed.py --rows 48 --tiny      # a 2-layer random Llama: a quick check
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

DOLLY = Path(__file__).resolve().parent / "data" / "dolly_hhrlhf" / "train.jsonl"


def prompt_ids(model_dir: str, rows: list[dict]) -> tuple[list[list[int]], object]:
    """The prompts as `tunesmith eval` builds them (the rows' own Alpaca text, verbatim)."""
    from tunesmith.config.load import validate
    from tunesmith.data.render import make_renderer
    from tunesmith.hf import load_tokenizer

    cfg = validate({"base_model": model_dir, "data": {"train": {"data_files": str(DOLLY)}, "prompt_format": "plain"}})
    tokenizer = load_tokenizer(model_dir)
    renderer = make_renderer(cfg.data, tokenizer)
    return [renderer.prompt({"prompt": r["prompt"]}, i)[0] for i, r in enumerate(rows)], tokenizer


def tiny_model(tokenizer_dir: str, folder: Path) -> str:
    """A 2-layer random Llama with the real tokenizer: exercises the code paths in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def plain_loop(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """What a user writes without tunesmith: one `model.generate` per row (no padding, so no ambiguity)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        g = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        out.append(g[0, len(p):].tolist())
    return out


def main() -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.demo_model import demo_model_path
    from tunesmith.infer.batching import generate_ids
    from tunesmith.modelref import local_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--model", help="model folder (default: the demo model, SmolLM2-135M-Instruct)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random Llama with the model's tokenizer")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunks", type=int, default=4, help="turns each side takes")
    ap.add_argument("--plain-every", type=int, default=1,
                    help="time the plain loop on every K-th row only (a uniform sample: its rows/s estimates the "
                         "whole set's; the row-by-row loop over 1,000 rows takes an hour on 2 CPU cores)")
    args = ap.parse_args()

    model_dir = args.model or local_model(str(demo_model_path()))
    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        model_dir = tiny_model(model_dir, Path(tmp.name) / "tiny")
    lines = DOLLY.read_text().splitlines()
    rows = [json.loads(lines[i % len(lines)]) for i in range(args.rows)]
    prompts, tokenizer = prompt_ids(model_dir, rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    seconds = {"plain": 0.0, "tunesmith": 0.0}
    answers: dict[str, list[list[int]]] = {"plain": [], "tunesmith": []}
    step = -(-len(prompts) // args.chunks)
    with torch.no_grad():
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            for side in ("plain", "tunesmith"):
                t = time.perf_counter()
                if side == "plain":
                    sample = [p for i, p in enumerate(chunk, start) if i % args.plain_every == 0]
                    got = plain_loop(model, tokenizer, sample, args.max_new_tokens)
                else:
                    got = generate_ids(model, tokenizer, chunk, None, args.max_new_tokens, args.batch_size,
                                       show_progress=False)
                seconds[side] += time.perf_counter() - t
                answers[side] += got

    sampled = [a for i, a in enumerate(answers["tunesmith"]) if i % args.plain_every == 0]
    same = sum(a == b for a, b in zip(answers["plain"], sampled))
    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{Path(model_dir).name}{' (tiny random Llama)' if args.tiny else ''}, {len(prompts)} dolly rows, "
          f"max {args.max_new_tokens} new tokens, greedy, fp32, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.chunks} interleaved turns each")
    rate = {side: len(answers[side]) / seconds[side] for side in seconds}  # rows/s
    if args.plain_every > 1:
        print(f"the plain loop timed on every {args.plain_every}th row ({len(answers['plain'])} rows)")
    print(f"{'':28}{'rows':>6}{'seconds':>9}{'rows/s':>9}{'gen tokens':>12}{'tokens/s':>10}{'ratio':>8}")
    for side, title in (("plain", "model.generate, row by row"), ("tunesmith", "tunesmith batched")):
        tokens = sum(map(len, answers[side]))
        print(f"{title:28}{len(answers[side]):6}{seconds[side]:9.1f}{rate[side]:9.2f}{tokens:12,}"
              f"{tokens / seconds[side]:10.1f}{rate[side] / rate['plain']:7.2f}x")
    print(f"identical outputs: {same}/{len(answers['plain'])} rows")


if __name__ == "__main__":
    main()
