"""The trained-positions loss, inside the model's own forward.

The decoder runs on the whole row, but the vocabulary projection (lm_head, the largest matmul
for small models with big vocabularies) and the softmax run only at positions that carry a
label, a chunk of positions at a time (chunked_ce.py), so the logits of the trained positions
never exist at once.

It lives in the model's forward, not in the Trainer's compute_loss, so that every engine wraps
it: DDP synchronises its gradients, FSDP2 and ZeRO-3 gather the weights for it, PEFT and
accelerate's autocast sit around it, exactly as for the model's own loss. The projection itself
runs inside lm_head's call (`lm_head(hidden, targets=...)`), so an engine that gathers lm_head's
weight only for lm_head's own forward (ZeRO-3, a separately sharded head) gathers it here too.

The value follows the Trainer's convention for models that take `num_items_in_batch`: the sum
over trained tokens divided by the trained tokens of the whole accumulated, global batch, so N
processes x batch B and 1 process x batch N*B give the same update.

The loss itself is a named component (`TrainedPositionsLoss`) with one signature: given lm_head,
the hidden states at trained positions and their targets, the sum over those positions; the
forward divides by the count. `model.loss` in the config chooses it (`trained_positions`), the
model's own loss on full logits (`model`), or the first where the model allows it (`auto`).
What the Trainer would otherwise do to the loss is honoured here or refused at start:
`training.label_smoothing_factor` is computed by this loss (the Trainer's LabelSmoother would pop
the labels and bypass it), and a custom `compute_loss_func` is refused (trainer.py).

It applies where the model's logits are exactly lm_head(model(...).last_hidden_state): no
soft-capping (Gemma 2/3), no scaling (Granite, Cohere). That is checked at start by running the
model's forward once on a stand-in decoder output and comparing its logits with lm_head's output.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from tunesmith.hf import IGNORE
from tunesmith.train.chunked_ce import linear_cross_entropy_sum, per_token_cross_entropy
from tunesmith.train.model import base_causal_lm
from tunesmith.train.sequence_logps import per_sequence, sequence_ids, token_logps

# Config keys that change the logits after lm_head: named in the reason (and the only check where
# the weights are not materialised, e.g. ZeRO-3 at load time).
LOGIT_CHANGING_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


@dataclass
class TrainedTokenOutput(ModelOutput):
    """What the forward returns when labels are given: the loss, no logits. In eval mode also the
    loss sum and trained-token count of each row, so the eval loss is per trained token over the
    whole set however it is batched or spread over processes."""

    loss: torch.Tensor | None = None
    row_losses: torch.Tensor | None = None  # (rows, 2): loss sum, trained tokens


@dataclass
class SequenceLogpsOutput(ModelOutput):
    """What the forward returns with `score_sequences=True` (the preference objectives): per sequence
    of the batch, the sum of log p over its trained tokens, and their count."""

    logps: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainedPositionsLoss:
    """Cross-entropy of lm_head(hidden) against the targets, with optional label smoothing (the
    Trainer's LabelSmoother's definition), computed a chunk of positions at a time."""

    label_smoothing: float = 0.0
    name = "trained_positions"

    def total(self, head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over the positions (training: with gradients)."""
        if getattr(head.forward, "__func__", None) is _head_forward:
            return head(hidden, targets=targets, reduction="sum", label_smoothing=self.label_smoothing)
        # A wrapped head (e.g. LoRA on lm_head): its own forward, logits at trained positions only.
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum", label_smoothing=self.label_smoothing)

    def per_token(self, head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of each position (evaluation, no gradients)."""
        if getattr(head.forward, "__func__", None) is _head_forward:
            return head(hidden, targets=targets, reduction="none", label_smoothing=self.label_smoothing)
        with torch.no_grad():
            return F.cross_entropy(head(hidden).float(), targets, reduction="none", label_smoothing=self.label_smoothing)


def trained_positions_unsupported(model) -> str | None:
    """Why the loss at trained positions would not give this model's loss; None when it does."""
    lm = base_causal_lm(model)
    if not isinstance(getattr(lm, "model", None), torch.nn.Module) or not isinstance(getattr(lm, "lm_head", None), torch.nn.Module):
        return f"{type(lm).__name__} is not laid out as a decoder at .model and a head at .lm_head"
    params = list(lm.parameters())
    if any(p.device.type == "meta" or p.numel() == 0 for p in params):  # not materialised (e.g. ZeRO-3): keys only
        keys = logit_changing_keys(lm)
        return f"the logits are changed after lm_head ({', '.join(keys)})" if keys else None
    return _probe_logits(lm)


def logit_changing_keys(lm) -> list[str]:
    """The config keys set to something that changes the logits after lm_head."""
    return [k for k in LOGIT_CHANGING_KEYS if getattr(lm.config, k, None) not in (None, 1, 1.0)]


def _probe_logits(lm) -> str | None:
    """Run the *ForCausalLM forward on a stand-in decoder output (the decoder itself is skipped, so
    this costs one lm_head on two positions whatever the model's size): the logits must be
    lm_head's output on that hidden state, unchanged."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    head = lm.lm_head
    width = getattr(head, "in_features", None) or lm.config.hidden_size
    generator = torch.Generator().manual_seed(0)  # the run's random state is not touched
    hidden = torch.randn(1, 2, width, generator=generator).to(head.weight.device, head.weight.dtype)
    seen = {}
    hook = head.register_forward_hook(lambda m, args, out: seen.__setitem__("head", (args[0], out)))
    own_forward = lm.model.__dict__.get("forward")  # an instance-level forward (e.g. accelerate's hook) to restore
    lm.model.forward = lambda *args, **kwargs: BaseModelOutputWithPast(last_hidden_state=hidden)
    try:
        with torch.no_grad():
            logits = lm(input_ids=torch.zeros(1, 2, dtype=torch.long, device=head.weight.device), use_cache=False).logits
    except Exception as e:  # a model this check cannot run: keep its own loss, and say why
        return f"the check run of the model's forward failed ({type(e).__name__}: {e})"
    finally:
        hook.remove()
        if own_forward is None:
            del lm.model.forward
        else:
            lm.model.forward = own_forward
    if "head" not in seen:
        return "the forward does not call lm_head"
    head_in, head_out = seen["head"]
    if not torch.equal(head_in, hidden):
        return "lm_head does not read the decoder's last hidden state unchanged"
    if not torch.equal(logits, head_out.to(logits.dtype)):  # an upcast alone changes nothing the loss computes
        named = ", ".join(logit_changing_keys(lm)) or "soft-capping or scaling"
        return f"the logits are changed after lm_head ({named})"
    return None


def supports_trained_positions_loss(model) -> bool:
    return trained_positions_unsupported(model) is None


def uses_trained_positions_loss(model) -> bool:
    return getattr(base_causal_lm(model), "_tunesmith_loss", None) is not None


def use_trained_positions_loss(model, loss: TrainedPositionsLoss | None = None, checked: bool = False) -> bool:
    """Route the loss of `model` (a *ForCausalLM, possibly inside PEFT) through the trained
    positions only; returns whether it applies. Without labels the model runs as before.
    `checked`: the caller has already found it applies (the check runs the model once)."""
    lm = base_causal_lm(model)
    if not checked and not supports_trained_positions_loss(model):
        return False
    if not uses_trained_positions_loss(model):
        lm._tunesmith_original_forward = lm.forward
        lm.forward = types.MethodType(_causal_lm_forward, lm)
        if _plain_head(lm.lm_head):
            lm.lm_head.forward = types.MethodType(_head_forward, lm.lm_head)
    lm._tunesmith_loss = loss or TrainedPositionsLoss()
    return True


def _plain_head(head) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def _causal_lm_forward(self, input_ids=None, labels=None, num_items_in_batch=None, score_sequences=False, **kwargs):
    if labels is None:
        return self._tunesmith_original_forward(input_ids=input_ids, **kwargs)
    for key in ("use_cache", "logits_to_keep", "skip_logits", "return_dict"):
        kwargs.pop(key, None)
    # No KV cache in training: with one, packed examples would see each other.
    hidden = self.model(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    h, t = hidden[:, :-1][keep], targets[keep]
    if score_sequences:  # the preference objectives: log p of each answer, through lm_head's call
        seq = sequence_ids(labels, kwargs.get("position_ids"))
        if getattr(self.lm_head.forward, "__func__", None) is _head_forward:
            logps = self.lm_head(h, targets=t, reduction="logp")
        else:  # a wrapped head (e.g. LoRA on lm_head): its own forward, at trained positions only
            logps = torch.log_softmax(self.lm_head(h).float(), dim=-1).gather(1, t[:, None])[:, 0]
        sums, tokens = per_sequence(logps, seq[:, 1:][keep], int(seq.max()) + 1)
        return SequenceLogpsOutput(logps=sums, tokens=tokens)
    loss = self._tunesmith_loss
    if self.training:
        loss_sum = loss.total(self.lm_head, h, t)
        count = keep.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return TrainedTokenOutput(loss=loss_sum / (count.to(loss_sum.device) if torch.is_tensor(count) else count))
    per_token = loss.per_token(self.lm_head, h, t)
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=per_token.device).index_add_(0, rows, per_token)
    counts = keep.sum(dim=1).to(torch.float32)
    return TrainedTokenOutput(loss=sums.sum() / counts.sum().clamp(min=1), row_losses=torch.stack([sums, counts], dim=1))


def _head_forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "sum",
                  label_smoothing: float = 0.0):
    """lm_head's forward: plain logits, or with `targets` the cross-entropy at those positions
    without the logits of all of them at once."""
    if targets is None:
        return F.linear(hidden, self.weight)
    weight = self.weight
    if hasattr(weight, "full_tensor"):  # a DTensor reached outside its module's unsharding hook
        weight = weight.full_tensor()
    if reduction == "logp":
        return token_logps(hidden, weight, targets)
    if reduction == "sum":
        return linear_cross_entropy_sum(hidden, weight, targets, label_smoothing=label_smoothing)
    return per_token_cross_entropy(hidden, weight, targets, label_smoothing=label_smoothing)
