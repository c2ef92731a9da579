"""What training optimises: one small component per objective, chosen by `objective.name`.

A preference objective reads per-sequence answer log-probs (`Scores`: sums over the answer's
tokens and their counts, computed at answer positions only by train/sequence_logps.py through
the model's forward), and returns the loss of each pair (or row) and the figures it reports, per
pair (NaN where a figure does not apply to a row); training takes the mean over the batch. It does
not decide how the log-probs are computed: the speed-up registry makes them cheap, the reference
comes from train/reference.py. SFT's cross-entropy at trained positions lives in train/loss.py
(the `sft` entry says so).

Adding one: a file here with a class holding `name`, `needs_reference`, `data_kind` and
`loss(scores) -> (per-pair losses, per-pair figures)`, an entry in OBJECTIVES, the name in ObjectiveConfig, and a
test against TRL's implementation in tests/test_objectives.py.
"""
from __future__ import annotations

from tunesmith.train.objectives.base import Scores
from tunesmith.train.objectives.dpo import DPO
from tunesmith.train.objectives.ipo import IPO
from tunesmith.train.objectives.kto import KTO
from tunesmith.train.objectives.orpo import ORPO
from tunesmith.train.objectives.sft import SFT
from tunesmith.train.objectives.simpo import SimPO

OBJECTIVES = {c.name: c for c in (SFT, DPO, IPO, SimPO, ORPO, KTO)}


def make_objective(cfg):
    """The component for an ObjectiveConfig."""
    return OBJECTIVES[cfg.name].from_config(cfg)


__all__ = ["OBJECTIVES", "Scores", "make_objective"]
