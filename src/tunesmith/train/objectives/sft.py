"""SFT: cross-entropy on the answers' tokens. Its loss runs inside the model's forward, at trained
positions only (train/loss.py, TrainedPositionsLoss), or as the model's own loss (`model.loss`);
this entry names it among the objectives so that one key chooses what training optimises."""
from __future__ import annotations


class SFT:
    name = "sft"
    needs_reference = False
    data_kind = ""

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def describe(self) -> str:
        return "sft (cross-entropy on the answers)"
