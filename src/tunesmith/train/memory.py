"""Give memory freed inside a step back to the operating system, between decoder layers (CPU).

On a CPU, tensors come from the C library's malloc. With gradient checkpointing, each decoder
layer's forward allocates tens of MB of short-lived tensors (q/k/v, the MLP's intermediates) and
keeps one (the next layer's input, saved for the backward pass). glibc places that survivor among
the freed blocks, the next layer's bigger blocks do not fit the holes, and the heap grows by
about a layer's worth of transients per layer: the holes stay resident. For SmolLM2-135M on one
8k-token row, the tensors alive at any moment never pass ~2.0 GB while the process's resident
memory reaches 4.2-5.0 GB (bench/long_rows.py). How much varies from run to run and by length:
tensors over glibc's mmap limit (32 MB at most) get mappings of their own, returned when freed.

`malloc_trim(0)` returns the free pages of every arena to the system (glibc madvises whole free
pages, also in the middle of the heap). Called after each layer's forward and before each
layer's backward it keeps resident memory near what the tensors use: 3.1 GB instead of 4.2-5.0 GB
in that example, for up to ~30 ms a call and the page faults of touching returned pages again
(5-7% of the step there; docs/scale.md). Only for steps of FROM_TOKENS tokens or more: below,
the gain is small. Not for GPU runs (PyTorch's caching allocator holds GPU memory), not without
gradient checkpointing (then every layer's activations live until the backward anyway), not
where the C library is not glibc (macOS, musl: no malloc_trim).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from tunesmith.config.training_keys import checkpointing_requested
from tunesmith.train.model import decoder_layers


@functools.cache
def malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory_unsupported(model, args) -> str | None:
    """Why trimming between layers does not apply to this run; None when it does."""
    if not checkpointing_requested(vars(args)):  # the same rule as for the user's training: keys
        return "gradient checkpointing is off (activations stay until the backward pass)"
    first = next(model.parameters(), None)
    if torch.cuda.is_available() or (first is not None and first.device.type != "cpu"):
        return "the model runs on a GPU (PyTorch's caching allocator holds its memory)"
    if malloc_trim() is None:
        return "the C library has no malloc_trim (not glibc)"
    if not decoder_layers(model):
        return "no decoder layers at model.layers"
    return None


# Below this many tokens in a step the gain is small and the page faults cost more (SmolLM2,
# measured: 4k tokens -180 MB for +10% step time; 8k tokens -1.1 to -1.9 GB for +5-7%).
FROM_TOKENS = 8192


def _trim(*_) -> None:
    malloc_trim()(0)


def _after_layer_forward(module, args, output):
    # Not in evaluation (short, no backward) and not in the backward pass's recompute of this
    # layer: the hook on its output below trims there already.
    if not module.training or torch._C._current_graph_task_id() >= 0:
        return None
    hidden = output[0] if isinstance(output, tuple) else output
    if not isinstance(hidden, torch.Tensor) or hidden.shape[:-1].numel() < FROM_TOKENS:
        return None
    _trim()
    if hidden.requires_grad:
        hidden.register_hook(_trim_before_backward)  # runs when this layer's backward is about to start
    return None


def _trim_before_backward(grad):
    _trim()
    return grad


def release_memory_between_layers(model) -> int:
    """Install the trims on each decoder layer; returns how many layers."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.register_forward_hook(_after_layer_forward)
    return len(layers)
