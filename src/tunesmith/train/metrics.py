"""A Trainer callback: metrics.jsonl (one line per log), trained tokens/s in the progress logs,
perplexity beside every eval loss."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.train.collate import PadCollator


class MetricsCallback(TrainerCallback):
    def __init__(self, path: Path, collator: PadCollator):
        self.path = path
        self.collator = collator
        self.started = time.perf_counter()
        self.records: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.collator.trained_tokens = 0
        self.collator.tokens = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        elapsed = time.perf_counter() - self.started
        if "eval_loss" in logs:
            logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50)), 3)
        if "loss" in logs:
            logs["trained_tokens"] = self.collator.trained_tokens
            logs["trained_tok_per_s"] = round(self.collator.trained_tokens / elapsed, 1) if elapsed else 0.0
            logs["tok_per_s"] = round(self.collator.tokens / elapsed, 1) if elapsed else 0.0
        record = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time_s": round(elapsed, 2)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
