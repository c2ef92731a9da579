"""The prompt settings saved with a trained model (tunesmith_prompt.json in final/ and merged/),
so eval, generate and chat render prompts as training did without the training config.

They are the DataConfig keys a Renderer reads (RENDER_KEYS). A built-in format is saved as its
markers, not only its name, so a model keeps being prompted as it was trained even if a later
tunesmith changes that built-in; `{bos}`/`{eos}` stay as written and are filled from the
tokenizer saved in the same folder, which also carries the chat template (chat_template.jinja).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tunesmith.config.schema import DataConfig
from tunesmith.data.prompts import BUILTIN_FORMATS
from tunesmith.errors import ConfigError

PROMPT_FILE = "tunesmith_prompt.json"
VERSION = 1
RENDER_KEYS = ("prompt_format", "prompt", "format", "columns", "preprocessing_fn", "assistant_turns", "train_on_prompt", "chat")


def prompt_settings(data: DataConfig) -> dict[str, Any]:
    """The rendering keys of a data config as plain JSON values, built-in formats spelled out."""
    settings = data.model_dump(mode="json", include=set(RENDER_KEYS))
    fmt = data.prompt_format
    if isinstance(fmt, str) and fmt in BUILTIN_FORMATS:
        settings["prompt_format"] = BUILTIN_FORMATS[fmt].model_dump(mode="json")
    return {k: settings[k] for k in RENDER_KEYS}


def settings_text(data: DataConfig, data_dir: str | Path | None = None) -> str:
    """The file's text: a version, then the settings. `data_dir`: the prepared data the model was
    trained on, whose prep report settles data.chat.thinking: auto (on when it had reasoning)."""
    settings = prompt_settings(data)
    if settings["chat"]["thinking"] == "auto":  # on only where reasoning was there and trained
        settings["chat"]["thinking"] = thinking_from_report(data_dir) if data.chat.reasoning == "train" else "off"
    return json.dumps({"tunesmith_prompt_version": VERSION, **settings}, indent=2, ensure_ascii=False) + "\n"


def thinking_from_report(data_dir: str | Path | None) -> str:
    """'on' when the training split had assistant turns with reasoning, else 'off' (also without a report)."""
    path = Path(data_dir) / "prep_report.json" if data_dir else None
    try:
        report = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
    except (OSError, ValueError):
        report = {}
    turns = report.get("splits", {}).get("train", {}).get("reasoning_turns", 0) if isinstance(report, dict) else 0
    return "on" if isinstance(turns, int) and turns > 0 else "off"


def read_settings(folder: str | Path) -> DataConfig | None:
    """The settings saved in a model folder as a DataConfig (its other keys at their defaults);
    None when the folder has none (a base model, or one trained before tunesmith saved them)."""
    path = Path(folder) / PROMPT_FILE
    if not path.is_file():
        return None
    fix = "train or merge again to rewrite it, or pass the training config (it wins over this file)"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})", fix) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object of prompt settings, got {type(saved).__name__}", fix)
    version = saved.get("tunesmith_prompt_version")
    if not isinstance(version, int) or version > VERSION:
        raise ConfigError(f"{path}: tunesmith_prompt_version {version!r} is not one this tunesmith reads (up to {VERSION})",
                          "use the tunesmith that trained the model, or pass the training config")
    try:
        return DataConfig.model_validate({k: saved[k] for k in RENDER_KEYS if k in saved})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: invalid prompt setting {where}: {first['msg']}", fix) from None


def differences(config: DataConfig, saved: DataConfig) -> list[str]:
    """One line per setting that differs, as dotted keys: what the config says, what was saved."""
    ours, theirs = prompt_settings(config), prompt_settings(saved)
    if ours["chat"]["thinking"] == "auto":  # settled when the model was saved: the saved value is used
        ours["chat"]["thinking"] = theirs["chat"]["thinking"]
    lines = []
    for key in RENDER_KEYS:
        a, b = ours[key], theirs[key]
        if key == "prompt_format" and _format_name(a) != _format_name(b):
            a, b = _format_name(a), _format_name(b)  # a different format: its name says enough
        for dotted, (x, y) in _flat_differences(f"data.{key}", a, b):
            lines.append(f"{dotted}: {x!r} in the config, {y!r} saved with the model")
    return lines


def _format_name(fmt: str | dict) -> str:
    return fmt if isinstance(fmt, str) else fmt.get("name", "custom")


def _flat_differences(key: str, a: Any, b: Any) -> list[tuple[str, tuple[Any, Any]]]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in _flat_differences(f"{key}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [(key, (a, b))]
