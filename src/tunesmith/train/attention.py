"""Attention over packed rows, one example at a time.

transformers isolates packed examples on sdpa by building a block-diagonal mask over the whole
row. The CPU and GPU sdpa kernels then compute every block of the row, including the blocks the
mask throws away (and, with a mask, they cannot skip the upper triangle either). `sdpa_varlen`
instead splits the row at the example boundaries the collator hands over (`cu_seq_lens_q`, the
same kwargs flash-attention's varlen kernel reads) and runs causal sdpa on each example: the
same result, without the masked-out work. Calls without those kwargs (generation, padded
batches, models that do not pass kwargs down) fall back to plain sdpa with transformers' mask,
so isolation never depends on this function being reached.

Whether a model gets it is decided by train/speedups.py from the model's own declaration
(`is_backend_compatible()`: its layers hand their keyword arguments to the attention function).
The transformers internals it builds on are imported here once; if they move, `IMPORT_ERROR`
says why and the speed-up is skipped, while the boundaries (`segment_kwargs`) still work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.train.model import base_causal_lm

try:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
except ImportError as e:  # a transformers release that moved them: this speed-up only is off
    IMPORT_ERROR: ImportError | None = e
else:
    IMPORT_ERROR = None

NAME = "sdpa_varlen"
# Implementations that split at the example boundaries: ours, and flash-attention's varlen kernels.
PER_EXAMPLE = ("sdpa", NAME, "flash_attention_2", "flash_attention_3")


def varlen_unsupported(model) -> str | None:
    """Why segment kwargs would not reach this model's attention or be used there; None if they would."""
    lm = base_causal_lm(model)
    if not type(lm).is_backend_compatible():
        return f"{type(lm).__name__} does not hand attention kwargs to the attention function"
    if lm.config._attn_implementation not in PER_EXAMPLE:
        return f"attention is {lm.config._attn_implementation}; per-example attention needs sdpa or flash-attention"
    if lm.config._attn_implementation in ("sdpa", NAME) and IMPORT_ERROR is not None:
        return f"transformers internals it needs are missing ({IMPORT_ERROR})"
    return None


def supports_varlen(model) -> bool:
    """True when segment kwargs reach this model's attention and its attention can use them."""
    return varlen_unsupported(model) is None


def use_varlen_sdpa(model) -> None:
    """Switch an sdpa model to sdpa_varlen (flash-attention reads the same kwargs natively)."""
    lm = base_causal_lm(model)
    if lm.config._attn_implementation == "sdpa":
        lm.set_attn_implementation(NAME)


def use_plain_sdpa(model) -> None:
    """Back to sdpa before saving, so the saved model loads without tunesmith."""
    lm = base_causal_lm(model)
    if lm.config._attn_implementation == NAME:
        lm.set_attn_implementation("sdpa")


def segment_kwargs(position_ids: torch.Tensor) -> dict:
    """Example boundaries of a (rows, width) batch whose positions restart at 0 for each example,
    as flash-attention varlen kwargs over the flattened batch."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def sdpa_varlen_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    cu = kwargs.get("cu_seq_lens_q")
    window = kwargs.get("sliding_window")
    # An example longer than a sliding window needs the window's mask: transformers builds it.
    too_long = window is not None and kwargs.get("max_length_q", query.shape[2]) > window
    if cu is None or query.shape[2] != key.shape[2] or too_long:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rows, heads, width, dim = query.shape
    lengths = cu.diff().tolist()
    out_dtype = torch.get_autocast_dtype(query.device.type) if torch.is_autocast_enabled(query.device.type) else value.dtype
    # (rows, heads, width, dim) -> (1, heads, rows * width, dim): examples are contiguous spans.
    q, k, v = (x.transpose(0, 1).reshape(1, x.shape[1], rows * width, dim) for x in (query, key, value))
    gqa = k.shape[1] != heads
    outs = []
    with torch.autocast(query.device.type, enabled=False):  # it would cast fp32 inputs back to bf16
        for qs, ks, vs, n in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), lengths):
            work = kernel_dtype(query.device.type, out_dtype, n)
            out = F.scaled_dot_product_attention(qs.to(work), ks.to(work), vs.to(work), is_causal=True, scale=scaling,
                                                 enable_gqa=gqa, dropout_p=dropout)
            outs.append(out)
    if len({o.dtype for o in outs}) > 1:  # short and long examples in one row: one dtype to join them
        outs = [o.to(out_dtype) for o in outs]
    out = torch.cat(outs, dim=2).view(heads, rows, width, dim)
    # (rows, width, heads, dim) like sdpa_attention_forward, in one copy that also casts
    return out.permute(1, 2, 0, 3).to(out_dtype, memory_format=torch.contiguous_format), None


FP32_ON_CPU_UP_TO = 512  # tokens: the longest example whose attention the CPU runs in fp32


def kernel_dtype(device: str, out_dtype: torch.dtype, length: int) -> torch.dtype:
    """The dtype one example's attention runs in. The output is handed on in `out_dtype` (the
    autocast dtype, as sdpa would give). On the CPU short examples run in fp32: under bf16 autocast
    the rotary embedding already hands q and k over in fp32, and the CPU flash kernel is as fast or
    faster in fp32 there (SmolLM2, dolly rows: 95 vs 122 ms fwd+bwd per layer for 24 examples).
    Longer ones run in bf16, which the kernel does faster there (bench/attention_dtype.py, SmolLM2's
    heads, fwd+bwd: bf16/fp32 time 1.22 at 256 tokens, 0.97 at 512, 0.80-0.81 from 1k to 8k)."""
    if device == "cpu" and length <= FP32_ON_CPU_UP_TO:
        return torch.float32
    return out_dtype


if IMPORT_ERROR is None:
    AttentionInterface.register(NAME, sdpa_varlen_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
