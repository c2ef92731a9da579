"""KTO (Ethayarajh et al. 2024) on unpaired rows: each answer is desirable or not. With r the
answer's log-ratio to the reference and z the batch's KL estimate (the log-ratio of mismatched
prompt/answer pairs, averaged, at least 0), a desirable row's loss is 1 - sigmoid(beta (r - z)),
an undesirable row's 1 - sigmoid(beta (z - r)), weighted by desirable_weight / undesirable_weight."""
from __future__ import annotations

import torch

from tunesmith.train.objectives.base import Scores


class KTO:
    name = "kto"
    needs_reference = True
    data_kind = "unpaired"

    def __init__(self, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.resolved_beta(), cfg.desirable_weight, cfg.undesirable_weight)

    def describe(self) -> str:
        return f"kto (beta {self.beta:g}, weights {self.desirable_weight:g}/{self.undesirable_weight:g})"

    def kl(self, s: Scores) -> torch.Tensor:
        return (s.kl_logps - s.ref_kl_logps).mean().clamp(min=0).detach()

    def loss(self, s: Scores, kl: torch.Tensor | None = None):
        """Per-row losses and figures. `kl`: the batch's KL estimate (over every process's batch);
        default: this batch's."""
        kl = self.kl(s) if kl is None else kl
        ratio = s.chosen_logps - s.ref_chosen_logps
        good = s.desirable.bool()
        losses = torch.where(good, self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - kl))),
                             self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - ratio))))
        rewards, logps = (self.beta * ratio).detach(), s.chosen_logps.detach()
        nan = torch.full_like(rewards, float("nan"))  # a figure that does not apply to a row: left out of its mean
        return losses, {"rewards/chosen": torch.where(good, rewards, nan), "rewards/rejected": torch.where(good, nan, rewards),
                        "kl": kl.expand_as(rewards), "logps/chosen": torch.where(good, logps, nan),
                        "logps/rejected": torch.where(good, nan, logps)}
