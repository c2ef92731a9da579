"""IPO (Azar et al. 2023): (log-ratio difference - 1 / (2 beta))^2, with each answer's log-prob
averaged over its tokens (as TRL computes it), so the target margin does not grow with length."""
from __future__ import annotations

from tunesmith.train.objectives.base import PairObjective, Scores, pair_metrics


class IPO(PairObjective):
    name = "ipo"
    needs_reference = True

    def loss(self, s: Scores):
        chosen = (s.chosen_logps - s.ref_chosen_logps) / s.chosen_tokens.clamp(min=1)
        rejected = (s.rejected_logps - s.ref_rejected_logps) / s.rejected_tokens.clamp(min=1)
        losses = (chosen - rejected - 1 / (2 * self.beta)) ** 2
        return losses, pair_metrics(self.beta * chosen, self.beta * rejected, s)
