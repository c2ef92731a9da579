"""ORPO (Hong et al. 2024): SFT on the chosen answer plus an odds-ratio term, reference-free.
With p the answer's mean token probability (exp of its mean log-prob), the odds are p / (1 - p);
a pair's loss = NLL(chosen) - beta * log sigmoid(log odds(chosen) - log odds(rejected)), the NLL
being the chosen answer's mean per token. Per pair, so the batch's loss is a mean over pairs like
every other objective's (N processes = 1 process); TRL takes the NLL as a token mean over the
micro-batch's chosen sequences, prompts included."""
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
        nll = -chosen  # the chosen answer's mean NLL per token
        metrics = pair_metrics(self.beta * chosen, self.beta * rejected, s)
        metrics.update({"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach()})
        return nll - self.beta * ratio, metrics
