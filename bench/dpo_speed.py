"""DPO speed and memory: tunesmith against TRL's DPOTrainer on the same pairs, same model, max
length, batch and epochs, LoRA and full fine-tuning, in one run on the same machine, each
configuration in its own process (so peak RSS is its own).

    .venv/bin/python bench/dpo_speed.py                    # SmolLM2-135M, 64 pairs, LoRA and full
    .venv/bin/python bench/dpo_speed.py --pairs 128 --methods lora

Pairs: dolly_hhrlhf prompts (bench/data, see its PROVENANCE.md); chosen is the row's own answer,
rejected the next row's answer to another prompt (both sides are real text of realistic lengths).

Each side in its fastest setting for the hardware: the native precision (bf16 where the CPU or
GPU runs it natively, else fp32; TRL's DPOConfig turns bf16 on by default, which an AVX2-only CPU
would emulate), no gradient checkpointing (DPOConfig turns it on by default; these sizes fit
without it). TRL's reference: with LoRA, the base with the adapter off (its default with a
peft_config); full fine-tuning: a second copy of the model (its default), and
`precompute_ref_log_probs` (reference log-probs in one pass before training), reported as
`trl full precomputed`. tunesmith: its defaults (reference: adapter off with LoRA, precomputed
and stored with the data for full; both sides in one padding-free row; log-probs at answer
positions only).

Reported per configuration: pairs/s over the whole job after the model files exist (tunesmith:
prep + train, the reference pass included; TRL: building the trainer, which tokenizes, + train),
pairs/s of the training loop alone, peak RSS, the last step's DPO loss and the epoch's mean. Ratios against TRL's
fastest configuration for the same method.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import DOLLY, build_models, native_bf16, peak_rss_mb, watched  # noqa: E402

LR = {"lora": 1e-4, "full": 5e-6}
BETA = 0.1
LORA = dict(r=16, alpha=32, dropout=0.0)


def make_pairs(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DOLLY.read_text().splitlines()[: n + 1]]
    return [{"prompt": rows[i]["prompt"], "chosen": rows[i]["response"], "rejected": rows[i + 1]["response"]}
            for i in range(n)]


def run_tunesmith(method: str, model_dir: str, data: str, max_length: int, batch: int, bf16: bool, work: Path) -> dict:
    from tunesmith.config.load import validate
    from tunesmith.data.prepare import prepare
    from tunesmith.train.run import train

    start = time.perf_counter()
    cfg = validate({"base_model": model_dir, "output_dir": str(work), "objective": {"name": "dpo", "beta": BETA},
                    "data": {"train": {"data_files": data}, "max_length": max_length, "overlength": "truncate"},
                    "model": {"method": method, "lora": LORA},
                    "training": {"per_device_train_batch_size": batch, "num_train_epochs": 1, "learning_rate": LR[method],
                                 "bf16": bf16, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True}})
    prepare(cfg, quiet=True)
    summary = train(cfg)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"seconds": time.perf_counter() - start, "train_seconds": summary["train_seconds"], "final_loss": losses[-1],
            "train_loss": summary["train_loss"], "bf16": summary["bf16"]}


def run_trl(method: str, model_dir: str, data: str, max_length: int, batch: int, bf16: bool, work: Path,
            precompute: bool) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    start = time.perf_counter()
    ds = load_dataset("json", data_files=data, split="train")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_config = None
    if method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM",
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    args = DPOConfig(output_dir=str(work), max_length=max_length, per_device_train_batch_size=batch, num_train_epochs=1,
                     learning_rate=LR[method], beta=BETA, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=bf16, gradient_checkpointing=False,
                     precompute_ref_log_probs=precompute, seed=42)
    ref = None if method == "lora" else AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
    result = trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": time.perf_counter() - start, "train_seconds": result.metrics["train_runtime"],
            "final_loss": losses[-1], "train_loss": result.metrics["train_loss"], "bf16": args.bf16}


def worker(name: str, model_dir: str, data: str, max_length: int, batch: int, bf16: bool, out: str) -> None:
    import torch

    torch.manual_seed(0)
    method = name.split()[1]
    work = Path(out).parent / name.replace(" ", "_")
    if name.startswith("tunesmith"):
        result = run_tunesmith(method, model_dir, data, max_length, batch, bf16, work)
    else:
        result = run_trl(method, model_dir, data, max_length, batch, bf16, work, precompute="precomputed" in name)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--models", default="smollm2", help="smollm2 (the demo model) or tiny")
    p.add_argument("--limit-min", type=float, default=20, help="a configuration still running after this is stopped")
    p.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        name, model_dir, data, max_length, batch, bf16, out = args.worker
        return worker(name, model_dir, data, int(max_length), int(batch), bf16 == "1", out)

    bf16 = native_bf16()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (model_label, model_dir), = build_models(tmp, [args.models]).items()
        data = tmp / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(args.pairs)))
        names = []
        for method in args.methods.split(","):
            names += [f"tunesmith {method}", f"trl {method}"] + ([f"trl {method} precomputed"] if method == "full" else [])
        results = {}
        for name in names:
            out = tmp / f"{name.replace(' ', '_')}.json"
            cmd = [sys.executable, __file__, "--worker", name, model_dir, str(data), str(args.max_length), str(args.batch),
                   "1" if bf16 else "0", str(out)]
            outcome, _, tail = watched(cmd, cap_mb=20_000, limit_s=args.limit_min * 60,
                                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            results[name] = json.loads(out.read_text()) if outcome == "ok" else {"outcome": outcome, "tail": tail[-800:]}
            print(f"{name}: {outcome}", file=sys.stderr)
    report(model_label, args, bf16, results)


def report(model_label: str, args, bf16: bool, results: dict) -> None:
    print(f"\nDPO on {model_label}: {args.pairs} pairs, max_length {args.max_length}, {args.batch} pairs a step, 1 epoch, "
          f"{'bf16' if bf16 else 'fp32'} (native for this hardware), beta {BETA}")
    print(f"{'configuration':26} {'pairs/s (job)':>14} {'pairs/s (loop)':>15} {'peak RSS MB':>12} {'final loss':>11} {'epoch loss':>11} "
          f"{'x TRL job':>10} {'x TRL loop':>11} {'RSS / TRL':>10}")
    for name, r in results.items():
        if "seconds" not in r:
            print(f"{name:26} {r['outcome']}: {r['tail'][-300:]!r}")
            continue
        method = name.split()[1]
        peers = [v for k, v in results.items() if k.startswith(f"trl {method}") and "seconds" in v]
        fastest = min(peers, key=lambda v: v["seconds"], default=None)
        job, loop = args.pairs / r["seconds"], args.pairs / r["train_seconds"]
        ratio = "" if fastest is None or name.startswith("trl") else \
            f"{fastest['seconds'] / r['seconds']:>10.2f} {fastest['train_seconds'] / r['train_seconds']:>11.2f} " \
            f"{r['peak_rss_mb'] / fastest['peak_rss_mb']:>10.2f}"
        print(f"{name:26} {job:>14.2f} {loop:>15.2f} {r['peak_rss_mb']:>12.0f} {r['final_loss']:>11.4f} "
              f"{r['train_loss']:>11.4f} {ratio}")
    print("final loss: the last step's (one batch); epoch loss: the mean over every step. x TRL: against TRL's fastest "
          "configuration for the same method (by whole-job time); RSS / TRL below 1 is less memory")


if __name__ == "__main__":
    main()
