"""SimPO (Meng et al. 2024): reference-free; the reward is beta times the answer's mean token
log-prob, and the loss asks the chosen reward to beat the rejected one by a margin gamma:
-log sigmoid(beta * (mean chosen - mean rejected) - gamma)."""
from __future__ import annotations

from tunesmith.train.objectives.base import PairObjective, Scores, pair_metrics, sigmoid_loss


class SimPO(PairObjective):
    name = "simpo"

    def describe(self) -> str:
        return f"simpo (reference-free, beta {self.beta:g}, margin {self.gamma:g})"

    def loss(self, s: Scores):
        chosen, rejected = s.chosen_mean, s.rejected_mean
        losses = sigmoid_loss(chosen - rejected - self.gamma / self.beta, self.beta, self.label_smoothing)
        return losses, pair_metrics(self.beta * chosen, self.beta * rejected, s)
