"""Training batches: data/collate.py's padded, packed or padding-free batches, plus, with
`segment_kwargs`, the example boundaries (`cu_seq_lens_q` ...) that flash-attention varlen and
tunesmith's sdpa_varlen use to attend within each example only."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tunesmith.data.collate import REAL_TOKENS  # noqa: F401  (trainer.py counts real tokens by this key)
from tunesmith.data.collate import PadCollator as PaddedBatches
from tunesmith.train.attention import segment_kwargs as boundaries


@dataclass
class PadCollator(PaddedBatches):
    segment_kwargs: bool = False  # add example boundaries for varlen attention

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        if self.segment_kwargs and "position_ids" in batch:
            batch.update(boundaries(batch["position_ids"]))
        return batch
