"""The gated MLP's `silu(gate) * up` as one autograd step that keeps less for backward.

Autograd keeps four tensors of the MLP's width per token and layer for the backward pass: gate,
up, silu(gate) (for the product's gradient) and the product (down_proj's input). `silu(gate)`
costs one cheap elementwise pass to recompute, so this keeps gate and up only and recomputes it:
for SmolLM2 on 8 x 512 packed tokens that is 377 MB less kept per step (measured peak RSS ~300 MB
lower, same speed), the same result, and the same kernels in backward plus that one pass.

It applies to MLPs of the form down(silu(gate(x)) * up(x)), found by structure: separate
gate_proj/up_proj (Llama, Mistral, Qwen, Granite) or one fused gate_up_proj split in halves (Phi-3),
with an activation that computes SiLU (checked on sample values, not by class: no transformers
internal to import).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

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


def _fused_mlp_forward(self, x):
    gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    return self.down_proj(silu_mul(gate, up))


def _computes_silu(act) -> bool:
    if not callable(act):
        return False
    sample = torch.linspace(-6, 6, 25, dtype=torch.float64)
    try:
        return torch.equal(act(sample), F.silu(sample))
    except Exception:  # an activation that cannot take a plain tensor is not SiLU
        return False


def _is_linear(m) -> bool:
    return isinstance(m, torch.nn.Module) and (hasattr(m, "weight") or hasattr(m, "base_layer"))


def _gated_forward(module):
    """The memory-saving forward for `module` if it is a SiLU-gated MLP, else None."""
    if not _is_linear(getattr(module, "down_proj", None)):
        return None
    if _is_linear(getattr(module, "gate_proj", None)) and _is_linear(getattr(module, "up_proj", None)):
        return _mlp_forward if _computes_silu(getattr(module, "act_fn", None)) else None
    if _is_linear(getattr(module, "gate_up_proj", None)):
        return _fused_mlp_forward if _computes_silu(getattr(module, "activation_fn", None)) else None
    return None


def gated_mlps(model) -> list[tuple[torch.nn.Module, object]]:
    return [(m, fwd) for m in base_causal_lm(model).modules() if (fwd := _gated_forward(m)) is not None]


def swiglu_unsupported(model) -> str | None:
    if gated_mlps(model):
        return None
    has_gate = any(hasattr(m, "gate_proj") or hasattr(m, "gate_up_proj") for m in base_causal_lm(model).modules())
    return "the MLP's activation is not SiLU" if has_gate else "no gated MLP (gate_proj/up_proj or gate_up_proj)"


def use_memory_saving_swiglu(model) -> int:
    """Route each SiLU-gated MLP through `silu_mul`; returns how many."""
    mlps = gated_mlps(model)
    for mlp, forward in mlps:
        mlp.forward = types.MethodType(forward, mlp)
    return len(mlps)
