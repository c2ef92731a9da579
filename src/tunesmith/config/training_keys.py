"""`training:` keys checked against the installed transformers' TrainingArguments before any work:
unknown names (with the closest valid one), keys tunesmith sets itself, reporting integrations
that are not installed, Liger's kernels without a CUDA GPU."""
from __future__ import annotations

import dataclasses
import difflib
import sys

import torch
from transformers import TrainingArguments
from transformers.utils import is_liger_kernel_available

from tunesmith.config.training_values import check_training_values
from tunesmith.errors import ConfigError

OWNED = {"output_dir": "top-level output_dir", "resume_from_checkpoint": "model.resume"}


def valid_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def checkpointing_requested(training: dict) -> bool:
    """Whether the Trainer will checkpoint activations for these `training:` keys. transformers 5
    names it `activation_checkpointing`; `gradient_checkpointing` is its deprecated alias, used only
    when the new name is unset (TrainingArguments.__post_init__ resolves them the same way)."""
    new = training.get("activation_checkpointing")
    return bool(training.get("gradient_checkpointing") if new is None else new)


def check_training_keys(training: dict) -> None:
    """Unknown keys fail before any work starts, with the closest valid name; values of the wrong
    type or out of range too (training_values.py), numbers written as text converted in place."""
    valid = valid_fields()
    notes, problems = check_training_values(training)
    for note in notes:
        print(f"tunesmith: {note}", file=sys.stderr)
    for key in training:
        if key in OWNED:
            problems.append(f"  training.{key}: set by tunesmith; use {OWNED[key]}")
        elif key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            tip = f"did you mean '{close[0]}'?" if close else "not a TrainingArguments field in this transformers version"
            problems.append(f"  training.{key}: unknown key; {tip}")
    problems += _report_to_problems(training.get("report_to"))
    problems += _liger_problems(training.get("use_liger_kernel"))
    if problems:
        raise ConfigError("invalid config\n" + "\n".join(problems))


def _report_to_problems(report_to) -> list[str]:
    """Each named integration must exist and be installed (else the Trainer fails deep inside)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    problems = []
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(f"  training.report_to: unknown integration {name!r}; one of {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        elif name not in get_available_reporting_integrations():
            problems.append(f"  training.report_to: {name} is not installed; pip install {name} (into .venv), or drop it")
    return problems


def _liger_problems(requested, cuda: bool | None = None, installed: bool | None = None) -> list[str]:
    """Liger's kernels are Triton kernels for CUDA GPUs: asking for them elsewhere fails deep inside."""
    if requested is not True:
        return []
    cuda = torch.cuda.is_available() if cuda is None else cuda
    installed = is_liger_kernel_available() if installed is None else installed
    if not cuda:
        return ["  training.use_liger_kernel: Liger's kernels need a CUDA GPU and this machine has none; drop the key"]
    if not installed:
        return ["  training.use_liger_kernel: liger-kernel is not installed; pip install liger-kernel (into .venv), or drop the key"]
    return []
