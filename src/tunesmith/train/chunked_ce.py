"""Cross-entropy through the vocabulary projection, a chunk of positions at a time.

The plain way (`F.cross_entropy(lm_head(hidden), targets)`) holds the logits, their fp32 copy,
the log-softmax and its gradient at once: four tensors of positions x vocabulary, about 1.5 GB
for 2,500 trained positions of a 49k vocabulary. Here the forward pass computes the loss and
both gradients chunk by chunk (the idea of Liger's fused linear cross-entropy, in plain torch so
it runs on a CPU), so only one chunk of logits ever exists. Same matmuls, same numerics: the
projection runs in the autocast dtype like lm_head would, softmax in fp32.
"""
from __future__ import annotations

import torch

CHUNK = 1024  # positions per chunk: 1024 x 49k fp32 logits = 200 MB


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
        h_all, w = hidden.to(dtype), weight.to(dtype)
        want_weight_grad = ctx.needs_input_grad[1]
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = h_all[start:start + chunk]
            t = targets[start:start + chunk]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - one_hot(target), computed in place
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(t), device=t.device), t] -= 1
            grad = grad.to(dtype)
            grad_hidden[start:start + chunk] = grad @ w
            if want_weight_grad:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if want_weight_grad else torch.empty(0))
        ctx.want_weight_grad, ctx.hidden_dtype, ctx.weight_dtype = want_weight_grad, hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden.float() * grad_output).to(ctx.hidden_dtype)
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.want_weight_grad else None
        return gh, gw, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int = CHUNK) -> torch.Tensor:
    """sum over positions of cross_entropy(hidden @ weight.T, targets); hidden (N, d), weight (V, d)."""
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk)
