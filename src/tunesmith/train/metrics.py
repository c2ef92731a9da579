"""A Trainer callback: metrics.jsonl (one line per log, written by the main process only),
trained tokens/s summed over all processes in the progress logs, perplexity beside every eval loss."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsCallback(TrainerCallback):
    def __init__(self, path: Path, tokens, device, perplexity: bool = True):
        self.path, self.perplexity = path, perplexity  # perplexity: of a token loss (not a preference loss)
        self.tokens = tokens  # a trainer.TokenCounter
        self.device = device
        self.started = time.perf_counter()
        self.records: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.tokens.reset()
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        elapsed = time.perf_counter() - self.started
        if "eval_loss" in logs and self.perplexity:
            logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50)), 3)
        if "loss" in logs:  # every process logs the training loss at the same steps: sum the counts there
            trained, real = self.tokens.totals(self.device)
            logs["trained_tokens"] = trained
            logs["trained_tok_per_s"] = round(trained / elapsed, 1) if elapsed else 0.0
            logs["tok_per_s"] = round(real / elapsed, 1) if elapsed else 0.0
        record = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "time_s": round(elapsed, 2)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        self.records.append(record)
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
