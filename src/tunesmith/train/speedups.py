"""The one registry of speed-ups: what each replaces in a transformers model, when it applies, and
how it is switched off.

Each entry decides from the loaded model's structure whether it applies (the norm, MLP, head
or attention layout it needs), not from a list of model types, and applies itself to the model
or to the TrainingArguments. `apply_speedups` runs them once, before the Trainer is built, and
returns which applied and why each other one did not; the start line and summary.json say both.
Nothing here runs per step.

Rules kept in this one place:
- a switch in the config: `model.speedups.<name>: auto|off`, and `model.loss` for the loss;
- clashes: Liger's kernels and tunesmith's on the same modules (CLASHES), and Liger's
  cross-entropy, which would replace the loss at trained positions (turned off in Liger's config);
- a transformers release outside the range the patches are written for turns them off, said;
- a transformers internal that fails to import turns off that one speed-up with a warning.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from collections.abc import Callable

import torch
from packaging.version import Version

from tunesmith.errors import ConfigError
from tunesmith.train import attention, autocast, loss, memory, swiglu
from tunesmith.train.distributed import is_main_process
from tunesmith.train.model import base_causal_lm

# The transformers releases the patches are written for (the forward signatures, the attention
# interface and the mask functions they build on); tested with 5.23.
TRANSFORMERS_RANGE = (Version("5.0"), Version("6.0"))


@dataclass
class Setup:
    """What entries read and change besides the model."""

    args: object  # TrainingArguments
    user_training: dict  # the `training:` keys the user wrote
    applied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Speedup:
    name: str
    replaces: str  # what it replaces, in a phrase (docs and `tunesmith train` say it)
    switch: str  # the config key that turns it off
    unsupported: Callable[[object, Setup], str | None]  # why it does not apply to this model; None if it does
    apply: Callable[[object, Setup], None]
    ours: bool = True  # tunesmith's own patch of transformers internals (Liger checks its own versions)


def _loss_apply(model, setup: Setup) -> None:
    component = loss.TrainedPositionsLoss(label_smoothing=setup.args.label_smoothing_factor)
    loss.use_trained_positions_loss(model, component, checked=True)
    if "ddp_find_unused_parameters" not in setup.user_training:
        setup.args.ddp_find_unused_parameters = False  # every parameter reaches this loss: no graph search per step


def _liger_unsupported(model, setup: Setup) -> str | None:
    if not setup.args.use_liger_kernel:
        if setup.user_training.get("use_liger_kernel") is False:
            return "training.use_liger_kernel is false"
        return "needs a CUDA GPU" if not torch.cuda.is_available() else "liger-kernel is not installed"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(base_causal_lm(model).config, "model_type", None)
    return None if model_type in MODEL_TYPE_TO_APPLY_LIGER_FN else f"Liger has no kernels for model type {model_type}"


def _liger_apply(model, setup: Setup) -> None:
    # The Trainer applies Liger's kernels to the model when it is built.
    if "trained_positions_loss" in setup.applied:
        # Liger's cross-entropy would replace the model's forward, and with it the loss at trained
        # positions (which skips the untrained positions Liger still projects): keep ours.
        setup.args.liger_kernel_config = {**(setup.args.liger_kernel_config or {}),
                                          "fused_linear_cross_entropy": False, "cross_entropy": False}


def _varlen_apply(model, setup: Setup) -> None:
    attention.use_varlen_sdpa(model)


REGISTRY: tuple[Speedup, ...] = (
    Speedup("trained_positions_loss", "the model's loss on full-vocabulary logits: cross-entropy inside the forward "
            "at trained positions only, a chunk at a time (loss.py, chunked_ce.py)", "model.loss",
            lambda model, setup: loss.trained_positions_unsupported(model), _loss_apply),
    Speedup("liger", "RMSNorm, the SwiGLU MLP and RoPE by Liger's Triton kernels (the Trainer applies them)",
            "model.speedups.liger", _liger_unsupported, _liger_apply, ours=False),
    Speedup("varlen_attention", "sdpa over a whole packed row with a block mask: causal sdpa per example "
            "(attention.py; flash-attention reads the same boundaries)", "model.speedups.varlen_attention",
            lambda model, setup: attention.varlen_unsupported(model), _varlen_apply),
    Speedup("norm_casts", "each linear's own bf16 copy of a norm's fp32 output: one shared copy (autocast.py)",
            "model.speedups.norm_casts", lambda model, setup: autocast.norm_casts_unsupported(model),
            lambda model, setup: autocast.share_norm_casts(model)),
    Speedup("swiglu", "autograd's silu(gate) * up, which keeps silu(gate): one step that recomputes it (swiglu.py)",
            "model.speedups.swiglu", lambda model, setup: swiglu.swiglu_unsupported(model),
            lambda model, setup: swiglu.use_memory_saving_swiglu(model)),
    Speedup("release_memory", "glibc keeping the memory a layer freed resident: malloc_trim after each decoder "
            "layer's forward and before its backward, with gradient checkpointing on a CPU (memory.py)",
            "model.speedups.release_memory", lambda model, setup: memory.release_memory_unsupported(model, setup.args),
            lambda model, setup: memory.release_memory_between_layers(model)),
)

# (kept, dropped): both replace the same modules' forward; the first, when applied, wins.
# Not a clash: norm_casts with Liger's RMSNorm (Liger rebinds the norm's forward, the cast hook
# stays and casts its output), and Liger's cross-entropy, which _liger_apply turns off while the
# loss at trained positions runs.
CLASHES = {
    ("liger", "swiglu"): "Liger's SwiGLU kernel replaces these MLPs' forward (it recomputes silu in backward too)",
}


@dataclass
class SpeedupReport:
    applied: list[str]
    skipped: dict[str, str]  # name -> why

    def uses(self, name: str) -> bool:
        return name in self.applied

    def line(self) -> str:
        """For the start line: what runs, and why the others do not."""
        text = f"speed-ups {', '.join(self.applied) or 'none'}"
        if self.skipped:
            text += "; not applied: " + "; ".join(f"{n} ({why})" for n, why in self.skipped.items())
        return text

    def as_dict(self) -> dict:
        return {"applied": list(self.applied), "skipped": dict(self.skipped)}


def transformers_out_of_range(version: str | None = None) -> str | None:
    import transformers

    v = Version(version or transformers.__version__)
    low, high = TRANSFORMERS_RANGE
    if low <= v < high:
        return None
    return f"transformers {v} is outside the range the patches are written for (>={low},<{high})"


def _warn(text: str) -> None:
    if is_main_process():
        print(f"tunesmith: warning: {text}", file=sys.stderr)


def modes(model_cfg) -> dict[str, str]:
    """name -> auto | off | on (on: must apply, else the run is refused)."""
    chosen = {e.name: getattr(model_cfg.speedups, e.name) for e in REGISTRY if e.switch.startswith("model.speedups.")}
    chosen["trained_positions_loss"] = {"auto": "auto", "model": "off", "trained_positions": "on"}[model_cfg.loss]
    return chosen


def apply_speedups(model, model_cfg, args, user_training: dict, version: str | None = None) -> SpeedupReport:
    """Decide and apply every speed-up of the registry, in its order; once, before the Trainer."""
    setup, chosen, skipped = Setup(args, user_training), modes(model_cfg), {}
    out_of_range = transformers_out_of_range(version)
    if out_of_range:
        _warn(f"{out_of_range}: tunesmith's own speed-ups are off")
    for entry in REGISTRY:
        mode = chosen[entry.name]
        why = f"off in the config ({entry.switch})" if mode == "off" else (out_of_range if entry.ours else None)
        why = why or next((reason for (kept, dropped), reason in CLASHES.items()
                           if dropped == entry.name and kept in setup.applied), None)
        try:
            why = why or entry.unsupported(model, setup)
            if why is None:
                entry.apply(model, setup)
        except ImportError as e:  # an internal that moved: this one is off, training goes on
            why = f"an import failed ({e})"
            _warn(f"speed-up {entry.name} is off: {why}")
        if why is None:
            setup.applied.append(entry.name)
            continue
        if mode == "on":
            raise ConfigError(f"{entry.switch}: {entry.name} does not apply to this model: {why}",
                              f"set {entry.switch}: auto (or model) to use the model's own loss")
        skipped[entry.name] = why
    if "liger" not in setup.applied:
        args.use_liger_kernel = False  # nothing for the Trainer to apply
    return SpeedupReport(setup.applied, skipped)


def prepare_for_saving(model) -> None:
    """Undo what a saved model would carry: the attention name only tunesmith registers."""
    attention.use_plain_sdpa(model)
