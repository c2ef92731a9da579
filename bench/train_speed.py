"""Training speed: tunesmith against TRL's SFTTrainer, same model, data, examples, max length and
batch size, one run on the same machine, each configuration in its own process (so peak RSS is
its own).

    .venv/bin/python bench/train_speed.py                 # tiny Llama (fast) + SmolLM2-135M
    .venv/bin/python bench/train_speed.py --models tiny   # just the tiny Llama
    .venv/bin/python bench/train_speed.py --precision fp32 --trl-as-shipped   # an AVX2-only CPU's view

Prints, per configuration: the precision it trained in, trained (loss-bearing) tokens/s, non-pad
tokens/s, peak RSS, the loss on a fixed eval slice after training, the ratios against TRL, and
the MFU against this machine's measured matmul peak in that precision.

Precision: `native` (default) is bf16 where the hardware runs it natively (a GPU that supports
it; a CPU with AVX512-BF16 or AMX: tunesmith's own default, `cpu_supports_bf16`), else fp32, for
both sides. Only that precision's matmul peak is measured (on an AVX2-only CPU bf16 matmuls are
emulated, minutes to measure a peak nobody runs at). `--precision fp32` shows what an AVX2-only
CPU gets on a machine that has bf16.

TRL runs in its fastest configuration for the hardware: the native precision, gradient
checkpointing off (SFTConfig turns it on by default; these sizes fit without it), padded rows
(`trl padded`) and best-fit packing, which TRL runs padding-free (`trl packed`); "TRL's
fastest" is the faster of the two. `--trl-as-shipped` adds TRL with SFTConfig's own defaults
(bf16 on whatever the hardware, gradient checkpointing on), under a time cap: on a CPU without
native bf16 it is emulated and may not finish ("did not finish in N min").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOLLY = Path(__file__).resolve().parent / "data" / "dolly_hhrlhf" / "train.jsonl"  # shipped copy, see its PROVENANCE.md
CONFIGS = ["tunesmith default", "tunesmith packed", "trl padded", "trl packed"]
# On a CUDA GPU TRL's fastest setting adds Liger's kernels to its padding-free packing.
LIGER = "trl packed liger"
AS_SHIPPED = "trl as shipped"
LR = 1e-4


def native_bf16() -> bool:
    """bf16 where the hardware runs it natively (a CUDA GPU that supports it, a CPU with
    AVX512-BF16 or AMX), else fp32: tunesmith's own default precision, the same test."""
    from tunesmith.train.arguments import default_bf16

    return default_bf16()


EVAL_ROWS = range(900, 964)  # held out: training rows never use these lines of the file


def make_rows(n: int, skip: int = 0) -> list[dict]:
    """n training rows, cycling over the file's lines outside EVAL_ROWS (more than 936 rows repeat)."""
    lines = [line for i, line in enumerate(DOLLY.read_text().splitlines()) if i not in EVAL_ROWS]
    return [json.loads(lines[(skip + i) % len(lines)]) for i in range(n)]


def held_out_rows() -> list[dict]:
    lines = DOLLY.read_text().splitlines()
    return [json.loads(lines[i]) for i in EVAL_ROWS]


# ---- worker: one configuration, in its own process ----------------------------------------------

def worker(name: str, model_dir: str, data: str, eval_data: str, max_length: int, batch: int, bf16: bool,
           out: str, method: str = "full") -> None:
    """One configuration. Under torchrun (`... x2` configurations) every process runs this with
    the per-process share of the batch; the main process reports (peak RSS: the largest process's)."""
    import torch

    torch.manual_seed(0)
    work = Path(out).parent / name.replace(" ", "_")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batch //= processes
    if name.startswith("tunesmith"):
        result = run_tunesmith(name, model_dir, data, max_length, batch, bf16, work, method)
    else:
        result, model = run_trl(name, model_dir, data, max_length, batch, bf16, work, method)
    result["peak_rss_mb"] = max(gathered(peak_rss_mb()))  # training's peak, before the eval step below
    result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if method != "full":  # an adapter (quantized base for qlora): the eval loss is not compared
        result["eval_loss"] = float("nan")
    else:
        if name.startswith("tunesmith"):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(work / "final")
        result["eval_loss"] = eval_loss(model, model_dir, eval_data, max_length)
    result["processes"] = processes
    Path(out).write_text(json.dumps(result))


def gathered(value: float) -> list[float]:
    """`value` from every process (just this one without a launcher)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, value)
    return box


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_tunesmith(name: str, model_dir: str, data: str, max_length: int, batch: int, bf16: bool, work: Path,
                  method: str = "full") -> dict:
    from tunesmith.config.load import validate
    from tunesmith.data.prepare import prepare
    from tunesmith.train import distributed
    from tunesmith.train.run import train

    cfg = validate({"base_model": model_dir, "output_dir": str(work),
                    "data": {"train": {"data_files": data}, "max_length": max_length, "overlength": "truncate",
                             "packing": name.endswith("packed")},
                    "model": {"method": method},
                    "training": {"per_device_train_batch_size": batch, "num_train_epochs": 1, "learning_rate": LR,
                                 "bf16": bf16, "logging_steps": 1000, "save_strategy": "no", "disable_tqdm": True}})
    distributed.init_process_group()
    if distributed.is_main_process():
        prepare(cfg, quiet=True)
    distributed.barrier()
    s = train(cfg)  # token counts in the summary are summed over processes
    return {"train_seconds": s["train_seconds"], "trained_tokens": s["trained_tokens"], "tokens": s["tokens"],
            "bf16": s["bf16"], "checkpointing": False}


class CountingCollator:
    """Wraps TRL's collator to count what it hands to the model, like tunesmith's collator does."""

    def __init__(self, inner):
        self.inner, self.trained_tokens, self.tokens = inner, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.trained_tokens += int((batch["labels"][:, 1:] != -100).sum())
        if "attention_mask" in batch:
            self.tokens += int(batch["attention_mask"].sum())
        else:
            self.tokens += int(batch["input_ids"].numel())  # padding-free: every token is real
        return batch


def run_trl(name: str, model_dir: str, data: str, max_length: int, batch: int, bf16: bool, work: Path,
            method: str = "full"):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=data, split="train").rename_column("response", "completion")
    tok = AutoTokenizer.from_pretrained(model_dir)
    quantized = {}
    if method == "qlora":  # the QLoRA recipe: 4-bit NF4 base, bf16 compute, LoRA on every linear layer
        from transformers import BitsAndBytesConfig

        quantized = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                               bnb_4bit_compute_dtype=torch.bfloat16,
                                                               bnb_4bit_use_double_quant=True)}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **quantized)
    peft_config = None
    if method != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    packed = "packed" in name
    # Fastest for the hardware: native precision, no activation recomputation. Packing "bfd" (the
    # default strategy) makes TRL's collator padding-free. As shipped: SFTConfig's own defaults
    # (bf16=True, gradient_checkpointing=True).
    fastest = {} if name.startswith(AS_SHIPPED) else {"bf16": bf16, "gradient_checkpointing": False}
    args = SFTConfig(output_dir=str(work), max_length=max_length, per_device_train_batch_size=batch, num_train_epochs=1,
                     learning_rate=LR, logging_steps=1000, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available(), completion_only_loss=True, packing=packed, seed=42,
                     use_liger_kernel=name == LIGER, **fastest)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    result = trainer.train()
    return ({"train_seconds": round(result.metrics["train_runtime"], 1), "trained_tokens": sum(gathered(counter.trained_tokens)),
             "tokens": sum(gathered(counter.tokens)), "bf16": args.bf16, "checkpointing": args.gradient_checkpointing},
            trainer.model)


def eval_loss(model, model_dir: str, eval_data: str, max_length: int) -> float:
    """Loss per trained token on the same held-out rows, prepared the same way for every model."""
    from tunesmith.config.load import validate
    from tunesmith.data.prepare import prepare, load_prepared
    from tunesmith.infer.evaluate import token_loss

    out = Path(eval_data).parent / f"eval_prepared_{os.getpid()}"
    cfg = validate({"base_model": model_dir, "output_dir": str(out),
                    "data": {"train": {"data_files": eval_data}, "max_length": max_length, "overlength": "truncate"}})
    prepare(cfg, quiet=True)
    model.float().eval()
    loss, _ = token_loss(model, load_prepared(str(out / "data"))["train"], model.config.pad_token_id or 0)
    return round(loss, 4)


# ---- parent: models, runs, table ----------------------------------------------------------------

def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 10) -> float:
    """Measured dense matmul TFLOP/s on this machine (all threads, or the GPU)."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 8192 if device == "cuda" else n
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    for _ in range(2):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants, MB (from /proc; 0 once it is gone)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total / 1024


def watched(cmd: list[str], cap_mb: float, limit_s: float, env: dict | None = None) -> tuple[str, float, str]:
    """Runs `cmd`; kills it above `cap_mb` RSS (with its children: the machine is shared) or after
    `limit_s`. Returns (outcome, highest RSS seen in MB, stderr tail)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env, start_new_session=True)
        start, seen, outcome = time.monotonic(), 0.0, None
        while proc.poll() is None:
            seen = max(seen, tree_rss_mb(proc.pid))
            if seen > cap_mb:
                outcome = "over the cap"
            elif time.monotonic() - start > limit_s:
                outcome = f"did not finish in {limit_s / 60:.0f} min"
            if outcome:
                os.killpg(proc.pid, 9)  # its own session: the launcher's workers too, nothing else
                proc.wait()
                break
            time.sleep(0.1)
        err.seek(0)
        tail = err.read()[-3000:]
    if outcome is None:
        outcome = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
    return outcome, seen, tail


# Random-init models of real shapes, for a GPU: Llama-3.2-1B's, and a slice of Llama-3.1-8B's
# (its widths, 4 of its 32 layers: a 4-bit 8B base would take minutes to write and read back).
SHAPES = {"llama1b": ("Llama-3.2-1B shape (16x2048)", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                                              num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)),
          "llama8b-slice": ("Llama-3.1-8B widths, 4 of 32 layers", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                                                                          num_attention_heads=32, num_key_value_heads=8,
                                                                          tie_word_embeddings=False))}


def build_models(folder: Path, which: list[str], tokenizer: str | None = None) -> dict[str, str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from tunesmith.hf import load_tokenizer

    if tokenizer:  # a saved tokenizer folder (the GPU machine cannot fetch the demo model)
        tok = AutoTokenizer.from_pretrained(tokenizer)
    else:
        from tunesmith.demo_model import demo_model_path

        gguf = demo_model_path()
        tok = load_tokenizer(str(gguf))
    models = {}
    for key, (label, shape) in SHAPES.items():
        if key in which:
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, rope_theta=500000.0,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, **shape)
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
            model.save_pretrained(folder / key)
            tok.save_pretrained(folder / key)
            models[label] = str(folder / key)
            del model
    if "tiny" in which:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          tie_word_embeddings=True)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder / "tiny")
        tok.save_pretrained(folder / "tiny")
        models["tiny Llama (4x512)"] = str(folder / "tiny")
    if "smollm2" in which:
        from tunesmith.demo_model import demo_model_path
        from tunesmith.modelref import dequantized_copy

        gguf = demo_model_path()
        raw = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        dequantized_copy(raw, torch.float32).save_pretrained(folder / "smollm2")
        tok.save_pretrained(folder / "smollm2")
        models["SmolLM2-135M"] = str(folder / "smollm2")
    return models


def params_of(model_dir: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2", *SHAPES])
    ap.add_argument("--tokenizer", help="a saved tokenizer folder (default: the demo model's, fetched once)")
    ap.add_argument("--method", default="full", choices=["full", "lora", "qlora"], help="for both sides")
    ap.add_argument("--json", help="also write the results here (bench/gpu/run.sh collects them)")
    ap.add_argument("--examples", type=int, default=2000, help="training examples for the tiny model")
    ap.add_argument("--smol-examples", type=int, default=96, help="training examples for SmolLM2 (CPU: slow)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="native", choices=["native", "fp32", "bf16"],
                    help="native: bf16 where the hardware has it, else fp32 (both sides)")
    ap.add_argument("--configs", nargs="+", default=CONFIGS, choices=[*CONFIGS, LIGER], help="a subset of the configurations")
    ap.add_argument("--trl-as-shipped", action="store_true", help="also run TRL with SFTConfig's defaults")
    ap.add_argument("--limit-min", type=float, default=20.0, help="time cap per configuration")
    ap.add_argument("--cap-gb", type=float, default=14.0, help="RSS cap per configuration (shared machines)")
    ap.add_argument("--processes", type=int, default=1,
                    help="also run tunesmith default and TRL padded on torchrun with this many processes "
                         "(same global batch, the cores shared out)")
    ap.add_argument("--worker", nargs=9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        name, model_dir, data, eval_data, max_length, batch, bf16, out, method = args.worker
        worker(name, model_dir, data, eval_data, int(max_length), int(batch), bf16 == "1", out, method)
        return

    bf16 = native_bf16() if args.precision == "native" else args.precision == "bf16"
    native = "bf16" if native_bf16() else "fp32"
    # Only peaks the hardware runs natively: fp32 always is; bf16 only where it is native.
    wanted = {"bfloat16" if bf16 else "float32"}
    if args.trl_as_shipped:
        wanted.add("bfloat16")
    peak = {d: matmul_peak(d) for d in sorted(wanted) if d == "float32" or native == "bf16"}
    print(f"native precision here: {native}; both sides train in {'bf16' if bf16 else 'fp32'} ({args.precision}); "
          "measured matmul peak: " + ", ".join(f"{d} {v:.2f} TFLOP/s" for d, v in peak.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = build_models(tmp, args.models, args.tokenizer)
        collected = {}
        eval_rows = tmp / "eval.jsonl"
        eval_rows.write_text("".join(json.dumps(r) + "\n" for r in held_out_rows()))  # never trained on
        for label, model_dir in models.items():
            n = args.smol_examples if "SmolLM2" in label else args.examples
            data = tmp / f"train_{n}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(n)))
            results = {}
            many = [f"{c} x{args.processes}" for c in ("tunesmith default", "trl padded")] if args.processes > 1 else []
            for name in args.configs + ([AS_SHIPPED] if args.trl_as_shipped else []) + many:
                out = tmp / f"{label[:4]}_{name.replace(' ', '_')}.json"
                cmd = [sys.executable, __file__, "--worker", name, model_dir, str(data), str(eval_rows),
                       str(args.max_length), str(args.batch), "1" if bf16 else "0", str(out), args.method]
                env = dict(os.environ)
                if name in many:
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(args.processes), *cmd[1:]]
                    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.processes))
                outcome, seen, tail = watched(cmd, args.cap_gb * 1024, args.limit_min * 60, env)
                if outcome != "ok":
                    print(f"{name}: {outcome}" + (f" (at {seen:,.0f} MB)" if outcome == "over the cap" else "")
                          + (f"\n{tail}" if outcome.startswith("failed") else ""), flush=True)
                    results[name] = {"outcome": outcome}
                    continue
                results[name] = json.loads(out.read_text())
            params = params_of(model_dir)  # builds the model on the meta device: once per model
            report(label, n, args, results, params, peak)
            collected[label] = {"examples": n, "params": params, "peak_tflops": peak, "results": results}
        if args.json:
            Path(args.json).write_text(json.dumps(collected, indent=2))
    print("\nreproduce: .venv/bin/python bench/train_speed.py " + shlex.join(sys.argv[1:]))


def report(label: str, n: int, args, results: dict, params: int, peak: dict) -> None:
    many = f" x{args.processes}"
    print(f"\n{label}: {params / 1e6:.1f}M params, {n:,} dolly examples, max_length {args.max_length}, batch {args.batch}")
    print(f"{'':20} {'precision':>9} {'ckpt':>5} {'trained tok/s':>14} {'non-pad tok/s':>14} {'peak RSS MB':>12} "
          f"{'peak GPU MB':>12} {'eval loss':>10} {'MFU':>7}")
    rows = {}
    for name, r in results.items():
        if "outcome" in r:
            print(f"{name:20} {r['outcome']}")
            continue
        seconds = r["train_seconds"]
        rows[name] = {"trained": r["trained_tokens"] / seconds, "tokens": r["tokens"] / seconds}
        p = peak.get("bfloat16" if r["bf16"] else "float32")
        # 6N FLOPs a token for full fine-tuning; 4N with a frozen base (no weight gradients but the adapter's)
        flops = (6 if args.method == "full" else 4) * params
        mfu = f"{flops * rows[name]['tokens'] / (p * 1e12):7.1%}" if p else f"{'-':>7}"  # none: emulated
        print(f"{name:20} {'bf16' if r['bf16'] else 'fp32':>9} {'on' if r['checkpointing'] else 'off':>5} "
              f"{rows[name]['trained']:14,.0f} {rows[name]['tokens']:14,.0f} {r['peak_rss_mb']:12,.0f} "
              f"{r.get('peak_gpu_mb') or '-':>12} {r['eval_loss']:10.4f} {mfu}  ({seconds:.1f}s)")
    trl = [t for t in ("trl padded", "trl packed", LIGER) if t in rows]
    memory = "peak_gpu_mb" if all(r.get("peak_gpu_mb") for r in results.values() if "outcome" not in r) else "peak_rss_mb"
    if trl:
        best = max(trl, key=lambda t: rows[t]["trained"])
        # Eval loss and memory against the TRL run that takes the same kind of steps (packed rows
        # take fewer, fuller steps for the same examples).
        for name, peer in (("tunesmith default", "trl padded"), ("tunesmith packed", "trl packed")):
            if name in rows and peer in rows:
                print(f"{name}: trained tok/s {rows[name]['trained'] / rows[best]['trained']:.2f}x TRL's fastest "
                      f"({best}), {rows[name]['trained'] / rows[peer]['trained']:.2f}x {peer}; "
                      + (f"eval loss {results[name]['eval_loss'] / results[peer]['eval_loss'] - 1:+.1%} vs {peer}; "
                         if args.method == "full" else "") + f"{memory} "
                      f"{results[name][memory] / results[peer][memory]:.2f}x {peer}"
                      + (f", {results[name][memory] / results[best][memory]:.2f}x {best}" if best != peer else ""))
        if AS_SHIPPED in rows and "tunesmith default" in rows:
            print(f"tunesmith default: {rows['tunesmith default']['trained'] / rows[AS_SHIPPED]['trained']:.2f}x "
                  f"TRL as shipped")
    if f"tunesmith default{many}" in rows and f"trl padded{many}" in rows:
        ours, theirs = rows[f"tunesmith default{many}"]["trained"], rows[f"trl padded{many}"]["trained"]
        print(f"{args.processes} processes: tunesmith default {ours / theirs:.2f}x TRL padded on the same launcher; "
              f"{ours / rows['tunesmith default']['trained']:.2f}x tunesmith default in one process")


if __name__ == "__main__":
    main()
