"""Packed rows against padding-free rows: one training step (forward, backward, AdamW) per batch
layout, tunesmith's speed-ups on, each layout in its own process; prints tokens, step time, page
faults and peak RSS per layout. Shows that a packed batch costs what its tokens cost.

    .venv/bin/python bench/packed_step.py MODEL_DIR STEPS LAYOUT:EXAMPLES:ROWS:BF16 ...
    e.g. MODEL_DIR 4 pf:8:1:0 packed:48:8:0 packed:48:3:0 pf:20:1:0

pf:N:1 = N dolly examples in one padding-free row; packed:N:R = the first R packed rows (512
tokens) of N examples. MODEL_DIR: a model folder (bench/train_speed.py build_models).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed as ts  # noqa: E402  (the same dolly rows as the training benchmark)


def case(model_dir: str, layout: str, n_ex: int, rows: int, bf16: bool, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from tunesmith.config.train_schema import ModelConfig
    from tunesmith.data.pack import packed_rows, plan_rows
    from tunesmith.hf import IGNORE, load_tokenizer
    from tunesmith.train.collate import PadCollator
    from tunesmith.train.speedups import apply_speedups

    torch.manual_seed(0)
    tok = load_tokenizer(model_dir)
    feats = []
    for r in ts.make_rows(n_ex):
        p = tok(r["prompt"])["input_ids"]
        full = tok(r["prompt"] + r["response"])["input_ids"][:511] + [tok.eos_token_id]
        feats.append({"input_ids": full, "labels": [IGNORE if j < len(p) else t for j, t in enumerate(full)]})
    if layout == "packed":  # prep's own plan and row builder (data/pack.py), on these examples
        members, per_row = plan_rows(np.array([len(f["input_ids"]) for f in feats], dtype=np.int32), 512)
        examples = pa.Table.from_pylist([{**feats[m], "full_text": ""} for m in members])
        packed = packed_rows(examples, list(per_row)).select(["input_ids", "labels", "position_ids"]).to_pylist()
        batch = PadCollator(pad_id=tok.pad_token_id, segment_kwargs=True)(packed[:rows])
    else:
        batch = PadCollator(pad_id=tok.pad_token_id, padding_free=True, segment_kwargs=True)(feats)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    applied = apply_speedups(model, ModelConfig(), SimpleNamespace(use_liger_kernel=False, label_smoothing_factor=0.0), {}).applied  # as a run does
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        if i == 0:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tokens = int((batch["labels"] != IGNORE).sum())
    shape = list(batch["input_ids"].shape)
    st = float(np.median(times[1:]))
    return {"layout": layout, "examples": n_ex, "speedups": applied, "shape": shape, "trained": tokens, "bf16": bf16, "step_s": round(st, 3),
            "trained_tok_s": round(tokens / st), "minflt_per_step": (f1 - f0) // max(steps - 1, 1),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


if __name__ == "__main__":
    if sys.argv[1] == "w":
        print("RESULT " + json.dumps(case(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", int(sys.argv[7]))))
        sys.exit()
    model_dir, steps = sys.argv[1], sys.argv[2]
    for spec in sys.argv[3:]:
        layout, n_ex, rows, bf16 = spec.split(":")
        out = subprocess.run([sys.executable, __file__, "w", model_dir, layout, n_ex, rows, bf16, steps], capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
        print(line[0][7:] if line else out.stderr[-1500:], flush=True)
