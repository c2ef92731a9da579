"""The inputs every preference objective reads, and the figures they share."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Scores:
    """Per-sequence answer log-probs of one batch. Pairs: index i of `chosen_*` and `rejected_*`
    is pair i. Unpaired (KTO): the `chosen_*` fields hold every row and `desirable` says which are.
    `ref_*`: the reference model's sums (None for reference-free objectives)."""

    chosen_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_logps: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    desirable: torch.Tensor | None = None  # KTO
    kl_logps: torch.Tensor | None = None  # KTO: mismatched prompt/completion sums
    ref_kl_logps: torch.Tensor | None = None

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen_logps / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected_logps / self.rejected_tokens.clamp(min=1)


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """-log sigmoid(beta * logits), with a share `label_smoothing` of the labels taken as flipped."""
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def pair_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, s: Scores) -> dict[str, torch.Tensor]:
    """The per-pair figures TRL's DPOTrainer logs, under its names."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": s.chosen_logps.detach(), "logps/rejected": s.rejected_logps.detach(),
    }


class PairObjective:
    """Shared by the objectives on pairs."""

    name = ""
    needs_reference = False
    data_kind = "pairs"

    def __init__(self, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0):
        self.beta, self.label_smoothing, self.gamma = beta, label_smoothing, gamma

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.resolved_beta(), cfg.label_smoothing, cfg.simpo_gamma)

    def describe(self) -> str:
        return f"{self.name} (beta {self.beta:g})"
