"""Loss on trained tokens only: the decoder runs on the whole row, but the vocabulary projection
(lm_head, the largest matmul for small models with big vocabularies) and the softmax run only at
positions that carry a label, a chunk of positions at a time (chunked_ce.py), so the logits of
all trained positions never exist at once.

The loss is summed and divided by `num_items_in_batch` (trained tokens across the gradient
accumulation steps), which is what the Trainer passes to models that accept loss kwargs, so
batch 8 and 4x2 accumulation give the same update.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from tunesmith.train.chunked_ce import linear_cross_entropy_sum
from tunesmith.train.model import base_causal_lm

IGNORE = -100
# Architectures whose logits are exactly lm_head(last_hidden_state): no soft-capping or scaling.
SELECTIVE_OK = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "smollm3"}


def supports_selective_loss(model) -> bool:
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return False  # calling submodules directly would skip DDP's gradient synchronisation
    lm = base_causal_lm(model)
    return (getattr(lm.config, "model_type", None) in SELECTIVE_OK and hasattr(lm, "model") and hasattr(lm, "lm_head")
            and getattr(lm.config, "final_logit_softcapping", None) is None)


class TrainedTokenLossTrainer(Trainer):
    """A Trainer whose loss computes logits at labelled positions only (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if supports_selective_loss(self.model):
            # Our loss divides by num_items_in_batch itself, so the Trainer must not also divide by
            # the accumulation steps. Other models keep the Trainer's own detection (the fallback
            # path passes num_items_in_batch to the model only if its forward takes it).
            self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not supports_selective_loss(model):
            # No KV cache in training: with one, packed examples would see each other.
            return super().compute_loss(model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)
        lm = base_causal_lm(model)
        labels = inputs["labels"]
        # Accelerate applies mixed precision by wrapping model.forward; we call the decoder
        # directly, so enter its autocast context ourselves.
        with self.accelerator.autocast():
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}  # incl. varlen boundaries
            hidden = lm.model(**model_inputs, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            keep = targets != IGNORE
            if type(lm.lm_head) is torch.nn.Linear and lm.lm_head.bias is None:
                loss = linear_cross_entropy_sum(hidden[:, :-1][keep], lm.lm_head.weight, targets[keep])
            else:  # a wrapped head (e.g. LoRA on lm_head): its own forward, logits at trained positions
                loss = F.cross_entropy(lm.lm_head(hidden[:, :-1][keep]).float(), targets[keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        return loss / count.to(loss.device) if torch.is_tensor(count) else loss / count
