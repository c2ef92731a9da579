"""One bf16 copy of each norm output under autocast, instead of one per consumer.

With bf16 autocast and fp32 weights, a Llama block's RMSNorm returns fp32, and each linear that
reads it casts it to bf16 itself and keeps its own copy for the backward pass: q, k and v make
three copies of the same tensor, gate and up two. Casting the norm's output once (the same
rounding the linears would do) lets them share one copy: for SmolLM2 on 8 x 512 tokens that is
425 MB less activation memory and 120 fewer cast kernels per step. The gradients of the shared
copy are summed in bf16 instead of fp32, a rounding of the same size as the bf16 matmuls'.
"""
from __future__ import annotations

import torch

from tunesmith.train.loss import SELECTIVE_OK
from tunesmith.train.model import base_causal_lm

# Norms whose output only feeds linear layers in these architectures (not sandwich norms).
NORMS_BEFORE_LINEARS = ("input_layernorm", "post_attention_layernorm")


def _cast_to_autocast_dtype(module, args, output):
    device = output.device.type
    if torch.is_autocast_enabled(device) and output.dtype == torch.float32:
        return output.to(torch.get_autocast_dtype(device))
    return output


def share_norm_casts(model) -> int:
    """Install the cast on each block's pre-attention and pre-MLP norm; returns how many."""
    lm = base_causal_lm(model)
    if getattr(lm.config, "model_type", None) not in SELECTIVE_OK:
        return 0
    norms = [m for name, m in lm.named_modules() if name.endswith(NORMS_BEFORE_LINEARS)]
    for norm in norms:
        norm.register_forward_hook(_cast_to_autocast_dtype)
    return len(norms)
