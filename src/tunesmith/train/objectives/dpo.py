"""DPO (Rafailov et al. 2023), the sigmoid loss: -log sigmoid(beta * (policy log-ratio - reference
log-ratio)) over summed answer log-probs; `label_smoothing` > 0 is conservative DPO (cDPO)."""
from __future__ import annotations

from tunesmith.train.objectives.base import PairObjective, Scores, pair_metrics, sigmoid_loss


class DPO(PairObjective):
    name = "dpo"
    needs_reference = True

    def describe(self) -> str:
        smoothing = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return f"dpo (sigmoid, beta {self.beta:g}{smoothing})"

    def loss(self, s: Scores):
        chosen = s.chosen_logps - s.ref_chosen_logps
        rejected = s.rejected_logps - s.ref_rejected_logps
        losses = sigmoid_loss(chosen - rejected, self.beta, self.label_smoothing)
        return losses, pair_metrics(self.beta * chosen, self.beta * rejected, s)
