"""llm-foundry's units and formulas -> Hugging Face Trainer numbers (pure functions, no I/O).

Each rule follows the semantics of Composer/llm-foundry, not their names:
  - durations: `1ep`, `100ba`, `800sp`, `0.1dur` (an int means epochs);
  - the global batch is split over the process count, then into microbatches (gradient accumulation);
  - DecoupledAdamW multiplies weights by (1 - wd * lr_t / lr_0) each step, torch's AdamW by
    (1 - lr_t * wd'), so wd' = wd / lr_0;
  - Composer's warmup goes 0 -> 1 over t_warmup, then the schedule runs from t_warmup to the end,
    ending at `alpha_f` of the peak rate: the same curves as transformers' cosine_with_min_lr and
    polynomial (power 1) schedules.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from tunesmith.errors import ConfigError

UNITS = {"ep": "epochs", "ba": "batches", "sp": "samples", "tok": "tokens", "dur": "fraction of the run"}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ep|ba|sp|tok|dur)\s*$")


@dataclass(frozen=True)
class Duration:
    value: float
    unit: str  # ep, ba, sp, tok, dur

    def __str__(self) -> str:
        shown = int(self.value) if self.value == int(self.value) else self.value
        return f"{shown}{self.unit}"


def parse_duration(value: Any, key: str) -> Duration:
    """`1ep` / `100ba` / `800sp` / `1000tok` / `0.1dur`; a bare int means epochs (as in Composer)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a duration", "write e.g. 1ep, 100ba, 800sp or 0.1dur")
    if isinstance(value, (int, float)):
        return Duration(float(value), "ep")
    match = _DURATION.match(str(value).lower())
    if not match:
        raise ConfigError(f"{key}: {value!r} is not a duration", "write e.g. 1ep, 100ba, 800sp or 0.1dur")
    return Duration(float(match.group(1)), match.group(2))


def world_size() -> int:
    """The process count for the global batch arithmetic: WORLD_SIZE as torchrun/accelerate set it."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={raw!r} in the environment is not a number") from None
    return max(n, 1)


@dataclass(frozen=True)
class Batch:
    per_device: int
    accumulation: int
    note: str


def batch_plan(global_batch: Any, microbatch: Any, processes: int) -> Batch:
    """global_train_batch_size and device_train_microbatch_size -> per-device batch and accumulation."""
    if not isinstance(global_batch, int) or isinstance(global_batch, bool) or global_batch < 1:
        raise ConfigError(f"global_train_batch_size: {global_batch!r} must be a positive integer")
    if global_batch % processes:
        raise ConfigError(f"global_train_batch_size: {global_batch} is not divisible by the {processes} processes "
                          "(WORLD_SIZE)", "choose a multiple of the process count, as llm-foundry requires")
    device = global_batch // processes
    where = f"global batch {global_batch} over {processes} process{'es' if processes > 1 else ''} (WORLD_SIZE)"
    if microbatch in (None, "auto"):
        return Batch(device, 1, f"{where} = {device} per device; device_train_microbatch_size "
                                f"{microbatch or 'auto'}: tunesmith does not search for a microbatch size, it runs the "
                                f"whole {device} at once (set a number if memory runs out)")
    if isinstance(microbatch, bool) or not isinstance(microbatch, (int, float)) or microbatch <= 0:
        raise ConfigError(f"device_train_microbatch_size: {microbatch!r} must be a positive number or auto")
    micro = min(int(microbatch), device)
    # Composer splits a device batch into ceil(device / micro) microbatches of unequal size; the
    # Trainer needs equal ones, so take the largest divisor of the device batch that is <= micro:
    # the same samples per optimizer step, at most the memory the user allowed.
    fitting = max(d for d in range(1, micro + 1) if device % d == 0)
    note = f"{where} = {device} per device, microbatch {fitting} x {device // fitting} accumulation steps"
    if fitting != microbatch:
        note += f" (device_train_microbatch_size {microbatch} -> {fitting} so that microbatches are equal)"
    return Batch(fitting, device // fitting, note)


def duration_to_trainer(duration: Duration, global_batch: int, key: str = "max_duration") -> tuple[dict, str]:
    """max_duration -> num_train_epochs or max_steps."""
    if duration.unit == "ep":
        if duration.value != int(duration.value):
            raise ConfigError(f"{key}: {duration} is a fraction of an epoch", "use batches (e.g. 50ba) or whole epochs")
        return {"num_train_epochs": int(duration.value)}, f"{key} {duration} -> num_train_epochs {int(duration.value)}"
    if duration.unit == "ba":
        return {"max_steps": int(duration.value)}, f"{key} {duration} -> max_steps {int(duration.value)}"
    if duration.unit == "sp":
        steps = math.ceil(duration.value / global_batch)
        return {"max_steps": steps}, (f"{key} {duration} -> max_steps {steps} "
                                      f"({int(duration.value)} samples / global batch {global_batch}, rounded up)")
    raise ConfigError(f"{key}: {duration} is in {UNITS[duration.unit]}, which the Trainer cannot stop on",
                      "use epochs (ep), batches (ba) or samples (sp)")


def interval_to_trainer(value: Any, key: str, prefix: str) -> tuple[dict, str]:
    """eval_interval / save_interval / console_log_interval -> `<prefix>_strategy` (+ `<prefix>_steps`)."""
    d = parse_duration(value, key)
    if d.unit == "ba":
        return {f"{prefix}_strategy": "steps", f"{prefix}_steps": int(d.value)}, f"{key} {d} -> {prefix}_steps {int(d.value)}"
    if d.unit == "ep" and d.value == 1:
        return {f"{prefix}_strategy": "epoch"}, f"{key} {d} -> {prefix}_strategy epoch"
    raise ConfigError(f"{key}: {value!r} cannot be expressed for the Trainer", "use batches (e.g. 100ba) or 1ep")


def decoupled_weight_decay(weight_decay: float, lr: float) -> tuple[float, str]:
    """DecoupledAdamW's decay is not scaled by the learning rate; torch's AdamW's is."""
    if not weight_decay:
        return 0.0, "weight_decay 0 -> 0"
    if lr <= 0:
        raise ConfigError("optimizer.lr: must be positive to convert decoupled weight decay")
    converted = weight_decay / lr
    return converted, (f"decoupled weight_decay {weight_decay:g} -> torch AdamW weight_decay {converted:g} "
                       f"(= {weight_decay:g} / lr {lr:g}: the same per-step shrink of each weight)")


def warmup_steps(t_warmup: Any, max_duration: Duration, global_batch: int) -> tuple[float, str]:
    """t_warmup in batches, samples, a fraction of the run, or epochs when the run is counted in epochs."""
    d = parse_duration(t_warmup, "scheduler.t_warmup")
    if d.unit == "ba":
        return int(d.value), f"t_warmup {d} -> warmup_steps {int(d.value)}"
    if d.unit == "sp":
        steps = math.ceil(d.value / global_batch)
        return steps, f"t_warmup {d} -> warmup_steps {steps} ({int(d.value)} samples / global batch {global_batch}, rounded up)"
    if d.unit == "dur":
        if not 0 <= d.value < 1:
            raise ConfigError(f"scheduler.t_warmup: {d} must be below 1dur")
        return d.value, f"t_warmup {d} -> warmup_steps {d.value:g} (a fraction of the total steps, rounded up)"
    if d.unit == "ep" and max_duration.unit == "ep" and d.value < max_duration.value:
        ratio = d.value / max_duration.value
        return ratio, f"t_warmup {d} of {max_duration} -> warmup_steps {ratio:g} (a fraction of the total steps)"
    raise ConfigError(f"scheduler.t_warmup: {t_warmup!r} cannot be converted to steps here",
                      "give it in batches (e.g. 100ba) or as a fraction of the run (e.g. 0.1dur)")


SCHEDULER_KEYS = {"cosine_with_warmup": {"t_warmup", "alpha_f", "t_max", "scale_warmup"},
                  "linear_decay_with_warmup": {"t_warmup", "alpha_i", "alpha_f", "t_max", "scale_warmup"},
                  "constant_with_warmup": {"t_warmup", "alpha", "t_max", "scale_warmup"}}


def schedule(cfg: dict, lr: float, max_duration: Duration, global_batch: int) -> tuple[dict, list[str]]:
    """A foundry scheduler section -> lr_scheduler_type, lr_scheduler_kwargs, warmup_steps (and lr)."""
    name = cfg.get("name")
    if name not in SCHEDULER_KEYS:
        raise ConfigError(f"scheduler.name: {name!r} has no Trainer equivalent in tunesmith",
                          f"use one of {', '.join(sorted(SCHEDULER_KEYS))}")
    unknown = set(cfg) - SCHEDULER_KEYS[name] - {"name"}
    if unknown:
        raise ConfigError(f"scheduler: {', '.join(sorted(unknown))} not accepted by {name}")
    if str(cfg.get("t_max", "1dur")) != "1dur":
        raise ConfigError(f"scheduler.t_max: {cfg['t_max']!r}: only the whole run (1dur) is supported")
    if "t_warmup" not in cfg:
        raise ConfigError("scheduler.t_warmup: required key is missing", "e.g. t_warmup: 100ba or 0.05dur")
    warmup, warm_note = warmup_steps(cfg["t_warmup"], max_duration, global_batch)
    out: dict[str, Any] = {"warmup_steps": warmup}
    notes = [warm_note]
    if name == "cosine_with_warmup":
        alpha_f = float(cfg.get("alpha_f", 0.0))
        out.update(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": alpha_f})
        notes.append(f"scheduler cosine_with_warmup (alpha_f {alpha_f:g}) -> lr_scheduler_type cosine_with_min_lr, "
                     f"min_lr_rate {alpha_f:g}: cosine from lr {lr:g} down to {lr * alpha_f:g} after warmup")
    elif name == "linear_decay_with_warmup":
        alpha_i, alpha_f = float(cfg.get("alpha_i", 1.0)), float(cfg.get("alpha_f", 0.0))
        if alpha_i != 1.0:
            raise ConfigError(f"scheduler.alpha_i: {alpha_i:g}: the Trainer's linear decay starts at the peak rate (1.0)",
                              "set optimizer.lr to lr * alpha_i and drop alpha_i")
        if alpha_f >= 1.0:
            raise ConfigError(f"scheduler.alpha_f: {alpha_f:g}: a linear decay must end below the peak", "use constant_with_warmup")
        out.update(lr_scheduler_type="polynomial", lr_scheduler_kwargs={"lr_end": lr * alpha_f, "power": 1.0})
        notes.append(f"scheduler linear_decay_with_warmup (alpha_f {alpha_f:g}) -> lr_scheduler_type polynomial, power 1, "
                     f"lr_end {lr * alpha_f:g}")
    else:
        alpha = float(cfg.get("alpha", 1.0))
        out["lr_scheduler_type"] = "constant_with_warmup"
        if alpha != 1.0:
            out["learning_rate"] = lr * alpha
        notes.append("scheduler constant_with_warmup -> constant_with_warmup"
                     + (f" at lr {lr:g} x alpha {alpha:g} = {lr * alpha:g}" if alpha != 1.0 else ""))
    if cfg.get("scale_warmup"):
        notes.append("scheduler.scale_warmup ignored: it only matters with a scale schedule ratio, which tunesmith does not use")
    return out, notes


def section(cfg: dict, key: str, required: bool = False) -> dict:
    """A top-level mapping of the YAML (model, optimizer, scheduler...), checked to be one."""
    value = cfg.get(key)
    if value is None and required:
        raise ConfigError(f"{key}: required key is missing")
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value or {}
