"""Each preference objective equals TRL 1.16's implementation of the same loss on a fixed batch
(fp32, 1e-5), and the answer log-probs it reads are the model's own (at answer positions only,
gradients included)."""

import pytest
import torch

from tunesmith.config.train_schema import ObjectiveConfig
from tunesmith.train.objectives import Scores, make_objective

from trl_losses import trl_cpo_loss, trl_dpo, trl_kto, trl_odds_ratio

PAIRS = 6


def close(a, b, tol=1e-5):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol), (a, b)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    rand = lambda scale: -torch.rand(PAIRS, generator=g) * scale - 1  # noqa: E731
    return Scores(chosen_logps=rand(20), chosen_tokens=torch.tensor([3., 5, 7, 2, 9, 4]),
                  rejected_logps=rand(20), rejected_tokens=torch.tensor([4., 6, 1, 8, 3, 5]),
                  ref_chosen_logps=rand(20), ref_rejected_logps=rand(20))


class Batch:
    """An objective's per-pair losses, as training uses them: their mean over the batch."""

    def __init__(self, name, **kw):
        self.component = make_objective(ObjectiveConfig(name=name, **kw))
        self.needs_reference = self.component.needs_reference

    def loss(self, scores, *args):
        losses, figures = self.component.loss(scores, *args)
        assert losses.shape == scores.chosen_logps.shape  # one loss per pair (or row)
        assert all(v.shape == losses.shape for v in figures.values())
        return losses.mean(), figures


def objective(name, **kw):
    return Batch(name, **kw)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_equals_trl_sigmoid_and_logs_the_same_figures(batch, beta):
    loss, figures = objective("dpo", beta=beta).loss(batch)
    s = batch
    want, logged = trl_dpo(s.chosen_logps, s.rejected_logps, s.ref_chosen_logps, s.ref_rejected_logps,
                           s.chosen_tokens.long(), s.rejected_tokens.long(), "sigmoid", beta)
    close(loss, want)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        close(figures[name].nanmean(), logged[name])


def test_dpo_label_smoothing_equals_trls_conservative_sigmoid(batch):
    # TRL 1.16's DPO sigmoid ignores label_smoothing; its CPO sigmoid loss fed the log-ratios is cDPO.
    s = batch
    loss, _ = objective("dpo", beta=0.2, label_smoothing=0.15).loss(s)
    per_pair, _, _ = trl_cpo_loss(s.chosen_logps - s.ref_chosen_logps, s.rejected_logps - s.ref_rejected_logps,
                                  "sigmoid", beta=0.2, label_smoothing=0.15)
    close(loss, per_pair.mean())


def test_ipo_equals_trl(batch):
    s = batch
    loss, _ = objective("ipo", beta=0.3).loss(s)
    want, _ = trl_dpo(s.chosen_logps, s.rejected_logps, s.ref_chosen_logps, s.ref_rejected_logps,
                      s.chosen_tokens.long(), s.rejected_tokens.long(), "ipo", 0.3)
    close(loss, want)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.4])
def test_simpo_equals_trl(batch, gamma):
    s = batch
    loss, figures = objective("simpo", beta=2.0, simpo_gamma=gamma).loss(s)
    per_pair, chosen_rewards, _ = trl_cpo_loss(s.chosen_mean, s.rejected_mean, "simpo", beta=2.0, gamma=gamma)
    close(loss, per_pair.mean())
    close(figures["rewards/chosen"], chosen_rewards)
    assert objective("simpo").needs_reference is False


def test_orpo_odds_ratio_equals_trl_and_its_sft_term_is_the_answers_nll():
    g = torch.Generator().manual_seed(1)
    tokens_c, tokens_r = torch.tensor([3., 5, 2, 4]), torch.tensor([2., 6, 3, 1])
    mean_c, mean_r = -torch.rand(4, generator=g) * 3, -torch.rand(4, generator=g) * 3
    s = Scores(mean_c * tokens_c, tokens_c, mean_r * tokens_r, tokens_r)
    loss, figures = objective("orpo", beta=0.25).loss(s)
    ratio_losses, _, _, _, mean_log_odds = trl_odds_ratio(mean_c, mean_r, 0.25)
    # The SFT term: each chosen answer's mean NLL per token, averaged over pairs (TRL's is a token mean over the
    # micro-batch's chosen sequences, prompts included: not per pair, so N processes would not give 1 process's update)
    nll = (-mean_c).mean()
    close(loss, nll - ratio_losses.mean())
    close(figures["log_odds_chosen"].mean(), mean_log_odds)


@pytest.mark.parametrize("kl_shift", [-5.0, 50.0])  # the second makes the KL estimate negative: clamped to 0
def test_kto_equals_trl(kl_shift):
    g = torch.Generator().manual_seed(2)
    rand = lambda: -torch.rand(6, generator=g) * 20  # noqa: E731
    logps, ref, kl, ref_kl = rand(), rand(), rand(), rand() + kl_shift
    desirable = torch.tensor([True, False, True, False, True, True])
    s = Scores(logps, torch.ones(6), ref_chosen_logps=ref, desirable=desirable, kl_logps=kl, ref_kl_logps=ref_kl)
    loss, figures = objective("kto", beta=0.1, undesirable_weight=1.33).loss(s)
    want, logged = trl_kto(logps, ref, desirable, kl, ref_kl, beta=0.1, undesirable_weight=1.33)
    close(loss, want)
    close(figures["kl"], logged["kl"])
    close(figures["rewards/chosen"].nanmean(), logged["rewards/chosen"])
    close(figures["rewards/rejected"].nanmean(), logged["rewards/rejected"])


def test_default_betas_follow_trl():
    assert [ObjectiveConfig(name=n).resolved_beta() for n in ("dpo", "ipo", "simpo", "orpo", "kto")] == [0.1, 0.1, 2.0, 0.1, 0.1]
    assert ObjectiveConfig.model_validate("dpo").name == "dpo"
