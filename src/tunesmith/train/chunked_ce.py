"""Cross-entropy through the vocabulary projection, a chunk of positions at a time.

The plain way (`F.cross_entropy(lm_head(hidden), targets)`) holds the logits, their fp32 copy,
the log-softmax and its gradient at once: four tensors of positions x vocabulary, about 1.5 GB
for 2,500 trained positions of a 49k vocabulary. Here the forward pass computes the loss and
both gradients chunk by chunk (the idea of Liger's fused linear cross-entropy, in plain torch so
it runs on a CPU), so only one chunk of logits ever exists. Same matmuls, same numerics: the
projection runs in the autocast dtype like lm_head would, softmax in fp32.

With label smoothing e the target is (1 - e) on the label and e spread evenly over the
vocabulary (the Trainer's LabelSmoother): the loss of a position is
logsumexp - (1 - e) * logit[target] - e * mean(logits), its gradient softmax - (1 - e) * onehot - e / V.
"""
from __future__ import annotations

import math

import torch

# Memory is chosen for the CPU allocator, which has no cache: a block over 32 MB is mmapped fresh
# on every malloc and page-faulted again. Allocating the logits chunk, the logit gradients and the
# weight-gradient matmul's output anew on every call made the loss 40% slower than its matmuls
# (SmolLM2, 49k vocabulary, 1,152 positions: 0.95 s, 310,000 page faults). So the working
# buffers are kept between calls (`_buffer`, freed by `release_buffers`), and the softmax runs in
# place in one fp32 buffer.
CHUNK = 256  # positions per softmax chunk: 256 x 49k fp32 logits = 50 MB (512: 3% faster, 2x the memory)
GROUP = 2048  # positions whose bf16 logit gradients are kept for one weight-gradient matmul

_buffers: dict[tuple, torch.Tensor] = {}


def _buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A kept working buffer at least `shape` large (grown when needed), viewed as `shape`.
    Only on the CPU: GPU allocators cache freed blocks themselves."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (name, dtype, device)
    size = math.prod(shape)
    buf = _buffers.get(key)
    if buf is None or buf.numel() < size:
        _buffers.pop(key, None)  # free the old one before the larger one is made
        buf = _buffers[key] = torch.empty(size, dtype=dtype, device=device)
    return buf[:size].view(shape)


def release_buffers() -> None:
    """Give the kept buffers back (after training)."""
    _buffers.clear()


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                group: int, smoothing: float = 0.0) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
        h_all, w = hidden.to(dtype), weight.to(dtype)
        want_weight_grad = ctx.needs_input_grad[1]
        n, vocab, dev = hidden.shape[0], weight.shape[0], hidden.device
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=dev)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if want_weight_grad and n == 0 else None
        total = torch.zeros((), dtype=torch.float32, device=dev)
        for first in range(0, n, group):
            last = min(first + group, n)
            # d(sum of losses)/d(logits) of the group's positions, for one weight-gradient matmul
            # (per chunk, it would be a vocab x hidden result to add up for every chunk).
            grad_logits = _buffer("grad_logits", (last - first, vocab), dtype, dev)
            for start in range(first, last, chunk):
                end = min(start + chunk, last)
                h, t = h_all[start:end], targets[start:end]
                logits = _buffer("logits", (end - start, vocab), torch.float32, dev)
                if dtype == torch.float32:
                    torch.mm(h, w.T, out=logits)
                else:  # the projection in the autocast dtype, like lm_head; the softmax in fp32
                    logits.copy_(torch.mm(h, w.T, out=_buffer("logits_low", (end - start, vocab), dtype, dev)))
                # loss = logsumexp - logit of the target; gradient = softmax - one_hot(target)
                top = logits.amax(dim=-1, keepdim=True)
                target_logit = logits.gather(1, t[:, None])
                if smoothing:
                    target_logit = (1 - smoothing) * target_logit + smoothing * logits.mean(dim=-1, keepdim=True)
                probs = logits.sub_(top).exp_()
                norm = probs.sum(dim=-1, keepdim=True)
                total += (norm.log() + top - target_logit).sum()
                grad = probs.div_(norm)
                if smoothing:
                    grad.sub_(smoothing / vocab)
                grad[torch.arange(len(t), device=dev), t] -= 1 - smoothing
                grad_chunk = grad_logits[start - first:end - first]
                grad_chunk.copy_(grad)
                grad_hidden[start:end] = grad_chunk @ w
            if want_weight_grad:
                part = torch.mm(grad_logits.T, h_all[first:last], out=_buffer("grad_weight_low", tuple(weight.shape), dtype, dev))
                # a copy even in fp32: `part` is a kept buffer that the next group overwrites
                grad_weight = part.to(torch.float32, copy=True) if grad_weight is None else grad_weight.add_(part)
        ctx.save_for_backward(grad_hidden, grad_weight if want_weight_grad else torch.empty(0))
        ctx.want_weight_grad, ctx.hidden_dtype, ctx.weight_dtype = want_weight_grad, hidden.dtype, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden.float() * grad_output).to(ctx.hidden_dtype)
        gw = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.want_weight_grad else None
        return gh, gw, None, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int = CHUNK, group: int = GROUP, label_smoothing: float = 0.0) -> torch.Tensor:
    """sum over positions of cross_entropy(hidden @ weight.T, targets, label_smoothing); hidden (N, d), weight (V, d)."""
    return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, group, float(label_smoothing))


@torch.no_grad()
def per_token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            chunk: int = CHUNK, label_smoothing: float = 0.0) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, targets, label_smoothing) per position, a chunk at a time (evaluation)."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    w = weight.to(dtype)
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        logits = (hidden[start:start + chunk].to(dtype) @ w.T).float()
        target_logit = logits.gather(1, targets[start:start + chunk, None])[:, 0]
        if label_smoothing:
            target_logit = (1 - label_smoothing) * target_logit + label_smoothing * logits.mean(dim=-1)
        out[start:start + chunk] = torch.logsumexp(logits, -1) - target_logit
    return out
