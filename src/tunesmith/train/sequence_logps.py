"""Log-probabilities of answers, per sequence, without the full-vocabulary logits of a batch.

The preference objectives compare whole answers: each needs, for every sequence in a batch, the
sum of log p(token) over its answer tokens (and how many there are). Only trained positions are
projected through lm_head, a chunk of positions at a time; the backward pass recomputes each
chunk's logits instead of keeping them (one more matmul than keeping them, a chunk of logits in
memory instead of positions x vocabulary).

Sequences are told apart as the collators lay them out: in a padding-free or packed row, a new
sequence starts where `position_ids` restarts at 0; in padded rows, each row is one sequence.
"""
from __future__ import annotations

import torch

CHUNK = 256  # positions per chunk: 256 x 49k fp32 logits = 50 MB


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype


class ChunkedTokenLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T)[target] per position, a chunk at a time; the projection in the
    autocast dtype (as lm_head would run), the softmax in fp32."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        h_all, w = hidden.to(dtype), weight.to(dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        norms = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            logits = (h_all[start:start + chunk] @ w.T).float()
            norms[start:start + chunk] = torch.logsumexp(logits, dim=-1)
            out[start:start + chunk] = logits.gather(1, targets[start:start + chunk, None])[:, 0] - norms[start:start + chunk]
        ctx.save_for_backward(hidden, weight, targets, norms)
        ctx.chunk, ctx.dtype = chunk, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets, norms = ctx.saved_tensors
        dtype, chunk = ctx.dtype, ctx.chunk
        h_all, w = hidden.to(dtype), weight.to(dtype)
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h, t, g = h_all[start:end], targets[start:end], grad_out[start:end].float()
            # d logp[t] / d logits = onehot(t) - softmax
            grad_logits = (h @ w.T).float().sub_(norms[start:end, None]).exp_().neg_()
            grad_logits[torch.arange(end - start, device=h.device), t] += 1
            grad_logits.mul_(g[:, None])
            grad_logits = grad_logits.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ w
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
        return (grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
                grad_weight.to(weight.dtype) if grad_weight is not None else None, None, None)


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """log p(target) of each position; hidden (N, d), weight (V, d), targets (N,)."""
    return ChunkedTokenLogps.apply(hidden, weight, targets, chunk)


def sequence_ids(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """The sequence each position of a (rows, length) batch belongs to, numbered from 0 in order."""
    if position_ids is None:
        rows, length = labels.shape
        return torch.arange(rows, device=labels.device)[:, None].expand(rows, length)
    starts = (position_ids == 0).flatten()
    starts[0] = True
    return (starts.cumsum(0) - 1).view(labels.shape)


def per_sequence(values: torch.Tensor, seq: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of values, number of values) per sequence id, for ids 0..count-1."""
    sums = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, seq, values)
    tokens = torch.zeros(count, dtype=torch.float32, device=values.device).index_add_(
        0, seq, torch.ones_like(values, dtype=torch.float32))
    return sums, tokens


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None,
                      ignore: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums from a model's own full logits (models whose logits are not lm_head's output,
    e.g. soft-capped): (logps, tokens) per sequence."""
    seq = sequence_ids(labels, position_ids)
    targets, keep = labels[:, 1:], labels[:, 1:] != ignore
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp[keep].gather(1, targets[keep][:, None])[:, 0]
    return per_sequence(picked, seq[:, 1:][keep], int(seq.max()) + 1)
