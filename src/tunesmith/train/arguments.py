"""`training:` in the YAML -> transformers.TrainingArguments, with defaults that suit the device."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.utils import is_liger_kernel_available

from tunesmith.config.schema import Config
from tunesmith.config.training_keys import check_training_keys
from tunesmith.errors import ConfigError


def default_liger(cuda: bool | None = None, installed: bool | None = None, switch: str = "auto") -> bool:
    """Liger's fused kernels (RMSNorm, SwiGLU, RoPE) on a CUDA GPU when the package is installed
    and `model.speedups.liger` is not off; the Trainer applies them to the model. Which of them
    run with tunesmith's own is settled in speedups.py (the registry), after the model is loaded."""
    if switch == "off":
        return False
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return cuda and (is_liger_kernel_available() if installed is None else installed)


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_bf16() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def _drop_offload_without_accelerator(training: dict, cuda: bool | None = None) -> None:
    """`offload: true` in the checkpointing kwargs moves saved activations from the GPU to pinned
    host memory; without a GPU they are in host memory already, and pinning fails deep inside
    the first backward. Dropped here, said once."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    for key in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        kwargs = training.get(key)
        if not cuda and isinstance(kwargs, dict) and kwargs.get("offload"):
            training[key] = {k: v for k, v in kwargs.items() if k != "offload"}
            print(f"tunesmith: training.{key}.offload ignored: no GPU, activations are already in host memory",
                  file=sys.stderr)


def training_arguments(cfg: Config, has_eval: bool) -> TrainingArguments:
    check_training_keys(cfg.training)  # config/training_keys.py
    # YAML reads a bare `no` as false: `eval_strategy: no` must still mean "no".
    user = {k: ("no" if v is False else v) if k.endswith("_strategy") else v for k, v in cfg.training.items()}
    lora = cfg.model.trains_adapter
    defaults = dict(
        per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=1,
        learning_rate=2e-4 if lora else 2e-5, warmup_steps=0, logging_steps=10,
        save_strategy="steps", save_steps=500, save_total_limit=2,
        eval_strategy="steps" if has_eval else "no", report_to="none",
        bf16=default_bf16(), use_liger_kernel=default_liger(switch=cfg.model.speedups.liger), use_cpu=not torch.cuda.is_available(),
        seed=cfg.data.seed, remove_unused_columns=False, dataloader_num_workers=0,
    )
    if has_eval:
        defaults["eval_steps"] = user.get("logging_steps", defaults["logging_steps"]) * 5
    if cfg.model.early_stopping_patience:
        if not has_eval:
            raise ConfigError("model.early_stopping_patience needs an eval set", "set data.eval or data.validation_split")
        defaults.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
        defaults["save_steps"] = user.get("eval_steps", defaults["eval_steps"])  # saves must line up with evals
    if cfg.model.speedups.liger == "off" and user.get("use_liger_kernel") is True:
        raise ConfigError("model.speedups.liger: off and training.use_liger_kernel: true ask for opposite things",
                          "drop one of the two keys")
    merged = {**defaults, **user, "output_dir": str(Path(cfg.resolved_output_dir()) / "checkpoints")}
    _drop_offload_without_accelerator(merged)
    try:
        return TrainingArguments(**merged)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"training: {e}") from None
