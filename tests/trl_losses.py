"""TRL 1.16's own preference losses, called on fixed per-sequence log-probs (tests/test_objectives.py
compares tunesmith's objectives with them). TRL's loss code runs as it is: its methods are called
with a stand-in `self` holding the attributes they read, and a stand-in model that returns fixed
per-token log-probs (the whole sequence value on its first answer token), so no model, dataset or
Trainer is built. These reach private methods (`_compute_loss`): pinned to trl 1.16."""
from __future__ import annotations

import types
from collections import defaultdict
from types import SimpleNamespace as NS

import torch

CPU = torch.device("cpu")
ACCELERATOR = NS(device=CPU, gather=lambda x: x, gather_for_metrics=lambda x: x)  # one process


class FixedLogps:
    """Stands in for the fused-head model TRL's DPO/KTO trainers call: fixed per-token log-probs."""

    training = False

    def __init__(self, table):
        self.table = table  # [(input_ids, per-token log-probs (rows, length - 1))]

    def __call__(self, input_ids=None, labels=None, fused_lm_head=False, **kwargs):
        for ids, logps in self.table:
            if ids.data_ptr() == input_ids.data_ptr():
                zero = torch.zeros_like(logps)
                return NS(log_probs=logps, entropy=zero, mean_logits=zero, is_top1=zero.bool(), log_sum_sq_probs=zero, aux_loss=None)
        raise KeyError("unknown input_ids")


def _answer_mask(lengths, width, prompt=2):
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, prompt:prompt + int(n)] = 1
    return mask


def _per_token(sums, mask):
    shifted = mask[:, 1:].bool()
    first = shifted.float().cumsum(1).eq(1) & shifted
    return torch.where(first, sums[:, None], torch.zeros(()))


def trl_dpo(pc, pr, rc, rr, len_c, len_r, loss_type="sigmoid", beta=0.1, label_smoothing=0.0):
    """DPOTrainer._compute_loss on pairs given as summed log-probs -> (loss, logged metrics)."""
    from trl import DPOTrainer

    pairs = rc.shape[0]
    width = 3 + int(max(torch.cat([len_c, len_r])))
    mask = _answer_mask(list(len_c) + list(len_r), width)
    ids = torch.ones(2 * pairs, width, dtype=torch.long)
    model = FixedLogps([(ids, _per_token(torch.cat([pc, pr]), mask))])
    this = NS(model=model, accelerator=ACCELERATOR, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
              f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, loss_types=[loss_type], loss_weights=[1.0],
              beta=beta, label_smoothing=label_smoothing, use_weighting=False, args=NS(discopop_tau=0.05),
              _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask,
                  ref_chosen_logps=rc, ref_rejected_logps=rr)
    loss = DPOTrainer._compute_loss(this, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in this._metrics["eval"].items()}


def trl_cpo_loss(chosen, rejected, loss_type, beta, gamma=0.0, label_smoothing=0.0):
    """CPOTrainer.cpo_loss (per-pair losses, chosen rewards, rejected rewards); loss_type simpo takes
    mean log-probs, sigmoid fed log-ratios is conservative DPO."""
    from trl.experimental.cpo import CPOTrainer

    this = NS(alpha=0.0, accelerator=ACCELERATOR, loss_type=loss_type, simpo_gamma=gamma, beta=beta,
              label_smoothing=label_smoothing)
    return CPOTrainer.cpo_loss(this, chosen, rejected)


def trl_odds_ratio(mean_c, mean_r, beta):
    """ORPOTrainer.odds_ratio_loss -> (beta * log sigmoid(log odds) per pair, ..., mean log odds)."""
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer.odds_ratio_loss(NS(beta=beta, accelerator=ACCELERATOR), mean_c, mean_r)


def trl_kto(logps, ref_logps, desirable, kl_logps, ref_kl_logps, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    """KTOTrainer._compute_loss on summed log-probs -> (loss, logged metrics)."""
    from trl import KTOTrainer

    rows, width = logps.shape[0], 5
    mask = _answer_mask([2] * rows, width)
    ids, kl_ids = torch.ones(rows, width, dtype=torch.long), torch.ones(rows, width, dtype=torch.long)
    model = FixedLogps([(ids, _per_token(logps, mask)), (kl_ids, _per_token(kl_logps, mask))])
    this = NS(model=model, accelerator=ACCELERATOR, calculate_KL=True, precompute_ref_logps=True, loss_type="kto",
              beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight, aux_loss_enabled=False,
              _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    this._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, this)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), completion_mask=mask, KL_input_ids=kl_ids,
                  KL_attention_mask=torch.ones_like(kl_ids), KL_completion_mask=mask, label=desirable,
                  ref_logps=ref_logps, ref_KL_logps=ref_kl_logps)
    loss = KTOTrainer._compute_loss(this, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in this._metrics["eval"].items()}
