"""ORPO (Hong et al. 2024): SFT on the chosen answer plus an odds-ratio term, reference-free.
With p the answer's mean token probability (exp of its mean log-prob), the odds are p / (1 - p);
loss = NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected))."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.train.objectives.base import PairObjective, Scores, pair_metrics


class ORPO(PairObjective):
    name = "orpo"

    def describe(self) -> str:
        return f"orpo (SFT + odds ratio, reference-free, beta {self.beta:g})"

    def loss(self, s: Scores):
        chosen, rejected = s.chosen_mean, s.rejected_mean
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        ratio = F.logsigmoid(log_odds)
        nll = -s.chosen_logps.sum() / s.chosen_tokens.sum().clamp(min=1)  # over the chosen tokens of the batch
        metrics = pair_metrics(self.beta * chosen, self.beta * rejected, s)
        metrics.update({"nll_loss": nll.detach().expand_as(ratio), "log_odds_ratio": ratio.detach(),
                        "log_odds_chosen": log_odds.detach()})
        return nll - self.beta * ratio.mean(), metrics
