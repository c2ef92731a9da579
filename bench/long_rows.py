"""Long rows: SmolLM2-135M trained on rows of 2k / 4k / 8k / 16k tokens, tunesmith against TRL's
SFTTrainer, full fine-tuning and LoRA, batch 1, a few optimizer steps per length.

    .venv/bin/python bench/long_rows.py                              # 2k 4k 8k 16k, cap 14 GB
    .venv/bin/python bench/long_rows.py --lengths 2048 4096 --steps 2

Each (side, method, length) runs in its own process under a watchdog that kills it when its RSS
(with its children) passes --cap-gb; it is then reported as "over the cap" and the side's longer
lengths are skipped. Prints, per length, peak RSS, the peak memory in use (what malloc handed out
and not taken back, sampled every 20 ms: RSS minus that is freed memory the allocator kept
resident, which tunesmith's `release_memory` gives back between layers; `--release-memory off` to
compare) and trained tokens/s; then the longest length that trained under the cap and, from the
growth of the memory in use between the two longest lengths, how far 24 GB would reach
(extrapolated).

Rows are real text: a dolly prompt followed by dolly responses joined until the row is longer than
the max length, then truncated to it (keep the start), so every row has exactly `length` tokens
and nearly all of them are response tokens, all trained.

Both sides: the precision this hardware runs natively (bf16 where the CPU has AVX512-BF16/AMX or
the GPU supports it, else fp32), gradient checkpointing on (the long-row setting; off it, 16k
rows keep ~30 layers of activations), batch 1 (no padding, so TRL's padding-free option changes
nothing). SmolLM2's max_position_embeddings is 8192: the model folder used here says twice the
longest length, so long rows run; RoPE (theta 100,000) extends as it is, no scaling. That changes no cost (memory and
time per token are the same whatever the positions mean), only what the model would learn there.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import DOLLY, CountingCollator, build_models, native_bf16, watched  # noqa: E402

LR = 1e-4
CONFIGS = [("tunesmith", "full"), ("trl", "full"), ("tunesmith", "lora"), ("trl", "lora")]


def long_rows(n: int, length: int) -> list[dict]:
    """`n` rows, each a dolly prompt and a response of joined dolly responses, well over `length` tokens."""
    rows = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    out = []
    for i in range(n):
        parts, chars, j = [], 0, i * 97
        while chars < 6 * length:  # SmolLM2's tokenizer: ~4 characters per token on this text
            text = rows[j % len(rows)]["response"]
            parts.append(text)
            chars += len(text)
            j += 1
        out.append({"prompt": rows[i]["prompt"], "response": "\n\n".join(parts)})
    return out


# ---- worker: one configuration, in its own process ----------------------------------------------

def worker(side: str, method: str, model_dir: str, data: str, length: int, checkpointing: bool, bf16: bool,
           out: str, release: str) -> None:
    import torch

    torch.manual_seed(0)
    work = Path(out).parent / f"{side}_{method}_{length}"
    sampler = InUseSampler()
    if side == "tunesmith":
        result = run_tunesmith(method, model_dir, data, length, checkpointing, bf16, work, release)
    else:
        result = run_trl(method, model_dir, data, length, checkpointing, bf16, work)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["peak_in_use_mb"] = sampler.stop()
    Path(out).write_text(json.dumps(result))


class InUseSampler:
    """The peak of what malloc has handed out and not taken back (glibc's mallinfo2: heap blocks in
    use plus mmapped blocks), sampled every `every` seconds: the memory the process asked for,
    against the resident memory (RSS), which also counts freed memory the allocator kept. None
    where it is not glibc. `restart()` starts a new peak from the memory in use now."""

    def __init__(self, every: float = 0.02):
        import ctypes
        import threading

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
        try:
            self.mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        except (OSError, AttributeError):
            self.mallinfo2 = None
            return
        self.mallinfo2.restype = MallInfo2
        self.every, self.peak, self.done, self.lock = every, 0, threading.Event(), threading.Lock()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def in_use(self) -> int:
        info = self.mallinfo2()
        return info.uordblks + info.hblkhd

    def sample(self):
        while not self.done.wait(self.every):
            with self.lock:  # a restart() between reading and writing the peak is not lost
                self.peak = max(self.peak, self.in_use())

    def restart(self) -> float:
        """Start a new peak from the memory in use now; returns it (MB)."""
        with self.lock:
            self.peak = self.in_use()
            return self.peak / 2**20

    def stop(self) -> float | None:
        if self.mallinfo2 is None:
            return None
        self.done.set()
        self.thread.join()
        return round(self.peak / 2**20, 1)


def run_tunesmith(method, model_dir, data, length, checkpointing, bf16, work, release="auto") -> dict:
    from tunesmith.config.load import validate
    from tunesmith.data.prepare import prepare
    from tunesmith.train.run import train

    cfg = validate({"base_model": model_dir, "output_dir": str(work),
                    "data": {"train": {"data_files": data}, "max_length": length, "overlength": "truncate"},
                    "model": {"method": method, "speedups": {"release_memory": release}},
                    "training": {"per_device_train_batch_size": 1, "num_train_epochs": 1, "learning_rate": LR,
                                 "gradient_checkpointing": checkpointing, "bf16": bf16, "logging_steps": 1000,
                                 "save_strategy": "no", "disable_tqdm": True}})
    prepare(cfg, quiet=True)
    s = train(cfg)
    return {"train_seconds": s["train_seconds"], "trained_tokens": s["trained_tokens"], "tokens": s["tokens"],
            "steps": s["steps"], "bf16": s["bf16"]}


def run_trl(method, model_dir, data, length, checkpointing, bf16, work) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=data, split="train").rename_column("response", "completion")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # tunesmith's LoRA defaults: r 16, alpha 32, dropout 0.05, every linear layer in the blocks
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                      ) if method == "lora" else None
    args = SFTConfig(output_dir=str(work), max_length=length, per_device_train_batch_size=1, num_train_epochs=1,
                     learning_rate=LR, logging_steps=1000, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available(), completion_only_loss=True, bf16=bf16,
                     gradient_checkpointing=checkpointing, seed=42)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    result = trainer.train()
    return {"train_seconds": round(result.metrics["train_runtime"], 1), "trained_tokens": counter.trained_tokens,
            "tokens": counter.tokens, "steps": trainer.state.global_step, "bf16": args.bf16}


# ---- parent: watchdog, runs, table ----------------------------------------------------------------

def longer_positions(model_dir: str, positions: int) -> None:
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config["max_position_embeddings"] = max(config["max_position_embeddings"], positions)
    path.write_text(json.dumps(config, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps (rows, batch 1) per run")
    ap.add_argument("--cap-gb", type=float, default=14.0, help="RSS cap per run (the machine is shared)")
    ap.add_argument("--limit-min", type=float, default=40.0, help="time cap per run")
    ap.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    ap.add_argument("--sides", nargs="+", default=["tunesmith", "trl"], choices=["tunesmith", "trl"])
    ap.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off for both sides")
    ap.add_argument("--precision", default="native", choices=["native", "fp32", "bf16"])
    ap.add_argument("--release-memory", default="auto", choices=["auto", "off"],
                    help="tunesmith's model.speedups.release_memory (memory given back between layers)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", nargs=9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        side, method, model_dir, data, length, ckpt, bf16, out, release = args.worker
        worker(side, method, model_dir, data, int(length), ckpt == "1", bf16 == "1", out, release)
        return

    bf16 = native_bf16() if args.precision == "native" else args.precision == "bf16"
    precision = "bf16" if bf16 else "fp32"
    ckpt = not args.no_checkpointing
    print(f"precision {precision} ({args.precision}), gradient checkpointing {'on' if ckpt else 'off'} for both, "
          f"batch 1, {args.steps} steps per run, RSS cap {args.cap_gb:g} GB", flush=True)
    results: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_models(tmp, ["smollm2"])["SmolLM2-135M"]
        longer_positions(model_dir, 2 * max(args.lengths))
        for length in args.lengths:
            (tmp / f"rows_{length}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in long_rows(args.steps, length)))
        stopped: set[tuple] = set()
        for length in args.lengths:  # lengths outermost: every side gets its short runs before anyone's long ones
            for side, method in CONFIGS:
                if side not in args.sides or method not in args.methods:
                    continue
                key = (side, method, length)
                if (side, method) in stopped:
                    results[key] = {"outcome": "skipped (shorter one over the cap)"}
                    continue
                out = tmp / f"{side}_{method}_{length}.json"
                cmd = [sys.executable, __file__, "--worker", side, method, model_dir, str(tmp / f"rows_{length}.jsonl"),
                       str(length), "1" if ckpt else "0", "1" if bf16 else "0", str(out), args.release_memory]
                outcome, seen, tail = watched(cmd, args.cap_gb * 1024, args.limit_min * 60)
                r = json.loads(out.read_text()) if outcome == "ok" else {}
                r.update(outcome=outcome, watchdog_peak_mb=round(seen))
                results[key] = r
                if outcome != "ok":
                    stopped.add((side, method))
                    if outcome.startswith("failed"):
                        print(f"{side} {method} {length} failed:\n{tail}", flush=True)
                print(line(key, r), flush=True)
    report(results, args, precision, ckpt)
    if args.json:
        Path(args.json).write_text(json.dumps({" ".join(map(str, k)): v for k, v in results.items()}, indent=1))


def line(key: tuple, r: dict) -> str:
    side, method, length = key
    if r["outcome"] != "ok":
        return f"{side:10} {method:5} {length:>6}  {r['outcome']}" + (
            f" (highest RSS seen {r['watchdog_peak_mb']:,} MB)" if "watchdog_peak_mb" in r else "")
    tps = r["trained_tokens"] / max(r["train_seconds"], 1e-9)
    in_use = f" ({r['peak_in_use_mb']:,.0f} MB in use)" if r.get("peak_in_use_mb") else ""
    return (f"{side:10} {method:5} {length:>6}  {r['peak_rss_mb']:>9,.0f} MB RSS{in_use}  {tps:8,.0f} trained tok/s  "
            f"({r['tokens'] / max(r['steps'], 1):,.0f} tokens/row, {r['steps']} steps, {r['train_seconds']:.0f}s)")


def report(results: dict, args, precision: str, ckpt: bool) -> None:
    print(f"\nSmolLM2-135M, batch 1, {args.steps} steps per length, {precision}, gradient checkpointing "
          f"{'on' if ckpt else 'off'}, tunesmith release_memory {args.release_memory}, cap {args.cap_gb:g} GB RSS per run")
    print(f"{'':16}" + "".join(f"{n:>24}" for n in args.lengths))
    print(f"{'':16}" + "".join(f"{'RSS  in use  tok/s':>24}" for _ in args.lengths))
    for side, method in CONFIGS:
        if side not in args.sides or method not in args.methods:
            continue
        cells = []
        for n in args.lengths:
            r = results.get((side, method, n), {"outcome": "-"})
            if r["outcome"] == "ok":
                in_use = f"{r['peak_in_use_mb']:,.0f}" if r.get("peak_in_use_mb") else "?"
                cells.append(f"{r['peak_rss_mb']:,.0f} {in_use:>7} {r['trained_tokens'] / r['train_seconds']:>6,.0f}")
            else:
                cells.append(f"{r['outcome'][:23]}")
        print(f"{side + ' ' + method:16}" + "".join(f"{c:>24}" for c in cells))
    print("(MB; tok/s: trained tokens per second of train_runtime)\n")
    for side, method in CONFIGS:
        ok = [(n, results[(side, method, n)]) for n in args.lengths
              if results.get((side, method, n), {}).get("outcome") == "ok"]
        if not ok:
            continue
        print(f"{side} {method}: longest under {args.cap_gb:g} GB: {ok[-1][0]:,}" + extrapolation(ok))
    print("\nreproduce: .venv/bin/python bench/long_rows.py " + shlex.join(sys.argv[1:]))


def extrapolation(ok: list[tuple[int, dict]]) -> str:
    """How far 24 GB would reach, from the two longest lengths: the slope of the memory in use
    (activations; at short lengths the peak is the optimizer step, which does not grow, so a fit
    over every length would understate it) added to the longest run's RSS. Extrapolated, not measured."""
    if len(ok) < 2 or not all(r.get("peak_in_use_mb") for _, r in ok[-2:]):
        return ""
    (n0, r0), (n1, r1) = ok[-2:]
    slope = (r1["peak_in_use_mb"] - r0["peak_in_use_mb"]) / (n1 - n0)  # MB per token
    if slope <= 0:
        return f"; memory in use did not grow from {n0:,} to {n1:,} (the peak is not the activations yet)"
    at_24 = n1 + (24 * 1024 - r1["peak_rss_mb"]) / slope
    return (f"; in use grows {slope * 1024:,.0f} KB per token from {n0:,} to {n1:,}, "
            f"so ~{at_24:,.0f} tokens would fit in 24 GB (extrapolated, not measured)")


if __name__ == "__main__":
    main()
