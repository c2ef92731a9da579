"""Prepared rows -> a padded batch: to the batch's longest row, rounded up to a multiple of 8;
packed rows; or padding-free (the whole batch as one row). Padding never carries a label.

Training and evaluation both batch prepared rows this way (eval loss, choice scoring), so it
lives on the data side; train/collate.py adds the example boundaries varlen attention takes.

Packed and padding-free batches carry `position_ids` that restart at 0 for each example and no
attention mask: transformers then isolates the examples (see data/pack.py). Padding at the end
of such a row gets positions of its own, so it forms a separate, unlabelled sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.hf import IGNORE

REAL_TOKENS = "num_real_tokens"


@dataclass
class PadCollator:
    pad_id: int
    multiple_of: int = 8
    padding_free: bool = False
    count_real_tokens: bool = False  # add REAL_TOKENS, for the trainer's token counts

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.padding_free:
            features = [concatenate(features)]
        with_positions = "position_ids" in features[0]
        longest = max(len(f["input_ids"]) for f in features)
        width = -(-longest // self.multiple_of) * self.multiple_of
        n = len(features)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            attention[i, :k] = 1
            if with_positions:
                positions[i, :k] = torch.as_tensor(f["position_ids"])
                positions[i, k:] = torch.arange(width - k)
        # How many real (non-pad) tokens the batch holds: the trainer counts it and takes it out
        # before the model sees the batch (packed rows carry no attention mask to count from).
        real = {REAL_TOKENS: attention.sum()} if self.count_real_tokens else {}
        if with_positions:
            return {"input_ids": input_ids, "labels": labels, "position_ids": positions, **real}
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention, **real}


def concatenate(features: list[dict]) -> dict:
    """Many rows -> one row; each keeps its own positions, and its first label is masked."""
    ids, labels, positions = [], [], []
    for f in features:
        ids += list(f["input_ids"])
        labels += [IGNORE] + list(f["labels"][1:])
        positions += list(f["position_ids"]) if "position_ids" in f else range(len(f["input_ids"]))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}
