"""Batches: pad each batch to its longest row (rounded up to a multiple of 8), never past the data."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass
class PadCollator:
    pad_id: int
    multiple_of: int = 8
    trained_tokens: int = 0  # loss-bearing tokens handed out so far (for tokens/s)
    tokens: int = 0  # non-pad tokens handed out so far

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.multiple_of) * self.multiple_of
        n = len(features)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)  # padding never carries a label
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            attention[i, :k] = 1
        self.trained_tokens += int((labels[:, 1:] != IGNORE).sum())  # position 0 is never predicted
        self.tokens += int(attention.sum())
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
