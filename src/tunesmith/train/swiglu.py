"""The Llama-family MLP's `silu(gate) * up` as one autograd step that keeps less for backward.

Autograd keeps four tensors of the MLP's width per token and layer for the backward pass: gate,
up, silu(gate) (for the product's gradient) and the product (down_proj's input). `silu(gate)`
costs one cheap elementwise pass to recompute, so this keeps gate and up only and recomputes it:
for SmolLM2 on 8 x 512 packed tokens that is 377 MB less kept per step (measured peak RSS ~300 MB
lower, same speed), the same result, and the same kernels in backward plus that one pass.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation

from tunesmith.train.loss import SELECTIVE_OK
from tunesmith.train.model import base_causal_lm


class SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return SiluMul.apply(gate, up)


def _mlp_forward(self, x):
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


def use_memory_saving_swiglu(model) -> int:
    """Route each block's MLP of a Llama-family model through `silu_mul`; returns how many."""
    lm = base_causal_lm(model)
    if getattr(lm.config, "model_type", None) not in SELECTIVE_OK:
        return 0
    mlps = [m for m in lm.modules()
            if all(hasattr(m, name) for name in ("gate_proj", "up_proj", "down_proj"))
            and isinstance(getattr(m, "act_fn", None), (SiLUActivation, torch.nn.SiLU))]
    for mlp in mlps:
        mlp.forward = types.MethodType(_mlp_forward, mlp)
    return len(mlps)
