"""`training:` values checked against the installed TrainingArguments' declared types and the
ranges transformers and torch accept, before any work: a wrong type or an out-of-range value is
named with its key instead of failing deep inside the optimizer or the data loader.

Numbers written as text are read as numbers where that is plainly what was meant, with one line
saying so: YAML 1.1, which PyYAML follows, reads `1e-4` (no dot) as a string.
"""
from __future__ import annotations

import enum
import functools
import math
import types
import typing

from transformers import TrainingArguments

# Ranges transformers or torch enforce (or fail on later): key -> (low, low inclusive, high).
AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "eval_accumulation_steps")
NOT_NEGATIVE = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps", "num_train_epochs", "seed",
                "dataloader_num_workers", "save_total_limit", "label_smoothing_factor")
POSITIVE = ("adam_epsilon", "logging_steps", "save_steps", "eval_steps")
UNIT_INTERVAL = ("label_smoothing_factor", "warmup_ratio")
BETAS = ("adam_beta1", "adam_beta2")  # torch's Adam: 0 <= beta < 1


@functools.cache
def field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainingArguments)


def check_training_values(training: dict, names: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Check and, where plainly meant, convert `training` values in place. Returns (notes about
    conversions, problems), each a line naming the key."""
    notes, problems = [], []
    hints = field_types()
    for key, value in list(training.items()):
        if key not in hints:
            continue
        where = f"training.{key}"
        kinds = _kinds(hints[key])
        if value is None:
            if type(None) not in kinds:
                problems.append(f"  {where}: must be {_describe([k for k in kinds if isinstance(k, type)])}, got null "
                                "(remove the key for the default)")
            continue
        converted, problem = _convert(value, kinds)
        if problem:
            problems.append(f"  {where}: {problem}, got {value!r} ({type(value).__name__})")
            continue
        if converted is not value and isinstance(value, str):
            notes.append(f"{where}: {value!r} read as the number {converted!r}")
        training[key] = converted
        problems += [f"  {where}: {p}" for p in _range_problems(key, converted)]
    return notes, problems


def _kinds(hint) -> list:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [k for a in typing.get_args(hint) for k in _kinds(a)]
    return [hint]


def _convert(value, kinds: list) -> tuple[object, str]:
    """(the value as the field takes it, a problem or ''). Containers (list[str], dict) are left to
    the Trainer; enum-valued text must be one of the enum's values, as TrainingArguments requires."""
    names = [k for k in kinds if isinstance(k, type)]
    enums = [k for k in names if issubclass(k, enum.Enum)]
    if bool in names and isinstance(value, bool):
        return value, ""
    if (int in names or float in names) and not isinstance(value, bool):
        number = _number(value)
        if number is not None:
            if float not in names and not float(number).is_integer():
                return value, "must be a whole number"
            whole = float not in names or (isinstance(value, str) and _integer_text(value))
            return (int(number) if whole else number), ""
        if isinstance(value, float):
            return value, "must be a finite number"
    if enums and isinstance(value, str):
        allowed = [str(m.value) for e in enums for m in e]
        return (value, "") if value in allowed else (value, f"must be one of {', '.join(allowed)}")
    if str in names and isinstance(value, str) and not enums:
        return value, ""
    if dict in names or list in names or any(typing.get_origin(k) for k in kinds):
        return value, ""
    return value, f"must be {_describe(names)}"


def _number(value) -> int | float | None:
    """A finite number, from a number or from text that spells one ('1e-4', '8', '1_000')."""
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", ""))
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _integer_text(text: str) -> bool:
    return text.strip().lstrip("+-").replace("_", "").isdigit()


def _describe(names: list) -> str:
    enums = [k for k in names if issubclass(k, enum.Enum)]
    if enums:
        return "one of " + ", ".join(str(m.value) for e in enums for m in e)
    if bool in names and not {int, float} & set(names):
        return "true or false"
    if int in names and float not in names:
        return "a whole number"
    if float in names or int in names:
        return "a number"
    return "text" if str in names else " or ".join(n.__name__ for n in names if n is not type(None))


def _range_problems(key: str, value) -> list[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    if key in AT_LEAST_ONE and value < 1:
        return [f"must be at least 1, got {value}"]
    if key in POSITIVE and value <= 0:
        return [f"must be above 0, got {value}"]
    if key in BETAS and not 0 <= value < 1:
        return [f"must be at least 0 and below 1, got {value}"]
    if key in UNIT_INTERVAL and not 0 <= value <= 1:
        return [f"must be between 0 and 1, got {value}"]
    if key in NOT_NEGATIVE and value < 0:
        return [f"must be 0 or more, got {value}"]
    if key == "max_steps" and value == 0 or key == "max_steps" and value < -1:
        return [f"must be -1 (use num_train_epochs) or a number of steps above 0, got {value}"]
    return []
