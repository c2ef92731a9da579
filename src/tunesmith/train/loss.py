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
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from tunesmith.hf import IGNORE
from tunesmith.train.chunked_ce import CHUNK, linear_cross_entropy_sum
from tunesmith.train.model import base_causal_lm

# Architectures whose logits are exactly lm_head(last_hidden_state): no soft-capping or scaling.
SELECTIVE_OK = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}


@dataclass
class TrainedTokenOutput(ModelOutput):
    """What the forward returns when labels are given: the loss, no logits. In eval mode also the
    loss sum and trained-token count of each row, so the eval loss is per trained token over the
    whole set however it is batched or spread over processes."""

    loss: torch.Tensor | None = None
    row_losses: torch.Tensor | None = None  # (rows, 2): loss sum, trained tokens


def supports_trained_positions_loss(model) -> bool:
    lm = base_causal_lm(model)
    return (getattr(lm.config, "model_type", None) in SELECTIVE_OK and hasattr(lm, "model") and hasattr(lm, "lm_head")
            and getattr(lm.config, "final_logit_softcapping", None) is None)


def uses_trained_positions_loss(model) -> bool:
    return getattr(base_causal_lm(model), "_tunesmith_trained_loss", False)


def use_trained_positions_loss(model) -> bool:
    """Route the loss of `model` (a *ForCausalLM, possibly inside PEFT) through the trained
    positions only; returns whether it applies. Without labels the model runs as before."""
    lm = base_causal_lm(model)
    if not supports_trained_positions_loss(model):
        return False
    if not uses_trained_positions_loss(model):
        lm._tunesmith_original_forward = lm.forward
        lm.forward = types.MethodType(_causal_lm_forward, lm)
        if _plain_head(lm.lm_head):
            lm.lm_head.forward = types.MethodType(_head_forward, lm.lm_head)
        lm._tunesmith_trained_loss = True
    return True


def _plain_head(head) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def _causal_lm_forward(self, input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
    if labels is None:
        return self._tunesmith_original_forward(input_ids=input_ids, **kwargs)
    for key in ("use_cache", "logits_to_keep", "skip_logits", "return_dict"):
        kwargs.pop(key, None)
    # No KV cache in training: with one, packed examples would see each other.
    hidden = self.model(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    h, t = hidden[:, :-1][keep], targets[keep]
    if self.training:
        loss_sum = _head_loss(self.lm_head, h, t, "sum")
        count = keep.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return TrainedTokenOutput(loss=loss_sum / (count.to(loss_sum.device) if torch.is_tensor(count) else count))
    per_token = _head_loss(self.lm_head, h, t, "none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(keep.shape[0], dtype=torch.float32, device=per_token.device).index_add_(0, rows, per_token)
    counts = keep.sum(dim=1).to(torch.float32)
    return TrainedTokenOutput(loss=sums.sum() / counts.sum().clamp(min=1), row_losses=torch.stack([sums, counts], dim=1))


def _head_loss(head, hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    if getattr(head.forward, "__func__", None) is _head_forward:
        return head(hidden, targets=targets, reduction=reduction)
    # A wrapped head (e.g. LoRA on lm_head): its own forward, logits at trained positions only.
    return F.cross_entropy(head(hidden).float(), targets, reduction=reduction)


def _head_forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "sum"):
    """lm_head's forward: plain logits, or with `targets` the cross-entropy at those positions
    without the logits of all of them at once."""
    if targets is None:
        return F.linear(hidden, self.weight)
    weight = self.weight
    if hasattr(weight, "full_tensor"):  # a DTensor reached outside its module's unsharding hook
        weight = weight.full_tensor()
    if reduction == "sum":
        return linear_cross_entropy_sum(hidden, weight, targets)
    return per_token_cross_entropy(hidden, weight, targets)


@torch.no_grad()
def per_token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            chunk: int = CHUNK) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets) per position, a chunk at a time (evaluation)."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    w = weight.to(dtype)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logits = (hidden[start:start + chunk].to(dtype) @ w.T).float()
        out[start:start + chunk] = torch.logsumexp(logits, -1) - logits.gather(1, targets[start:start + chunk, None])[:, 0]
    return out
