"""Data preparation speed: `tunesmith prep` against a plain batched `datasets.map` (same tokenizer).

Both sides do the whole job: read the JSONL, tokenize, save to disk. The plain map tokenizes
prompt+response in one call and computes no labels; tunesmith also renders, masks, checks
lengths and writes the report. Prints tokens/s for each and the ratio.

Each run is its own process, as a user's would be: `datasets.map(num_proc=N)` leaves
TOKENIZERS_PARALLELISM=false in the C environment of the process that called it (it restores
os.environ, not the variable), which would slow every later tokenizer call in a shared process.

    .venv/bin/python bench/prep_speed.py [--rows 100000] [--tokenizer PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datasets import disable_progress_bars, load_dataset

from tunesmith.config.load import validate
from tunesmith.data.prepare import prepare
from tunesmith.hf import load_tokenizer

DOLLY = Path(__file__).resolve().parent / "data" / "dolly_hhrlhf" / "train.jsonl"  # shipped copy, see its PROVENANCE.md


def make_data(rows: int, folder: Path) -> Path:
    lines = DOLLY.read_text().splitlines()
    path = folder / "dolly_repeated.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(lines[i % len(lines)] + "\n")
    return path


def plain_map(data: Path, tokenizer_ref: str, out: Path, num_proc: int | None) -> tuple[float, int, float]:
    from transformers import AutoTokenizer

    from tunesmith.modelref import split_gguf

    start = time.perf_counter()
    path, extra = split_gguf(tokenizer_ref)  # plain transformers: read the tokenizer from the .gguf itself
    tok = AutoTokenizer.from_pretrained(path, **extra)
    load_seconds = time.perf_counter() - start
    ds = load_dataset("json", data_files=str(data), split="train")

    def tokenize(batch):
        return tok([p + r for p, r in zip(batch["prompt"], batch["response"])])

    ds = ds.map(tokenize, batched=True, num_proc=num_proc, remove_columns=ds.column_names, load_from_cache_file=False)
    ds.save_to_disk(str(out))
    seconds = time.perf_counter() - start
    return seconds, sum(len(x) for x in ds["input_ids"]), load_seconds


def tunesmith_prep(data: Path, tokenizer_ref: str, out: Path, num_proc: int | None) -> tuple[float, int, float]:
    cfg = validate({"base_model": tokenizer_ref, "output_dir": str(out),
                    "data": {"train": {"data_files": str(data)}, "max_length": 4096, "num_proc": num_proc}})
    start = time.perf_counter()
    tok = load_tokenizer(tokenizer_ref)  # the load prepare() would do first, timed on its own
    load_seconds = time.perf_counter() - start
    report = prepare(cfg, quiet=True, tokenizer=tok)
    return time.perf_counter() - start, report["splits"]["train"]["tokens"], load_seconds


CORES = os.cpu_count()
SIDES = {"plain1": ("datasets.map (1 process)", plain_map, None),
         "plain2": (f"datasets.map ({CORES} processes)", plain_map, CORES),
         "tunesmith": ("tunesmith prep (default)", tunesmith_prep, None)}


def run_side(side: str, data: Path, tokenizer: str, out: Path) -> dict:
    """One side in a fresh process; returns its figures."""
    cmd = [sys.executable, __file__, "--side", side, "--data", str(data), "--tokenizer", tokenizer, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--tokenizer", default=None, help="default: the demo model's (SmolLM2) tokenizer")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side, interleaved; the best counts")
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)  # internal: run one side, print JSON
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    disable_progress_bars()
    if args.side:
        _, fn, procs = SIDES[args.side]
        seconds, tokens, load = fn(Path(args.data), args.tokenizer, Path(args.out), procs)
        print(json.dumps({"seconds": seconds, "tokens": tokens, "load": load}))
        return
    if args.tokenizer is None:
        from tunesmith.demo_model import demo_model_path

        args.tokenizer = str(demo_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(args.rows, tmp)
        results = {}
        for _ in range(args.rounds):  # interleaved, so a slow spell on a shared machine hits both sides
            for side, (name, _, _) in SIDES.items():
                r = run_side(side, data, args.tokenizer, tmp / "out")
                shutil.rmtree(tmp / "out", ignore_errors=True)
                seconds, tokens, load = r["seconds"], r["tokens"], r["load"]
                if name not in results or seconds < results[name]["seconds"]:
                    results[name] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds),
                                     "load_s": round(load, 2), "tokens_per_s_no_load": round(tokens / (seconds - load))}
    base = max(r["tokens_per_s"] for n, r in results.items() if n.startswith("datasets.map"))
    base_no_load = max(r["tokens_per_s_no_load"] for n, r in results.items() if n.startswith("datasets.map"))
    print(f"\n{args.rows:,} dolly rows, tokenizer {Path(args.tokenizer).name}, {CORES} cores, best of {args.rounds}, each run its own process")
    print("each side: load tokenizer + read JSONL + tokenize + save to disk (tunesmith also masks, checks, reports);")
    print("the plain map reads the tokenizer from the .gguf; tunesmith from its converted cache (made once)\n")
    print(f"{'':28} {'seconds':>8} {'of it load':>10} {'tokens':>12} {'tokens/s':>10} {'ratio':>6} "
          f"{'tok/s w/o load':>14} {'ratio':>6}")
    for name, r in results.items():
        print(f"{name:28} {r['seconds']:8.1f} {r['load_s']:10.1f} {r['tokens']:12,} {r['tokens_per_s']:10,} "
              f"{r['tokens_per_s'] / base:5.2f}x {r['tokens_per_s_no_load']:14,} {r['tokens_per_s_no_load'] / base_no_load:5.2f}x")
    json.dump(results, sys.stderr)


if __name__ == "__main__":
    main()
