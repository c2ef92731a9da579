"""Which prompt settings eval, generate, chat and merge render with: the config's when one is
given (checked against those saved with the model, and any difference said), else those saved
with the model (data/prompt_settings.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.data.prompt_settings import PROMPT_FILE, RENDER_KEYS, differences, read_settings
from tunesmith.errors import ConfigError, ModelError


def inference_config(cfg: Config | None, model_path: str | None, command: str) -> Config:
    """The config to run `command` with. Without a config, one made from the model folder: its
    saved prompt settings, the folder as base model, and outputs (eval/) beside the folder."""
    if cfg is not None:
        if model_path and Path(model_path, PROMPT_FILE).is_file():
            saved = read_settings(model_path)
            if cfg.data.chat.thinking == "auto":  # auto was settled when the model was saved
                cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={
                    "chat": cfg.data.chat.model_copy(update={"thinking": saved.chat.thinking})})})
            report_differences(cfg, model_path)
        return cfg
    if not model_path:
        raise ConfigError(f"tunesmith {command}: no config and no --model",
                          f"give the training config, or --model FOLDER of a trained model: "
                          f"tunesmith {command} --model outputs/NAME/final")
    folder = Path(model_path)
    if not folder.is_dir():
        raise ModelError(f"--model {model_path}: folder not found", "point at final/ or merged/ of a run")
    saved = read_settings(folder)
    if saved is None:
        raise ConfigError(f"{folder}: no {PROMPT_FILE}, so the prompt format this model was trained with is unknown",
                          f"pass the training config: tunesmith {command} CONFIG --model {model_path} "
                          "(models trained by tunesmith before it saved this file, or by other tools, need it)")
    # Messages about a saved key name the file it came from.
    names = {f"data.{k}": f"{k} in {folder / PROMPT_FILE}" for k in RENDER_KEYS}
    return Config(base_model=str(folder), output_dir=str(folder.resolve().parent), data=saved, key_names=names)


def report_differences(cfg: Config, model_path: str) -> list[str]:
    """Say on stderr where the config's prompt settings differ from the model's; the config wins."""
    saved = read_settings(model_path)
    lines = differences(cfg.data, saved) if saved is not None else []
    if lines:
        print(f"tunesmith: the config's prompt settings differ from those the model was saved with "
              f"({Path(model_path) / PROMPT_FILE}); rendering prompts with the config's:", file=sys.stderr)
        for line in lines:
            print(f"  - {line}", file=sys.stderr)
    return lines
